"""Image files in and out, with plain-language errors: NIfTI and MGH through nibabel, NRRD, MetaImage and DICOM
series through :mod:`svreg_core.image.itk_io`."""
from __future__ import annotations

import gzip
import io
import logging
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel.spatialimages import SpatialImage

from svreg_core.atomic import replaced_when_complete
from svreg_core.errors import InputError, OutputError
from svreg_core.image.grid import SCANNER_CODES, Grid
from svreg_core.image.image import Image, three_d_shape, validate_image
from svreg_core.image.itk_io import (
    ITK_SUFFIXES,
    data_files,
    is_dicom_file,
    read_dicom_series,
    read_itk_image,
    write_itk_image,
)
from svreg_core.interrupts import interrupts_deferred

#: File endings taken as images where svreg looks for them by name (folders of pairs, training folders, output
#: names): NIfTI and FreeSurfer MGH (nibabel) and :data:`ITK_SUFFIXES`. :func:`load_image` reads any other file
#: nibabel can read, too.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", *ITK_SUFFIXES)

#: File endings :func:`save_image` writes: NIfTI and :data:`ITK_SUFFIXES`.
WRITABLE_SUFFIXES = (".nii.gz", ".nii", *ITK_SUFFIXES)


#: Float label values this close to a whole number are taken as that number (float storage noise).
LABEL_TOLERANCE = 1e-3

#: Largest distance between the places the sform and the qform give a point of the image, as a fraction
#: of the smallest voxel size; a larger disagreement is refused (different programs use different ones).
SFORM_QFORM_TOLERANCE = 0.1


def image_stem(name: str) -> str | None:
    """``name`` without its image ending (one of :data:`IMAGE_SUFFIXES`, any case; ``None`` when it has none):
    ``sub01`` for ``sub01.nii.gz``."""
    lower = name.lower()
    return next((name[:-len(suffix)] for suffix in IMAGE_SUFFIXES if lower.endswith(suffix)), None)


def is_dicom_input(path: Path) -> bool:
    """Whether :func:`load_image` reads ``path`` as a DICOM series: a folder, or a DICOM file
    (:func:`~svreg_core.image.itk_io.is_dicom_file`) without another image ending."""
    return path.is_dir() or (image_stem(path.name) is None and is_dicom_file(path))


def load_image(path: str | Path, *, labels: bool = False, name: str | None = None) -> Image:
    """Read a 3-D image as float32, or int32 for ``labels``: NIfTI, MGH or any other nibabel-readable file,
    NRRD / MetaImage (:data:`ITK_SUFFIXES`, read with SimpleITK), a folder holding one DICOM series, or a
    DICOM file standing for its series (:func:`~svreg_core.image.itk_io.read_dicom_series`).

    The affine maps voxels to RAS mm: nibabel's best affine (sform, else qform; a NIfTI's metres or microns
    converted with a warning, :func:`affine_in_mm`), or the ITK file's LPS geometry
    converted (:func:`~svreg_core.conventions.ras_affine_from_itk`; the array keeps the file's voxel order).
    A NIfTI's space (scanner, MNI, …) is kept as the image's :attr:`~Image.xform_codes` (:func:`xform_codes`).
    Raises :class:`InputError` for a missing, unreadable or unusable file (not 3-D, several values per voxel,
    …), for a NIfTI whose sform and qform are both set but disagree (see :func:`check_orientation`, which
    also warns about a NIfTI that stores no orientation at all), and for
    ``labels`` (label maps and masks) holding values that are not whole numbers from 0 to 2**31 - 1 (see
    :func:`label_values`).
    """
    path = Path(path)
    what, label = _names(path, name)
    with header_fixes_warned(label):
        data, affine, img = _read(path, what, label)
        if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.integer)
                                                 or np.issubdtype(data.dtype, np.floating) or data.dtype == np.bool_):
            raise InputError(f"{what} has voxel type {data.dtype}; a scalar real-valued image is needed "
                             "(not RGB or complex).")
        if labels:
            data = label_values(data, label)
        else:
            data = _as_float32(data, what)
        image = validate_image(Image(data, affine, xform_codes(img)), what, labels=labels)
        if img is not None:
            check_orientation(img, label)
    return image


