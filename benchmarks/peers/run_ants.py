"""ANTs SyN (antspyx 0.6.3): deformable only (the pair is pre-aligned), CC metric, 40/20/10 iterations.

``type_of_transform="SyNOnly"`` (identity initial transform), ``syn_metric="CC"`` with radius 4
(``syn_sampling=4``: the CC radius of ANTs' ``antsRegistrationSyN.sh``; antspyx's default of 32 is a
histogram bin count meant for MI and would make CC windows 65 voxels wide), ``reg_iterations``
40/20/10 (antspyx then uses shrink factors 4/2/1, smoothing 2/1/0 voxels); the other antspyx
defaults are kept (``grad_step=0.2, flow_sigma=3, total_sigma=0``).

ANTs' forward warp (``fwdtransforms[0]``, ``*1Warp.nii.gz``) is already an ITK displacement field on
the fixed grid in LPS mm mapping fixed points into moving space, so it is copied onto the fixed
header unchanged.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

args = C.parse_args(__doc__)
import ants  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

VERSION = getattr(ants, "__version__", "unknown")
if args is None:
    print("antspyx", VERSION)
    sys.exit(0)

SETTINGS = dict(type_of_transform="SyNOnly", syn_metric="CC", syn_sampling=4, reg_iterations=(40, 20, 10))

fixed_nib = nib.load(args.fixed)
fixed = ants.image_read(args.fixed, pixeltype="float")
moving = ants.image_read(args.moving, pixeltype="float")
moving_seg = ants.image_read(args.moving_seg, pixeltype="float")

with C.Timer() as t:
    reg = ants.registration(fixed=fixed, moving=moving, **SETTINGS)

fwd = list(reg["fwdtransforms"])
warp_files = [f for f in fwd if f.endswith((".nii.gz", ".nii"))]
other = [f for f in fwd if f not in warp_files]
if len(warp_files) != 1:
    raise SystemExit(f"unexpected ANTs forward transforms (expected one warp field): {fwd}")
# SyNOnly also writes its initial transform ("-r Identity") as 0GenericAffine.mat: it must be the
# identity, so that the warp field alone is the whole mapping.
for f in other:
    tx = ants.read_transform(f)
    params = np.asarray(tx.parameters, dtype=np.float64)
    if tx.transform_type.startswith(("AffineTransform", "MatrixOffsetTransformBase")) and \
            np.allclose(params[:9], np.eye(3).ravel(), atol=1e-6) and np.allclose(params[9:], 0, atol=1e-6):
        continue
    raise SystemExit(f"ANTs forward transform {f} is not the identity ({tx.transform_type}, {params})")

warped = ants.apply_transforms(fixed=fixed, moving=moving_seg, transformlist=fwd,
                               interpolator="nearestNeighbor")
C.save_labels(warped.numpy(), fixed_nib, Path(args.outdir, "warped_seg.nii.gz"))

w = nib.load(warp_files[0])
field = np.asarray(w.dataobj, dtype=np.float32)
field = field.reshape(field.shape[:3] + (3,))  # (I,J,K,1,3) -> (I,J,K,3), already LPS mm
if not np.allclose(w.affine, fixed_nib.affine, atol=1e-3):
    raise SystemExit(f"ANTs warp grid differs from the fixed grid:\n{w.affine}\n{fixed_nib.affine}")
C.save_displacement_lps(field, fixed_nib, Path(args.outdir, "displacement.nii.gz"))
C.write_runner_json(args.outdir, "ants", VERSION, t.seconds, **SETTINGS)

# antspyx leaves its transform files in the temp folder: remove them (1 mm warps are ~100 MB each).
for f in set(reg["fwdtransforms"]) | set(reg["invtransforms"]):
    try:
        Path(f).unlink()
    except OSError:
        pass
