"""FireANTs 1.5.0 greedy deformable registration with local CC, on CPU (no fused CUDA ops).

Settings are FireANTs' documented brain-MRI example (tutorial 1, ``GreedyRegistration``): scales
4/2/1, iterations 200/100/25, ``cc`` with kernel 5, compositive warp, ``smooth_grad_sigma=1``
(``smooth_warp_sigma`` default 0.5), Adam with lr 0.5; no affine stage (the pair is pre-aligned), so
the initial affine is the identity.

FireANTs' ``get_warped_coordinates`` gives, for every fixed voxel, the sampling location in the moving
image in grid_sample's normalised coordinates (x indexes ITK's i axis; arrays are SimpleITK's
(k, j, i)). ``moving.torch2phy`` maps those to ITK physical (LPS) millimetres; subtracting the fixed
voxel centres' LPS positions gives our displacement. Labels are warped by sampling the moving labels
at the same coordinates with nearest-neighbour grid_sample (align_corners=True, FireANTs' convention).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

args = C.parse_args(__doc__)
import logging  # noqa: E402
import os  # noqa: E402

os.environ.setdefault("USE_FFO", "False")
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fireants.io.image import BatchedImages, Image  # noqa: E402
from fireants.registration.greedy import GreedyRegistration  # noqa: E402

try:
    from importlib.metadata import version as _v
    VERSION = _v("fireants")
except Exception:  # pragma: no cover
    VERSION = "unknown"
if args is None:
    print("fireants", VERSION, "torch", torch.__version__, "SimpleITK", sitk.Version_VersionString())
    sys.exit(0)
logging.getLogger("fireants").setLevel(logging.WARNING)

torch.set_num_threads(C.THREADS)
SETTINGS = dict(scales=[4, 2, 1], iterations=[200, 100, 25], loss_type="cc", cc_kernel_size=5,
                deformation_type="compositive", smooth_grad_sigma=1.0, optimizer="adam",
                optimizer_lr=0.5)

fixed_nib = nib.load(args.fixed)
fixed_img = Image.load_file(args.fixed, device="cpu")
moving_img = Image.load_file(args.moving, device="cpu")
fixed_b, moving_b = BatchedImages([fixed_img]), BatchedImages([moving_img])
moving_seg_itk = sitk.ReadImage(args.moving_seg)
moving_seg = torch.from_numpy(sitk.GetArrayFromImage(moving_seg_itk).astype(np.float32))[None, None]

with C.Timer() as t:
    reg = GreedyRegistration(fixed_images=fixed_b, moving_images=moving_b, progress_bar=False, **SETTINGS)
    reg.optimize()

with torch.no_grad():
    coords = reg.get_warped_coordinates(fixed_b, moving_b)  # (1, K, J, I, 3) normalised, (x, y, z)
    warped = F.grid_sample(moving_seg, coords.to(moving_seg.dtype), mode="nearest",
                           padding_mode="zeros", align_corners=True)[0, 0]
    t2p_mov = moving_b.get_torch2phy()[0].double()       # normalised -> LPS mm (moving)
    t2p_fix = fixed_b.get_torch2phy()[0].double()        # normalised -> LPS mm (fixed)
    c = coords[0].double()
    moved_lps = c @ t2p_mov[:3, :3].T + t2p_mov[:3, 3]
    shape_kji = c.shape[:3]
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape_kji]
    gk, gj, gi = torch.meshgrid(*axes, indexing="ij")
    ident = torch.stack((gi, gj, gk), dim=-1)             # normalised (x, y, z) of fixed voxels
    fixed_lps = ident @ t2p_fix[:3, :3].T + t2p_fix[:3, 3]
    disp_lps_kji = (moved_lps - fixed_lps).numpy()

C.save_labels(C.itk_array_to_ijk(warped.numpy()), fixed_nib, Path(args.outdir, "warped_seg.nii.gz"))
C.save_displacement_lps(C.itk_array_to_ijk(disp_lps_kji), fixed_nib, Path(args.outdir, "displacement.nii.gz"))
C.write_runner_json(args.outdir, "fireants", VERSION, t.seconds, device="cpu",
                    source="FireANTs tutorial 1 (brain MRI) greedy settings, identity initial affine",
                    **SETTINGS)