@contextmanager
def header_fixes_warned(label: str) -> Iterator[None]:
    """Inside, what nibabel logs about the header it reads (``pixdim[1,2,3] should be non-zero; setting 0 dims to
    1``), which it printed as bare lines of its own, is kept; at the end each message is one ``UserWarning`` naming
    ``label``, and none when the body raises (svreg's one line says what is wrong)."""
    logger = nib.imageglobals.logger
    kept: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(" ".join(record.getMessage().split()))

    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers, logger.propagate = [Keep()], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
    for message in dict.fromkeys(kept):
        warnings.warn(f"{label}: nibabel corrected its header on reading it ({message}); check that it reads as "
                      "intended (svreg info).", stacklevel=4)


def _names(path: Path, name: str | None) -> tuple[str, str]:
    """How messages call the image ``path``: ``name`` (else its file name), and that with the file name in brackets
    for warnings. A path without a name (``.``, the current folder as a DICOM series) goes by its folder's name."""
    base = path.name or path.resolve().name or str(path)
    return name or base, f"{name} ({base})" if name else base


def _as_float32(data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as float32, what svreg computes in; :class:`InputError` for finite values beyond its range (about
    ±3.4e38, e.g. in a float64 file), which would become infinite and be refused as such."""
    with np.errstate(over="ignore"):
        converted = data.astype(np.float32)
    overflow = np.isinf(converted)
    if overflow.any() and np.isfinite(data[overflow]).any():
        largest = float(np.abs(data[overflow & np.isfinite(data)]).max())
        raise InputError(f"{what} holds voxel values up to {largest:.3g}, beyond the range of the 32-bit floats svreg "
                         "computes in (about 3.4e38); rescale its intensities first.")
    return converted


def load_grid(path: str | Path, *, name: str | None = None) -> Grid:
    """The voxel grid of an image file (the formats of :func:`load_image`), with :func:`load_image`'s checks of the
    file and its geometry (readable, 3-D, a usable affine in mm, sform and qform agreeing) but none of its voxel
    values: a grid to resample onto (``svreg apply --reference``) may be all zero or hold NaN. A NIfTI's voxels are
    not read. The grid keeps a NIfTI's space (:func:`xform_codes`)."""
    path = Path(path)
    what, label = _names(path, name)
    with header_fixes_warned(label):
        data, affine, img = _read(path, what, label, lazy=True)
        placeholder = np.broadcast_to(np.int8(1), data.shape)  # passes the value checks: only the geometry's
        grid = validate_image(Image(placeholder, affine, xform_codes(img)), what, labels=True).grid
        if img is not None:
            check_orientation(img, label)
    return grid


def _read(path: Path, what: str, label: str, *, lazy: bool = False) -> tuple[Any, np.ndarray, SpatialImage | None]:
    """The voxel array, the voxel-to-RAS mm affine and (for a nibabel file, else ``None``) the nibabel image of the
    image file ``path``; with ``lazy`` a nibabel file's array is its proxy (shape and type; the voxels unread).
    :class:`InputError` (naming ``what``) for a missing or unreadable file; ``label`` names it in warnings."""
    if not path.is_file() and not path.is_dir():
        raise InputError(f"{what}: file not found: {path}")
    if is_dicom_input(path):
        return (*read_dicom_series(path, what), None)
    lower = path.name.lower()
    if lower.endswith(ITK_SUFFIXES):
        return (*read_itk_image(path, what), None)
    if lower.endswith(tuple(f"{suffix}.gz" for suffix in ITK_SUFFIXES)):
        raise InputError(f"{what} is a gzipped {lower.split('.')[-2].upper()} file, which svreg does not read: "
                         "decompress it (gunzip) first. NRRD and MetaImage compress inside the file "
                         "(.nrrd / .mha written with compression).")
    try:
        img = nib.load(str(path))
        if not isinstance(img, SpatialImage):  # e.g. a GIFTI surface: no voxel array or affine
            raise TypeError(f"{type(img).__name__} is not a volume")
    except Exception as exc:  # nibabel raises many types for corrupt files
        _check_compression_matches_name(path, what)
        raise _unreadable(path, what, exc) from None
    three_d_shape(img.shape, what)  # before the voxels are read: a 4-D series may take GBs
    _check_stored_size(img, path, what)
    try:
        data = img.dataobj if lazy else np.asanyarray(img.dataobj)
    except Exception as exc:
        raise _unreadable(path, what, exc) from None
    return data, affine_in_mm(img, label), img


def _check_compression_matches_name(path: Path, what: str) -> None:
    """Refuse, in words, a file nibabel could not open whose gzip compression contradicts its name: ``.nii.gz``
    holding a plain NIfTI, or ``.nii`` a gzipped one (a download or copy that (de)compressed it and kept the name;
    ITK and Slicer open either), told by the NIfTI magic inside. Other files pass."""
    lower = path.name.lower()
    try:
        with open(path, "rb") as stream:
            head = stream.read(352)
        gzipped = head[:2] == b"\x1f\x8b"
        if gzipped:
            with gzip.open(path, "rb") as stream:
                head = stream.read(352)
    except (OSError, EOFError):
        return
    if head[344:348] not in (b"n+1\0", b"ni1\0") and head[4:8] not in (b"n+2\0", b"ni2\0"):
        return  # no NIfTI inside: nibabel's reason stands
    if lower.endswith(".nii.gz") and not gzipped:
        raise InputError(f"{what}: {path.name} is not gzip-compressed although its name ends in .gz (a download or "
                         f"copy that decompressed it); rename it to {path.name[:-3]} and give that.")
    if lower.endswith(".nii") and gzipped:
        raise InputError(f"{what}: {path.name} is gzip-compressed although its name ends in .nii; rename it to "
                         f"{path.name}.gz and give that.")


def _unreadable(path: Path, what: str, exc: Exception) -> InputError:
    """The :class:`InputError` for a file nibabel fails to read, with its reason on one line."""
    reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())  # nibabel messages may span lines
    return InputError(f"{what}: cannot read {path} as an image ({reason}).")


