"""NRRD, MetaImage and DICOM-series images through SimpleITK (imported on first use: a NIfTI run never needs it),
their LPS geometry converted to and from RAS by :mod:`svreg_core.conventions`, with plain-language errors."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from svreg_core.conventions import itk_geometry_from_ras_affine, ras_affine_from_itk
from svreg_core.errors import InputError, OutputError

if TYPE_CHECKING:
    import SimpleITK as sitk

#: File endings read through SimpleITK (lower case): NRRD (3D Slicer's own format; ``.nhdr`` a detached header)
#: and MetaImage (``.mhd`` a detached header). Their geometry is LPS, converted to RAS on reading.
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")

#: Largest departure of a DICOM series' slice positions from even steps along the slice normal, and largest step
#: across it (gantry tilt), as a fraction of the mean step: beyond, the series has no single voxel grid.
DICOM_SPACING_TOLERANCE = 0.01

#: Endings of DICOM files (lower case); files without an ending are recognised by their Part-10 marker.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def data_files(path: Path) -> list[Path]:
    """The files ITK writes beside a detached header (``.nhdr``: ``STEM.raw`` or ``STEM.raw.gz``; ``.mhd``:
    ``STEM.raw`` or ``STEM.zraw``); none for any other name."""
    suffix = path.suffix.lower()
    endings = {".nhdr": (".raw", ".raw.gz"), ".mhd": (".raw", ".zraw")}.get(suffix, ())
    return [path.with_name(path.name[:-len(suffix)] + ending) for ending in endings]


def write_itk_image(data: np.ndarray, affine: np.ndarray, path: Path, gzip_level: int) -> Path:
    """Write a 3-D array ``(I, J, K)`` with its voxel-to-RAS ``affine`` as a NRRD / MetaImage file (SimpleITK,
    imported here), its geometry in LPS (:func:`~svreg_core.conventions.itk_geometry_from_ras_affine`). A failing
    write removes what it wrote and raises :class:`OutputError` with ITK's reason."""
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    direction, spacing, origin = itk_geometry_from_ras_affine(affine)
    itk.SetDirection(tuple(direction))
    itk.SetSpacing(tuple(spacing))
    itk.SetOrigin(tuple(origin))
    try:
        sitk.WriteImage(itk, str(path), useCompression=gzip_level > 0, compressionLevel=gzip_level)
    except RuntimeError as exc:
        for written in (path, *data_files(path)):
            written.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} (ITK: {_itk_reason(exc)}).") from None
    return path


