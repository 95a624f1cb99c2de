"""NIfTI reading and writing through nibabel, with plain-language errors."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from svreg_core.errors import InputError
from svreg_core.image.image import Image, validate_image

#: Float label values this close to a whole number are taken as that number (float storage noise).
LABEL_TOLERANCE = 1e-3


def load_image(path: str | Path, *, labels: bool = False, name: str | None = None) -> Image:
    """Read a 3-D NIfTI (or any nibabel-readable) image as float32, or int32 for ``labels``.

    The affine is nibabel's best voxel-to-RAS affine (sform, else qform).
    Raises :class:`InputError` for a missing, unreadable or unusable file, and for ``labels`` (label
    maps and masks) holding values that are not whole numbers from 0 to 2**31 - 1 (see
    :func:`label_values`).
    """
    path = Path(path)
    what = name or path.name
    if not path.is_file():
        raise InputError(f"{what}: file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())  # nibabel messages may span lines
        raise InputError(f"{what}: cannot read {path} as an image ({reason}).") from None
    if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.integer)
                                             or np.issubdtype(data.dtype, np.floating) or data.dtype == np.bool_):
        raise InputError(f"{what} has voxel type {data.dtype}; a scalar real-valued image is needed "
                         "(not RGB or complex).")
    if labels:
        data = label_values(data, f"{name} ({path.name})" if name else path.name)
    else:
        data = data.astype(np.float32)
    return validate_image(Image(data, img.affine), what, labels=labels)


def label_values(data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as int32 label values, refusing what would silently change a label.

    Float values within :data:`LABEL_TOLERANCE` of a whole number are rounded to it; other values
    (2.6), NaN, negative values and values above 2**31 - 1 (which int32 would wrap) raise
    :class:`InputError` naming ``what`` and an example value. 0 is the background.
    """
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise InputError(f"{what} contains NaN or infinite values; a label map must hold whole numbers.")
        rounded = np.rint(data)
        off = np.abs(data - rounded) > LABEL_TOLERANCE
        if off.any():
            raise InputError(f"{what} holds values that are not whole numbers (e.g. {data[off][0]:g}); "
                             "a label map or mask must hold whole-number labels.")
        data = rounded
    if data.size == 0 or data.dtype == np.bool_:
        return data.astype(np.int32)
    low, high = data.min(), data.max()
    if low < 0:
        raise InputError(f"{what} holds negative labels (e.g. {int(low)}); labels must be 0 (background) "
                         "or positive whole numbers.")
    limit = np.iinfo(np.int32).max
    if high > limit:
        raise InputError(f"{what} holds the label {int(high)}, above the largest supported label {limit}.")
    return data.astype(np.int32)


def save_image(image: Image, path: str | Path, *, dtype: np.dtype | type | None = None) -> Path:
    """Write ``image`` as NIfTI with its RAS affine set as both sform and qform (code 1, scanner)."""
    path = Path(path)
    data = np.asarray(image.data if dtype is None else image.data.astype(dtype))
    nii = nib.Nifti1Image(data, image.affine)
    nii.set_sform(image.affine, code=1)
    nii.set_qform(image.affine, code=1)
    nii.header.set_xyzt_units("mm")
    nib.save(nii, str(path))
    return path