#: Most bytes a gzip stream can hold per byte of the file (deflate's limit is about 1032).
GZIP_MAX_RATIO = 1032


def _check_stored_size(img: SpatialImage, path: Path, what: str) -> None:
    """Refuse a nibabel image whose header declares more voxel bytes than its file can hold (an uncompressed file:
    its size; gzip: :data:`GZIP_MAX_RATIO` times it), before any of them is read: a truncated file, or a damaged
    header claiming a size that nibabel would first allocate (GBs, or a bare ``MemoryError``). A voxel file that
    cannot be found (a NIfTI pair's ``.img``) is :func:`_unreadable`, as reading its voxels would be."""
    proxy, name = img.dataobj, img.file_map["image"].filename
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or name is None:
        return
    lower = str(name).lower()
    if lower.endswith((".bz2", ".zst")):  # no useful bound
        return
    needed = int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.float64)) * np.dtype(proxy.dtype).itemsize
    try:
        stored = os.path.getsize(name)
    except OSError as exc:
        raise _unreadable(path, what, exc) from None
    compressed = lower.endswith((".gz", ".mgz"))
    if needed > stored * (GZIP_MAX_RATIO if compressed else 1):
        shape = " x ".join(str(n) for n in proxy.shape)
        raise InputError(f"{what}: its header declares {shape} voxels of {np.dtype(proxy.dtype)} ({_amount(needed)}), "
                         f"more than its file ({_amount(stored)}{', compressed' if compressed else ''}) can hold; the "
                         "file is incomplete (an interrupted copy or download) or its header is damaged.")


def _amount(size: int) -> str:
    """A byte count for a message: ``'480 bytes'``, ``'3.22 GiB'``."""
    return f"{size} bytes" if size < 2**20 else f"{size / 2**20:.3g} MiB" if size < 2**30 else f"{size / 2**30:.3g} GiB"


#: Millimetres per NIfTI spatial unit (``xyzt_units``); 'unknown' is taken as mm, as ITK and Slicer do.
NIFTI_UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def affine_in_mm(img: SpatialImage, what: str) -> np.ndarray:
    """The voxel-to-RAS affine of ``img`` in millimetres: a NIfTI header's spatial unit (metres, microns) converted,
    as ITK and Slicer do, with a one-line ``UserWarning`` naming the conversion; other images' affine as it is."""
    affine = np.asarray(img.affine, dtype=np.float64)
    units = getattr(img.header, "get_xyzt_units", None)
    unit = units()[0] if units is not None else "mm"
    factor = NIFTI_UNIT_MM.get(unit, 1.0)
    if factor == 1.0:
        return affine
    warnings.warn(f"{what} gives its voxel sizes and position in {unit}s (NIfTI xyzt_units); svreg converts them to "
                  f"mm (x {factor:g}), as ITK and Slicer do, and writes its outputs in mm.", stacklevel=3)
    return np.diag([factor, factor, factor, 1.0]) @ affine