def _itk_reason(exc: RuntimeError) -> str:
    """The reason in a SimpleITK exception's message: its first line is a source location, the reason its last."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return lines[-1].split("ERROR: ", 1)[-1] if lines else "unknown error"


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series in a folder: its Series Instance UID, description and modality (empty when untagged),
    and its files sorted along the slice normal (GDCM)."""

    uid: str
    description: str
    modality: str
    files: tuple[str, ...]

    def summary(self) -> str:
        """One line: ``'T1 MPRAGE' (MR, 176 files, e.g. IM0001)``."""
        kind = ", ".join(part for part in (self.modality, f"{len(self.files)} files") if part)
        return f"'{self.description or self.uid}' ({kind}, e.g. {Path(self.files[0]).name})"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` names a DICOM file: a :data:`DICOM_SUFFIXES` ending, or the Part-10 marker ``DICM`` at
    byte 128 (files exported without an ending)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def _header(name: str) -> sitk.ImageFileReader:
    """The tags of one DICOM file, its pixels left unread."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    reader.ReadImageInformation()
    return reader


def _tag(header: sitk.ImageFileReader, key: str) -> str:
    return header.GetMetaData(key).strip() if header.HasMetaDataKey(key) else ""


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Inside, ITK prints no warnings of its own (GDCM's "No Series were found" for a folder without DICOM files,
    which svreg reports in its own words); ITK's setting is restored after."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def find_dicom_series(path: Path) -> list[DicomSeries]:
    """The DICOM series ``path`` stands for, each read from one header (SimpleITK/GDCM): for a folder, every
    series in it (not its sub-folders); for a DICOM file, the series it belongs to (its Series Instance UID among
    the files of its folder), or the file alone when GDCM does not group it. Raises ``RuntimeError`` (ITK's) for
    a file or folder GDCM cannot read."""
    with _itk_warnings_off():
        return _find_dicom_series(path)


def _find_dicom_series(path: Path) -> list[DicomSeries]:
    import SimpleITK as sitk

    def described(uid: str, files: tuple[str, ...], header: sitk.ImageFileReader) -> DicomSeries:
        return DicomSeries(uid, _tag(header, "0008|103e"), _tag(header, "0008|0060"), files)

    if path.is_dir():
        found = []
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)):
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid))
            found.append(described(uid, files, _header(files[0])))
        return found
    header = _header(str(path))
    uid = _tag(header, "0020|000e")
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), uid)) if uid else ()
    if path.resolve() not in {Path(name).resolve() for name in files}:
        files = (str(path),)
    return [described(uid, files, header)]


def read_dicom_series(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The voxel array ``(I, J, K)`` and voxel-to-RAS affine of a DICOM series, read with SimpleITK/GDCM: the
    one series in the folder ``path`` (not its sub-folders), or the series the DICOM file ``path`` belongs to
    (its Series Instance UID, among the files of its folder: how one series of a folder holding several is
    chosen). Slices are sorted along their normal, rescale slope and intercept applied (CT in HU), the LPS
    patient geometry converted to RAS.

    Refused with :class:`InputError` before the pixels are read: a folder with no series or several (each
    listed with a file to give instead), and slices whose positions step unevenly along the normal (missing or
    repeated slices) or across it (gantry tilt) by more than :data:`DICOM_SPACING_TOLERANCE` of the mean step:
    no single voxel grid holds them.
    """
    import SimpleITK as sitk

    try:
        series = find_dicom_series(path)
        if not series:
            below = _sub_folders_with_dicom(path)
            raise InputError(f"{what}: {path} is a folder without a DICOM series; give an image file or a "
                             "folder holding the DICOM files of one series"
                             + (f" (its sub-folders {', '.join(below)} hold DICOM files: give the one of the series "
                                "to read, 'svreg info SUBFOLDER' describes it)." if below else "."))
        if len(series) > 1:
            listing = "; ".join(found.summary() for found in series[:6])
            raise InputError(f"{what}: folder {path} holds {len(series)} DICOM series ({listing}"
                             f"{'; …' if len(series) > 6 else ''}); give one file of the series to read "
                             "('svreg info FOLDER' describes each).")
        files = series[0].files
        if len(files) > 1:
            _check_slice_positions(files, what)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        # ITK warns (three lines of its own) from a 1e-4 step deviation, which rounded positions exceed; the steps
        # were checked above against DICOM_SPACING_TOLERANCE, so a series that reaches here gets no such warning
        # (SimpleITK 2.4 and later: 2.3, which pyproject allows, has no such setting and keeps ITK's warning)
        if hasattr(reader, "SetSpacingWarningRelThreshold"):
            reader.SetSpacingWarningRelThreshold(2 * DICOM_SPACING_TOLERANCE)
        itk = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{what}: cannot read the DICOM series of {path} (ITK: {_itk_reason(exc)}).") from None
    if itk.GetDimension() != 3 or itk.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: the DICOM series of {path} is not a 3-D scalar image (size {itk.GetSize()}, "
                         f"{itk.GetNumberOfComponentsPerPixel()} values per voxel); svreg needs one.")
    return (sitk.GetArrayFromImage(itk).transpose(2, 1, 0),
            ras_affine_from_itk(itk.GetDirection(), itk.GetSpacing(), itk.GetOrigin()))


def _sub_folders_with_dicom(path: Path, most: int = 6, files: int = 20) -> list[str]:
    """The names of up to ``most`` sub-folders of ``path`` (a study or patient folder), then ``…``, among whose
    first ``files`` files one is a DICOM file (:func:`is_dicom_file`); none when ``path`` cannot be listed."""
    found: list[str] = []
    try:
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            if any(is_dicom_file(f) for f in itertools.islice(sub.iterdir(), files) if f.is_file()):
                if len(found) == most:
                    return [*found, "…"]
                found.append(sub.name)
    except OSError:
        pass
    return found


def _tag_numbers(value: str, count: int, tag: str, name: str, what: str) -> list[float]:
    """The ``count`` numbers of a DICOM multi-valued decimal tag (``"-90.5\\12\\30"``); :class:`InputError` naming the
    file and tag when it holds other than ``count`` finite numbers (a damaged or hand-edited header)."""
    try:
        numbers = [float(v) for v in value.split("\\")]
    except ValueError:
        numbers = []
    if len(numbers) != count or not np.all(np.isfinite(numbers)):
        raise InputError(f"{what}: DICOM file {Path(name).name} has an unreadable {tag}: '{value}', not {count} "
                         "numbers; its header is damaged (export the series again).")
    return numbers


def _check_slice_positions(files: tuple[str, ...], what: str) -> None:
    """Refuse DICOM slices (sorted) that do not step evenly along their normal (:func:`read_dicom_series`)."""
    positions: list[list[float]] = []
    orientation: list[float] = []
    for name in files:
        header = _header(name)
        position, direction = _tag(header, "0020|0032"), _tag(header, "0020|0037")
        if not (position and direction):
            raise InputError(f"{what}: DICOM file {Path(name).name} has no image position or orientation; "
                             "a 3-D series needs both.")
        positions.append(_tag_numbers(position, 3, "image position (0020,0032)", name, what))
        orientation = orientation or _tag_numbers(direction, 6, "image orientation (0020,0037)", name, what)
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(np.asarray(positions), axis=0)
    along = steps @ normal
    across = np.linalg.norm(steps - along[:, None] * normal, axis=1)
    mean = float(np.mean(along))
    if abs(mean) < 1e-6 or np.max(np.abs(along - mean)) > DICOM_SPACING_TOLERANCE * abs(mean):
        raise InputError(f"{what}: the slices of its DICOM series are not evenly spaced (steps {np.min(along):.4g} "
                         f"to {np.max(along):.4g} mm along the slice normal: missing, repeated or several "
                         "acquisitions' slices); export the series as one volume first (e.g. with dcm2niix).")
    if np.max(across) > DICOM_SPACING_TOLERANCE * abs(mean):
        raise InputError(f"{what}: the slices of its DICOM series shift sideways by up to {np.max(across):.3g} mm "
                         "per slice (gantry tilt), which a voxel grid cannot hold; resample it first (e.g. "
                         "dcm2niix corrects gantry tilt).")


def read_itk_image(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The voxel array ``(I, J, K)`` and voxel-to-RAS affine of a 3-D scalar NRRD / MetaImage file.

    SimpleITK (imported here: a NIfTI run never needs it) stores the array ``(K, J, I)``; it is returned
    transposed (a view). The header is read first and checked before the voxels are: :class:`InputError` naming
    ITK's reason for an unreadable file, and for an image that is not 3-D (trailing axes of length 1 are dropped,
    as for NIfTI: a 4-D file of one volume is that volume) or holds several values per voxel (RGB, vectors,
    complex numbers, or the layers of a 3D Slicer segmentation whose segments overlap: told how to export it as one
    label map); then for voxel data that cannot be read (a missing data file, a truncated or damaged file; a
    MetaImage's are measured first, :func:`_check_metaimage_data`).
    """
    import SimpleITK as sitk

    from svreg_core.image.image import three_d_shape

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{what}: cannot read {path} as an image (ITK: {_itk_reason(exc)}).") from None
    size, components = reader.GetSize(), reader.GetNumberOfComponents()
    if path.name.lower().endswith(".seg.nrrd") and (len(size) != 3 or components > 1):
        raise InputError(f"{what} is a 3D Slicer segmentation stored in layers (its segments overlap); export it as "
                         "one labelmap volume (Segmentations module: Export to files, or 'Export visible segments "
                         "to binary labelmap') and give that file.")
    shape = three_d_shape(size, what)
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if components != 1:
        raise InputError(f"{what} holds {components} values per voxel ({pixel}); a scalar "
                         "real-valued image is needed (not RGB, a vector field or complex).")
    if path.name.lower().endswith((".mha", ".mhd")):
        _check_metaimage_data(path, what, shape, reader.GetPixelID())
    try:
        itk = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{what}: the voxel data of {path} are missing, shorter than its header says or damaged "
                         f"(ITK: {_itk_reason(exc)}).") from None
    data = sitk.GetArrayFromImage(itk).reshape(shape[::-1]).transpose(2, 1, 0)
    dimension = len(size)
    direction = np.asarray(itk.GetDirection()).reshape(dimension, dimension)[:3, :3]
    return data, ras_affine_from_itk(direction, itk.GetSpacing()[:3], itk.GetOrigin()[:3])


def _check_metaimage_data(path: Path, what: str, shape: tuple[int, ...], pixel_id: int) -> None:
    """Refuse a MetaImage whose data file (``ElementDataFile``: the ``.mha`` itself after its header for ``LOCAL``,
    else a file beside the header) is missing or holds fewer bytes than its header declares (``CompressedDataSize``
    when compressed, else the voxels' size), with :class:`InputError`, before ITK reads it: ITK's MetaIO printed
    lines of its own and then reported a stale reason ("No such file or directory" for a truncated ``.mha``). A
    header naming several files, or data stored as text (``BinaryData = False``), passes (ITK reads it)."""
    import SimpleITK as sitk

    from svreg_core.image.io import _amount

    try:
        with open(path, "rb") as stream:
            head = stream.read(1 << 16)
    except OSError:
        return
    fields: dict[str, str] = {}
    offset = 0
    for line in head.splitlines(keepends=True):
        offset += len(line)
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    else:
        return  # no data file line in the first 64 KiB: left to ITK
    name = fields["elementdatafile"]
    if fields.get("binarydata", "true").lower() == "false":  # numbers as text: no size to compare
        return
    if name.upper() == "LOCAL":
        data = path
    elif not name or "%" in name or name.upper().startswith("LIST"):
        return
    else:
        data, offset = path.parent / name, 0
        if not data.is_file():
            raise InputError(f"{what}: its data file {name} is missing (it belongs beside {path.name}); copy it "
                             "there with the header.")
    try:
        header_size = int(fields.get("headersize", "0"))
        stored = data.stat().st_size - offset - max(header_size, 0)
        compressed = fields.get("compresseddata", "false").lower() == "true"
        declared = int(fields["compresseddatasize"]) if compressed and "compresseddatasize" in fields else None
    except (OSError, ValueError):
        return
    if compressed and declared is not None and stored < declared:
        raise InputError(f"{what}: its header declares {_amount(declared)} of compressed voxel data, more than its "
                         f"{'file' if data == path else 'data file ' + name} holds ({_amount(max(stored, 0))}); "
                         "the file is incomplete (an interrupted copy or download) or its header is damaged.")
    itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).dtype.itemsize
    needed = int(np.prod(shape, dtype=np.float64)) * itemsize
    if not compressed and stored < needed:
        sizes = " x ".join(str(n) for n in shape)
        raise InputError(f"{what}: its header declares {sizes} voxels of {sitk.GetPixelIDValueAsString(pixel_id)} "
                         f"({_amount(needed)}), more than its "
                         f"{'file' if data == path else 'data file ' + name} holds ({_amount(max(stored, 0))}); "
                         "the file is incomplete (an interrupted copy or download) or its header is damaged.")
