"""elastix B-spline (itk-elastix 0.25.4) with the default ``bspline`` parameter map, no affine stage
(the pair is pre-aligned).

elastix transforms map fixed-space points into moving space; ``transformix``'s deformation field is
an ITK displacement field on the fixed grid in LPS mm, i.e. already our convention.
Labels are warped by transformix with ``FinalBSplineInterpolationOrder = 0`` (nearest neighbour).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

args = C.parse_args(__doc__)
import itk  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

try:
    from importlib.metadata import version as _v
    VERSION = _v("itk-elastix")
except Exception:  # pragma: no cover
    VERSION = "unknown"
if args is None:
    print("itk-elastix", VERSION, "itk", itk.Version.GetITKVersion())
    sys.exit(0)

# Threads: ITK's global default (plus ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS from the environment).
# elastix_registration_method(number_of_threads=...) segfaults in itk-elastix 0.25.4, so it is not used.
itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(C.THREADS)

fixed_nib = nib.load(args.fixed)
fixed = itk.imread(args.fixed, itk.F)
moving = itk.imread(args.moving, itk.F)
moving_seg = itk.imread(args.moving_seg, itk.F)

params = itk.ParameterObject.New()
params.AddParameterMap(params.GetDefaultParameterMap("bspline"))

with C.Timer() as t:
    _, result_params = itk.elastix_registration_method(
        fixed, moving, parameter_object=params, log_to_console=False)

# Displacement field on the fixed grid (LPS mm, fixed -> moving). transformix also writes
# deformationField.nii into the working folder: keep that inside OUTDIR.
args.outdir = str(Path(args.outdir).absolute())
os.chdir(args.outdir)
field = itk.transformix_deformation_field(moving, result_params)
field_ijk = C.itk_array_to_ijk(np.asarray(itk.array_from_image(field), dtype=np.float32))
C.save_displacement_lps(field_ijk, fixed_nib, Path(args.outdir, "displacement.nii.gz"))

# Nearest-neighbour label warp.
for i in range(result_params.GetNumberOfParameterMaps()):
    result_params.SetParameter(i, "FinalBSplineInterpolationOrder", "0")
    result_params.SetParameter(i, "ResampleInterpolator", "FinalNearestNeighborInterpolator")
warped = itk.transformix_filter(moving_seg, result_params)
C.save_labels(C.itk_array_to_ijk(itk.array_from_image(warped)), fixed_nib,
              Path(args.outdir, "warped_seg.nii.gz"))

pmap = params.GetParameterMap(0)
C.write_runner_json(args.outdir, "elastix", VERSION, t.seconds,
                    parameter_map="default bspline",
                    **{k: list(pmap[k]) for k in ("NumberOfResolutions", "FinalGridSpacingInPhysicalUnits",
                                                  "Metric", "MaximumNumberOfIterations")
                       if k in pmap})