def xform_codes(img: SpatialImage | None) -> tuple[int, int]:
    """The NIfTI sform and qform codes of ``img`` that svreg's outputs of its space carry (:attr:`Grid.xform_codes`):
    a code left 0 (unset) or unknown to nibabel takes the other's, so that both forms svreg writes say which space
    they are in; :data:`~svreg_core.image.grid.SCANNER_CODES` when neither is set (svreg then places the image as
    :func:`check_orientation` warns), and for other files (MGH, ITK, DICOM: ``None``), which hold no code."""
    header = getattr(img, "header", None)
    if not isinstance(header, nib.Nifti1Header):  # a NIfTI-2 header is one too
        return SCANNER_CODES
    known = nib.nifti1.xform_codes.value_set()
    sform, qform = (int(header[name]) if int(header[name]) in known else 0 for name in ("sform_code", "qform_code"))
    return sform or qform or SCANNER_CODES[0], qform or sform or SCANNER_CODES[1]


def field_of_view_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where the voxel-to-world affines ``a`` and ``b`` put a point of an
    image of ``shape``: the maximum over the 8 outer corners of its voxels (the difference is affine)."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape[:3]], indexing="ij")).reshape(3, -1).T
    diff = nib.affines.apply_affine(np.asarray(a, np.float64), corners) - \
        nib.affines.apply_affine(np.asarray(b, np.float64), corners)
    return float(np.linalg.norm(diff, axis=1).max())


def _tolerance_mm(affine: np.ndarray) -> float:
    """:data:`SFORM_QFORM_TOLERANCE` times the smallest voxel size (mm) of ``affine``."""
    return SFORM_QFORM_TOLERANCE * float(np.min(np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)))


def check_orientation(img: SpatialImage, what: str) -> None:
    """Refuse a NIfTI whose sform and qform are both set and place the image differently; warn about one that
    stores no orientation.

    When both codes are non-zero and the two affines put some point of the image more than
    :data:`SFORM_QFORM_TOLERANCE` of the smallest voxel size apart, programs disagree on where the
    image is (nibabel and svreg use the sform; ITK, hence Slicer and SimpleITK, the qform when the
    sform is sheared): raises :class:`InputError` naming both and the fix. With only the sform set, its voxel sizes
    must match ``pixdim``, which ITK takes as the spacing (:func:`_check_sform_voxel_sizes`). A negative voxel
    size (``pixdim[1:4]``) is refused too, whatever the codes: nibabel and svreg take its size, ITK (hence Slicer)
    mirrors that axis, so the two place the image mirrored. When both codes are 0 the file
    says nothing about where the image is, and programs guess differently (nibabel and svreg: x mirrored,
    centred on the origin; ITK and Slicer: the first voxel at the origin, LPS axes): a ``UserWarning`` says
    which placement svreg used. A file with only the qform set, or not a NIfTI, passes.
    """
    if not hasattr(img, "get_sform") or not hasattr(img, "get_qform"):
        return
    pixdim = _stored_voxel_sizes(img)
    if np.any(pixdim < 0):
        raise InputError(f"{what}: its header gives negative voxel sizes (pixdim {', '.join(f'{v:g}' for v in pixdim)}"
                         " mm), which programs read differently (nibabel and svreg as the same sizes made positive; "
                         "ITK and Slicer mirror those axes), so one of them would show it flipped; store positive "
                         "voxel sizes, with any flip in the sform and qform (e.g. nibabel's set_sform and set_qform "
                         "with the intended affine), and run again.")
    sform, s_code = img.get_sform(coded=True)
    qform, q_code = img.get_qform(coded=True)
    if not s_code and not q_code:
        axes = "".join(nib.aff2axcodes(img.affine))
        corner = ", ".join(f"{v:.1f}" for v in img.affine[:3, 3])
        warnings.warn(f"{what} stores no orientation (NIfTI sform and qform codes 0), and programs place such files "
                      f"differently: svreg and nibabel as {axes} with voxel (0, 0, 0) at ({corner}) mm RAS, ITK and "
                      "Slicer with LPS axes from the origin. svreg's outputs follow its placement; if you know the "
                      "orientation, set it in the header (e.g. fslorient -setsform and -setsformcode, or nibabel's "
                      "set_sform) and run again.", stacklevel=3)
        return
    if s_code and not q_code:
        _check_sform_voxel_sizes(sform, pixdim, img.shape[:3], what)
    if not s_code or not q_code:
        return
    distance = field_of_view_distance(sform, qform, img.shape[:3])
    if distance > _tolerance_mm(sform):
        raise InputError(f"{what}: its sform and qform place the image up to {distance:.3g} mm apart, so "
                         "programs disagree on where it is; remove the wrong one ('fslorient -deleteqform FILE' "
                         "keeps the sform, 'fslorient -deletesform FILE' the qform).")


