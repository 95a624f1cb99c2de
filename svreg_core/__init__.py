"""svreg_core: diffeomorphic 3-D image registration with a spatially varying regularizer (SPR).

Public API::

    from svreg_core import load_image, register, load_parameters, write_outputs
    fixed, moving = load_image("fixed.nii.gz"), load_image("moving.nii.gz")
    result = register(fixed, moving, load_parameters("brain-mri"))
    write_outputs(result, "out/")

Conventions (frames, units, directions) are defined in :mod:`svreg_core.conventions`.
"""
__version__ = "0.1.0"

from svreg_core.errors import InputError, OutputError, SvregError  # noqa: E402
from svreg_core.image import Grid, Image, load_image, save_image  # noqa: E402
from svreg_core.optim.parameters import PRESETS, RegistrationParameters, load_parameters  # noqa: E402
from svreg_core.outputs import write_outputs  # noqa: E402
from svreg_core.progress import ProgressEvent  # noqa: E402
from svreg_core.registration import RegistrationResult, register  # noqa: E402

__all__ = ["Grid", "Image", "InputError", "OutputError", "PRESETS", "ProgressEvent", "RegistrationParameters",
           "RegistrationResult", "SvregError", "__version__", "load_image", "load_parameters", "register",
           "save_image", "write_outputs"]
