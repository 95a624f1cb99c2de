"""ConvexAdam 0.2.0 (MIND features, all defaults of ``convex_adam_pt``) on CPU.

ConvexAdam returns a displacement ``(I, J, K, 3)`` in **voxel units of the fixed grid, channel order
(i, j, k)** of the nibabel arrays it was given; its own ``apply_convex`` warps with
``moving(index + disp)`` (``scipy.ndimage.map_coordinates``). We warp the labels the same way with
order 0 (nearest) and convert the displacement to LPS mm through the fixed affine (both images share
the fixed grid: the pair is pre-aligned and resampled onto it).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

args = C.parse_args(__doc__)
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from convexAdam.convex_adam_MIND import convex_adam_pt  # noqa: E402
from scipy.ndimage import map_coordinates  # noqa: E402

try:
    from importlib.metadata import version as _v
    VERSION = _v("convexadam")
except Exception:  # pragma: no cover
    VERSION = "unknown"
if args is None:
    print("convexadam", VERSION, "torch", torch.__version__)
    sys.exit(0)

torch.set_num_threads(C.THREADS)
fixed_nib = nib.load(args.fixed)
moving_nib = nib.load(args.moving)
if fixed_nib.shape != moving_nib.shape or not np.allclose(fixed_nib.affine, moving_nib.affine, atol=1e-4):
    raise SystemExit("ConvexAdam runner expects moving resampled onto the fixed grid (pre-aligned pair)")
fixed = torch.from_numpy(np.asarray(fixed_nib.get_fdata(), dtype=np.float32))
moving = torch.from_numpy(np.asarray(moving_nib.get_fdata(), dtype=np.float32))
moving_seg = np.rint(np.asarray(nib.load(args.moving_seg).get_fdata())).astype(np.int32)

with C.Timer() as t:
    disp_vox = convex_adam_pt(img_fixed=fixed, img_moving=moving, device=torch.device("cpu"))

disp_vox = np.asarray(disp_vox, dtype=np.float64)  # (I, J, K, 3) voxel units, (i, j, k)
grid = np.meshgrid(*(np.arange(n) for n in disp_vox.shape[:3]), indexing="ij")
coords = np.stack([g + disp_vox[..., a] for a, g in enumerate(grid)])
warped = map_coordinates(moving_seg, coords, order=0, mode="constant", cval=0)
C.save_labels(warped, fixed_nib, Path(args.outdir, "warped_seg.nii.gz"))
C.save_displacement_lps(C.voxel_to_lps_mm(disp_vox, fixed_nib.affine), fixed_nib,
                        Path(args.outdir, "displacement.nii.gz"))
C.write_runner_json(args.outdir, "convexadam", VERSION, t.seconds, features="MIND",
                    params="convex_adam_pt defaults (mind_r=1, mind_d=2, lambda_weight=1.25, grid_sp=6, "
                           "disp_hw=4, selected_niter=80, grid_sp_adam=2, ic=True)",
                    device="cpu", dtype="float32 (float16 is GPU-only)")