def _check_sform_voxel_sizes(sform: np.ndarray, pixdim: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """Refuse a NIfTI with only its sform set whose voxel sizes (the lengths of its columns) differ from the
    header's ``pixdim`` (0 read as 1) by more than :data:`SFORM_QFORM_TOLERANCE` of a voxel over the image: nibabel
    and svreg use the sform's, ITK (hence Slicer) takes ``pixdim`` as the voxel spacing along the sform's
    directions, so the two give the image different sizes."""
    sizes = np.linalg.norm(sform[:3, :3], axis=0)
    spacing = np.where(pixdim == 0, 1.0, np.abs(pixdim))
    itk = sform.copy()
    itk[:3, :3] = sform[:3, :3] / sizes * spacing
    distance = field_of_view_distance(sform, itk, shape)
    if distance > _tolerance_mm(sform):
        raise InputError(f"{what}: its sform gives voxel sizes {', '.join(f'{v:.4g}' for v in sizes)} mm but its "
                         f"pixdim {', '.join(f'{v:.4g}' for v in pixdim)} mm, and programs read it differently "
                         "(nibabel and svreg take the sform's, ITK and Slicer the pixdim), placing parts of it up to "
                         f"{distance:.3g} mm apart; store the sform's voxel sizes in the header (e.g. "
                         "'fslorient -copysform2qform FILE') and run again.")


def _stored_voxel_sizes(img: SpatialImage) -> np.ndarray:
    """A NIfTI's ``pixdim[1:4]`` as its file stores them (nibabel's loaded header holds them made positive)."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header):  # a NIfTI-2 header is one too
        return np.ones(3)
    name = (img.file_map.get("header") or img.file_map["image"]).filename
    if name is not None:
        with nib.openers.ImageOpener(name) as stream:
            header = type(header)(stream.read(header.template_dtype.itemsize), header.endianness, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


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


#: gzip level of ``.nii.gz`` files unless told otherwise (see :func:`save_nifti`).
DEFAULT_GZIP_LEVEL = 1

#: gzip level of the displacement fields (``.nii.gz`` files, and ``transform.h5``'s field) unless told otherwise:
#: stored (level 0). The mantissas of a float32 field are noise to gzip: on the 1 mm brain pair zlib's level 1
#: shrank a displacement field from 82 to 72 MiB in 4.0 s where storing it took 0.55 s (2026-11-27, one core;
#: shuffled in HDF5, 87 to 61 MB in 1.6 s); igzip's level 1 shrinks the demo's fields by 9 % (86.7 to 78.7 MB in
#: 0.28 s, 102.4 to 92.8 MB in 0.35 s, 2026-11-29). Images with background compress far better (the warped image
#: to about a quarter, λ, constant outside the brain, to a fiftieth), and so does the Jacobian map (28.9 to
#: 20.2 MB in 0.11 s with igzip; stored from 2026-11-28, when zlib took 0.6 s): they keep
#: :data:`DEFAULT_GZIP_LEVEL`.
DEFAULT_FIELD_GZIP_LEVEL = 0


def _gzip_level(gzip_level: int | None) -> int:
    """``gzip_level`` checked (0 to 9), or :data:`DEFAULT_GZIP_LEVEL` for ``None``."""
    level = DEFAULT_GZIP_LEVEL if gzip_level is None else int(gzip_level)
    if not 0 <= level <= 9:
        raise ValueError(f"gzip level must be 0 to 9, not {gzip_level!r}")
    return level


@contextmanager
def _gzip_writer(path: Path, level: int) -> Iterator[io.BufferedIOBase]:
    """A gzip stream writing ``path`` at ``level``: 0 stores the data (Python's ``gzip``); 1 to 9 compress with
    ISA-L's igzip (``isal``) at its level 1, 2 or 3 (3 for 3 to 9, its best). igzip makes standard gzip that every
    reader opens, 4-15x faster than zlib and as small: the brain pair's warped image and λ map took 0.056 s and
    0.10 s of CPU at igzip level 1 against 0.31 s and 0.38 s at zlib's level 1, files 1-2 % smaller; a
    displacement-like field 0.19 s against 2.8 s (one core, 2026-11-29). As nibabel does, the header holds no
    file name and time (mtime 0), so the same image gives the same bytes."""
    with open(path, "wb") as raw:
        stream = gzip.GzipFile(filename="", mode="wb", compresslevel=0, fileobj=raw, mtime=0) if level == 0 else \
            igzip.IGzipFile(filename="", mode="wb", compresslevel=min(level, 3), fileobj=raw, mtime=0)
        with stream:
            yield stream


def save_nifti(nii: nib.Nifti1Image, path: str | Path, *, gzip_level: int | None = None) -> Path:
    """Write a NIfTI image; a ``.gz`` name is gzip-compressed at ``gzip_level`` (0 = stored, fastest, still
    a valid ``.nii.gz`` any reader opens; 1-9 compressed by :func:`_gzip_writer`; ``None``:
    :data:`DEFAULT_GZIP_LEVEL`).

    A failing write (a full disk, an I/O error) removes the partial file and raises :class:`OutputError`."""
    path = Path(path)
    level = _gzip_level(gzip_level)
    try:
        with _gzip_writer(path, level) if path.name.lower().endswith(".gz") else open(path, "wb") as fobj:
            holder = nib.fileholders.FileHolder(fileobj=fobj)
            nii.to_file_map({"image": holder, "header": holder})
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    return path


def check_writable_name(path: str | Path) -> None:
    """Raise :class:`InputError` unless :func:`save_image` can write a file named ``path`` (its ending is one of
    :data:`WRITABLE_SUFFIXES`, any case)."""
    if not Path(path).name.lower().endswith(WRITABLE_SUFFIXES):
        raise InputError(f"cannot write an image named {Path(path).name}: end its name in "
                         f"{', '.join(WRITABLE_SUFFIXES[:-1])} or {WRITABLE_SUFFIXES[-1]}.")


def save_image(image: Image, path: str | Path, *, dtype: np.dtype | type | None = None,
               gzip_level: int | None = None) -> Path:
    """Write ``image`` as NIfTI (``.nii``/``.nii.gz``) with its RAS affine as sform and qform (with its
    :attr:`~Image.xform_codes`: scanner, MNI, …), or as NRRD / MetaImage (:data:`ITK_SUFFIXES`) through SimpleITK
    with the same geometry in LPS (which holds no such code).

    A sheared affine, which a qform (rotation and voxel sizes) cannot hold, is written as the sform
    only (qform code 0), so the file never has a qform that disagrees with its sform. ``gzip_level``:
    see :func:`save_nifti` (for ITK files: 0 stores the voxels, otherwise zlib at that level). Another
    ending raises :class:`InputError` (:func:`check_writable_name`). The file appears only when complete
    (:func:`_complete_or_nothing`): a failed or interrupted write leaves an existing ``path`` as it was.
    """
    path = Path(path)
    check_writable_name(path)
    data = np.asarray(image.data if dtype is None else image.data.astype(dtype))
    with _complete_or_nothing(path) as target:
        if path.name.lower().endswith(ITK_SUFFIXES):
            write_itk_image(data, image.affine, target, _gzip_level(gzip_level))
        else:
            save_nifti(nifti_image(data, image.affine, image.xform_codes), target, gzip_level=gzip_level)
    return path


def nifti_image(data: np.ndarray, affine: np.ndarray,
                codes: tuple[int, int] = SCANNER_CODES) -> nib.Nifti1Image:
    """``data`` (its first three axes the voxels) with its voxel-to-RAS ``affine`` as sform and, when it can hold
    it, qform, in mm, with the sform and qform ``codes`` of its space (:attr:`Grid.xform_codes`; default 1,
    scanner): the one way svreg makes a NIfTI, so no file has a qform that disagrees with its sform (a sheared
    affine is written as the sform only, qform code 0; ITK, hence Slicer, reads no sheared NIfTI: it takes only
    orthonormal directions)."""
    nii = nib.Nifti1Image(data, affine)
    nii.set_sform(affine, code=codes[0])
    nii.set_qform(affine, code=codes[1])
    if field_of_view_distance(nii.get_qform(), affine, data.shape) > _tolerance_mm(affine):
        nii.set_qform(None, code=0)
    nii.header.set_xyzt_units("mm")
    return nii


@contextmanager
def _complete_or_nothing(path: Path) -> Iterator[Path]:
    """The name to write ``path`` under (:func:`~svreg_core.atomic.replaced_when_complete` with the same ending),
    so ``path`` is never a truncated file and an existing one stays as it was. A MetaImage or detached NRRD
    header (``.mhd``, ``.nhdr``) names its data file, so the pair is written with the same names in a hidden
    folder beside ``path`` and moved into place when complete (:func:`_detached_pair_when_complete`)."""
    path = path.resolve() if path.is_symlink() else path
    if path.name.lower().endswith((".mhd", ".nhdr")):
        with _detached_pair_when_complete(path) as target:
            yield target
        return
    ending = next(s for s in WRITABLE_SUFFIXES if path.name.lower().endswith(s))
    try:
        with replaced_when_complete(path, path.name[-len(ending):]) as tmp:
            try:
                yield tmp
            except OutputError as exc:  # the writer's message names the file the user asked for
                raise OutputError(str(exc).replace(str(tmp), str(path))) from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None


@contextmanager
def _detached_pair_when_complete(path: Path) -> Iterator[Path]:
    """Yield ``.NAME.partial-PID-TOKEN/NAME`` for a detached header ``path``; when the body completes, its data
    file, then the header, replace those beside ``path`` (and a data file of the other compression left from an
    earlier write is removed). A data file beside ``path`` that the other detached header of its name uses (``x.raw``
    of ``x.mhd`` when writing ``x.nhdr``: another image's data) is neither replaced nor removed: replacing it raises
    :class:`OutputError`. A failed or interrupted write leaves the earlier pair as it was and nothing else behind."""
    folder = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        folder.mkdir()
        try:
            yield folder / path.name
        except OutputError as exc:  # the writer's message names the file the user asked for
            raise OutputError(str(exc).replace(str(folder / path.name), str(path))) from None
        written = [f for f in data_files(folder / path.name) if f.exists()]
        foreign = next((path.with_name(data.name) for data in written
                        if _used_by_another_header(path.with_name(data.name), path)), None)
        if foreign is not None:
            raise OutputError(f"cannot write {path}: its data file would replace {foreign}, the data of "
                              f"{_used_by_another_header(foreign, path)}; name the output otherwise.")
        with interrupts_deferred():
            for data in written:
                os.replace(data, path.with_name(data.name))
            os.replace(folder / path.name, path)
            for stale in data_files(path):
                if stale.name not in {data.name for data in written} and not _used_by_another_header(stale, path):
                    stale.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _used_by_another_header(data: Path, header: Path) -> str | None:
    """The name of the detached header beside ``header`` with its name and the other ending (``x.mhd`` for
    ``x.nhdr``, and the reverse) when it names ``data`` as its data file (:func:`_named_data_file`), else ``None``."""
    if not data.exists():
        return None
    stem, ending = header.name[:-len(header.suffix)], ".nhdr" if header.suffix.lower() == ".mhd" else ".mhd"
    target = data.resolve()
    for other in (header.with_name(stem + ending), header.with_name(stem + ending.upper())):
        if other.is_file() and _named_data_file(other) == target:
            return other.name
    return None


def _named_data_file(header: Path) -> Path | None:
    """The data file a detached NRRD (``data file:``) or MetaImage (``ElementDataFile =``) header names, resolved
    beside it; ``None`` without a header or a single file named there (several files, ``LOCAL``, unreadable)."""
    try:
        with open(header, "rb") as stream:
            text = stream.read(1 << 20).decode("latin-1")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=" if line.lstrip().startswith("ElementDataFile") else ":")
        if sep and key.strip().lower() in ("data file", "datafile", "elementdatafile"):
            value = value.strip()
            if not value or "%" in value or value.upper() in ("LOCAL", "LIST"):  # several files, or none
                return None
            return (header.parent / value).resolve()
    return None
