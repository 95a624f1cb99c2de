"""NRRD, MetaImage and DICOM series through :mod:`svreg_core.image.itk_io` (via ``load_image``/``save_image``):
hand-written NRRD headers and DICOM position/orientation tags, ITK's NIfTI reader and SimpleITK as referees,
refusals of series no voxel grid holds."""
from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pytest

from svreg_core.conventions import itk_geometry_from_ras_affine as sitk_geometry
from svreg_core.errors import InputError
from svreg_core.image import Image, load_image, save_image
from svreg_core.image.io import load_grid
from svreg_core.image.itk_io import find_dicom_series, is_dicom_file


def _affine(geo) -> np.ndarray:
    return geo.make_affine(geo.rotation([0.3, 1.0, -0.2], 17.0) @ np.diag([-1.2, 0.9, 2.5]), [40.0, -12.0, 3.5])


def _ramp(shape=(6, 7, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 10.0


#: An oblique 4x5x6 NRRD geometry, written by hand: voxel axes (columns) and origin in the file's ``space``.
_NRRD_AXES = np.array([[0.0, 1.2, 0.9], [-2.0, 0.0, 0.0], [0.0, -1.5, 2.0]]).T  # lengths 1.5, 2, 2.5 mm
_NRRD_ORIGIN = np.array([10.0, -20.0, 30.0])


def _hand_written_nrrd(tmp_path: Path, space: str, *, detached: bool = False) -> tuple[Path, np.ndarray]:
    """A NRRD file written byte by byte (no library), int16 voxels ``i + 4 j + 20 k``; returns it and the
    ``(I, J, K)`` array a reader must give."""
    stored = np.arange(120, dtype="<i2").reshape(6, 5, 4)  # the file's order: i fastest, then j, then k
    vectors = " ".join("(" + ",".join(f"{v:g}" for v in column) + ")" for column in _NRRD_AXES.T)
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: " + space + "\nsizes: 4 5 6\nspace directions: "
              + vectors + "\nkinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: ("
              + ",".join(f"{v:g}" for v in _NRRD_ORIGIN) + ")\n")
    if detached:
        (tmp_path / "vol.raw").write_bytes(stored.tobytes())
        path = tmp_path / "vol.nhdr"
        path.write_text(header + "data file: vol.raw\n")
    else:
        path = tmp_path / "vol.nrrd"
        path.write_bytes((header + "\n").encode() + stored.tobytes())
    return path, stored.transpose(2, 1, 0)


@pytest.mark.parametrize("space, flip", [("left-posterior-superior", [-1.0, -1.0, 1.0]),
                                         ("right-anterior-superior", [1.0, 1.0, 1.0])])
@pytest.mark.parametrize("detached", [False, True])
def test_hand_written_nrrd_reads_in_ras(tmp_path: Path, space: str, flip, detached: bool) -> None:
    """The voxel axes and origin of a NRRD header, converted by hand to RAS (x and y negated for an LPS file),
    are the affine; the voxel ``(i, j, k)`` is the file's ``i + 4 j + 20 k``-th value, as intensities (float32)
    and as labels (int32)."""
    path, expected = _hand_written_nrrd(tmp_path, space, detached=detached)
    image = load_image(path)
    ras = np.diag(flip)
    np.testing.assert_allclose(image.affine[:3, :3], ras @ _NRRD_AXES, atol=1e-12)
    np.testing.assert_allclose(image.affine[:3, 3], ras @ _NRRD_ORIGIN, atol=1e-12)
    assert image.data.dtype == np.float32 and image.shape == (4, 5, 6)
    np.testing.assert_array_equal(image.data, expected)
    assert image.data[3, 1, 2] == 3 + 4 * 1 + 20 * 2
    labels = load_image(path, labels=True)
    assert labels.data.dtype == np.int32
    np.testing.assert_array_equal(labels.data, expected)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_read_like_the_nifti_they_were_made_from(geo, tmp_path: Path, suffix: str) -> None:
    """An oblique, flipped, anisotropic NIfTI (written by nibabel) that ITK converts to NRRD / MetaImage reads back
    with the same voxels and RAS affine: ITK's NIfTI reader is the referee of the LPS-to-RAS conversion."""
    import SimpleITK as sitk

    data = _ramp((6, 7, 8)) + 1.0
    nifti = save_image(Image(data, _affine(geo)), tmp_path / "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(tmp_path / f"a{suffix}"))
    image, reference = load_image(tmp_path / f"a{suffix}"), load_image(nifti)
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
    np.testing.assert_array_equal(image.data, reference.data)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_files_written_hold_the_lps_geometry(geo, tmp_path: Path, suffix: str) -> None:
    """``save_image`` to NRRD / MetaImage: SimpleITK reads the LPS origin and axes of the RAS affine negated in x
    and y by hand, and the voxel ``(i, j, k)`` at ITK index ``(i, j, k)``; labels keep their integer type, the
    gzip level only changes the file size."""
    import SimpleITK as sitk

    affine = _affine(geo)
    data = _ramp((6, 7, 8))
    path = save_image(Image(data, affine), tmp_path / f"a{suffix}")
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.GetOrigin(), [-affine[0, 3], -affine[1, 3], affine[2, 3]], atol=1e-9)
    axes = np.asarray(itk.GetDirection()).reshape(3, 3) * np.asarray(itk.GetSpacing())
    np.testing.assert_allclose(axes, np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3], atol=1e-9)
    assert itk.GetSize() == (6, 7, 8) and itk.GetPixel(4, 1, 5) == data[4, 1, 5]
    back = load_image(path)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-9)

    labels = (data > 20).astype(np.int32) * 7
    stored = save_image(Image(labels, affine), tmp_path / f"l{suffix}", dtype=np.int32, gzip_level=0)
    packed = save_image(Image(labels, affine), tmp_path / f"p{suffix}", dtype=np.int32, gzip_level=9)
    assert sitk.ReadImage(str(stored)).GetPixelID() == sitk.sitkInt32
    size = (lambda p: sum(f.stat().st_size for f in tmp_path.glob(p.stem + ".*")))  # noqa: E731 (with data file)
    assert size(packed) < size(stored)
    for written in (stored, packed):
        np.testing.assert_array_equal(load_image(written, labels=True).data, labels)


def _dicom_volume(geo) -> tuple[np.ndarray, np.ndarray]:
    """An int16 7x6x5 volume (values -1000 to 1099, as CT) on an oblique, anisotropic (0.7 x 0.8 x 2.5 mm) grid."""
    affine = geo.make_affine(geo.rotation([0.2, -1.0, 0.4], 23.0) @ np.diag([0.7, 0.8, 2.5]), [-40.0, 12.5, 80.0])
    data = (np.arange(7 * 6 * 5).reshape(7, 6, 5) * 11 - 1000).astype(np.int16)
    return data, affine


def test_dicom_series_folder_reads_in_ras(geo, tmp_path: Path) -> None:
    """A folder of DICOM slices (tags written by hand from the RAS affine, files in no particular order) reads as
    the volume: voxels in ``(i, j, k)`` order and the RAS affine, both as an image and as labels."""
    data, affine = _dicom_volume(geo)
    folder = geo.dicom_series(tmp_path / "ct", data, affine)
    for k, path in enumerate(sorted(folder.iterdir())):  # names no longer follow the slice order
        path.rename(folder / f"{(k * 3) % 5}.dcm")
    before = locale.setlocale(locale.LC_ALL)
    image = load_image(folder, name="fixed image")
    assert locale.setlocale(locale.LC_ALL) == before  # reading DICOM leaves the process locale alone
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(image.data, data)
    positive = geo.dicom_series(tmp_path / "seg", (data > 0).astype(np.int16) * 3, affine)
    labels = load_image(positive, labels=True)
    assert labels.data.dtype == np.int32
    np.testing.assert_array_equal(labels.data, (data > 0) * 3)


def test_a_dicom_file_reads_its_series(geo, tmp_path: Path) -> None:
    """In a folder holding two series (a study exported as it is), one file of a series reads that series, whether
    the file has a ``.dcm`` ending or none (recognised by its ``DICM`` marker); the folder itself is refused with
    each series described and a file to give instead."""
    data, affine = _dicom_volume(geo)
    shifted = geo.make_affine(affine[:3, :3], affine[:3, 3] + [5.0, 0.0, 0.0])
    folder = geo.dicom_series(tmp_path / "study", data, affine, description="CT head")
    geo.dicom_series(folder, data[::-1] + 7, shifted, series="1.2.826.0.1.3680043.8.498.2", description="CT late")
    first = sorted(folder.glob("1.2.826.0.1.3680043.8.498.1.*"))
    second = sorted(folder.glob("1.2.826.0.1.3680043.8.498.2.*"))
    bare = second[3].rename(folder / "IM0004")  # no ending, as DICOMDIR exports name files
    assert is_dicom_file(bare) and is_dicom_file(first[0]) and not is_dicom_file(folder / "missing.nii.gz")
    for path, want, want_affine in ((first[2], data, affine), (bare, data[::-1] + 7, shifted)):
        image = load_image(path, name="moving image")
        np.testing.assert_array_equal(image.data, want)
        np.testing.assert_allclose(image.affine, want_affine, atol=1e-5)
    (series,) = find_dicom_series(bare)
    assert (series.description, series.modality, len(series.files)) == ("CT late", "CT", 5)
    with pytest.raises(InputError) as info:
        load_image(folder, name="moving image")
    message = str(info.value)
    assert "\n" not in message and "holds 2 DICOM series ('CT head' (CT, 5 files, e.g. " in message
    assert "'CT late' (CT, 5 files, e.g. " in message and "give one file of the series to read" in message


def test_a_file_named_dicom_that_is_not_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "slice.dcm"
    fake.write_bytes(b"not a DICOM file" * 20)
    with pytest.raises(InputError) as info:
        load_image(fake, name="fixed image")
    message = str(info.value)
    assert message.startswith("fixed image: cannot read the DICOM series of") and "\n" not in message


@pytest.mark.parametrize("case, words", [
    ("missing slice", "not evenly spaced (steps 2.5 to 5 mm"),
    ("gantry tilt", "shift sideways by up to 0.4 mm per slice (gantry tilt)"),
    ("two series", "holds 2 DICOM series"),
    ("no DICOM", "is a folder without a DICOM series"),
])
def test_unusable_dicom_folders_are_refused(geo, tmp_path: Path, case: str, words: str) -> None:
    data, affine = _dicom_volume(geo)
    folder = tmp_path / "series"
    if case == "missing slice":
        geo.dicom_series(folder, data, affine, skip=(2,))
    elif case == "gantry tilt":
        geo.dicom_series(folder, data, affine, tilt_mm=0.4)
    elif case == "two series":
        geo.dicom_series(folder, data, affine)
        geo.dicom_series(folder, data, affine, series="1.2.826.0.1.3680043.8.498.2")
    else:
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    with pytest.raises(InputError) as info:
        load_image(folder, name="moving image")
    message = str(info.value)
    assert message.startswith("moving image") and "\n" not in message
    assert words in message, message


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_a_4d_itk_file_of_one_volume_reads_as_that_volume(geo, tmp_path: Path, suffix: str) -> None:
    """A 4-D NRRD / MetaImage whose 4th axis has length 1 (an oblique volume exported as a one-frame series) reads
    as the 3-D volume with the geometry of its first three axes, as a NIfTI of that shape does (it was refused as
    not 3-D); one of two frames is still refused, from its header."""
    import SimpleITK as sitk

    affine = _affine(geo)
    data = _ramp((6, 7, 8))
    direction, spacing, origin = (np.asarray(v) for v in sitk_geometry(affine))
    four = np.eye(4)
    four[:3, :3] = direction.reshape(3, 3)
    for frames in (1, 2):
        itk = sitk.GetImageFromArray(np.stack([data.transpose(2, 1, 0)] * frames), isVector=False)
        itk.SetDirection(four.ravel().tolist())
        itk.SetSpacing([*spacing.tolist(), 1.0])
        itk.SetOrigin([*origin.tolist(), 0.0])
        sitk.WriteImage(itk, str(tmp_path / f"f{frames}{suffix}"))
    image = load_image(tmp_path / f"f1{suffix}")
    np.testing.assert_array_equal(image.data, data)
    np.testing.assert_allclose(image.affine, affine, atol=1e-9)
    with pytest.raises(InputError, match=r"must be a 3-D image; it has 4 dimensions \(6, 7, 8, 2\)"):
        load_image(tmp_path / f"f2{suffix}")


def test_the_current_folder_is_named_after_itself(tmp_path: Path, monkeypatch) -> None:
    """``svreg info .`` inside a folder: the image had no name (``: . is a folder without a DICOM series``)."""
    folder = tmp_path / "ct_series"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for read in (load_image, load_grid):
        with pytest.raises(InputError) as info:
            read(".")
        assert str(info.value).startswith("ct_series: . is a folder without a DICOM series")


@pytest.mark.parametrize("case", ["truncated", "compressed", "data file missing"])
def test_an_incomplete_metaimage_is_one_plain_line(tmp_path: Path, capfd, case: str) -> None:
    """A truncated ``.mha`` (an interrupted copy) or a ``.mhd`` without its ``.raw``: ITK's MetaIO printed lines of its
    own ("M_ReadElementsData: data not read completely"), then svreg's error gave ITK's stale reason "No such file
    or directory" for a file that is there; the data are now measured first, and the one line says what is wrong."""
    name = "image.mhd" if case == "data file missing" else "image.mha"
    level = 6 if case == "compressed" else 0
    path = save_image(Image(_ramp((20, 21, 22)), np.eye(4)), tmp_path / name, gzip_level=level)
    if case == "data file missing":
        (tmp_path / "image.raw").unlink()
    else:
        path.write_bytes(path.read_bytes()[:-500])
    capfd.readouterr()
    for read in (load_image, load_grid):
        with pytest.raises(InputError) as info:
            read(path)
        message = str(info.value)
        assert "\n" not in message and "No such file" not in message
        assert message.startswith({"truncated": "image.mha: its header declares 20 x 21 x 22 voxels of 32-bit float "
                                                "(36960 bytes), more than its file holds (36460 bytes)",
                                   "compressed": "image.mha: its header declares ",
                                   "data file missing": "image.mhd: its data file image.raw is missing"}[case]), message
        assert case == "data file missing" or "the file is incomplete" in message
    assert capfd.readouterr().err == ""


def test_a_metaimage_with_its_voxels_as_text_is_read(tmp_path: Path) -> None:
    """``BinaryData = False``: the voxels are numbers as text, fewer bytes than binary; they are not measured."""
    path = tmp_path / "text.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nBinaryData = False\nDimSize = 2 2 2\nElementType = MET_FLOAT\n"
                    "ElementDataFile = LOCAL\n0 1 2 3 4 5 6 7\n")
    np.testing.assert_array_equal(load_image(path).data, np.arange(8.0).reshape(2, 2, 2).transpose(2, 1, 0))


def test_a_study_folder_names_its_sub_folders_of_dicom_files(geo, tmp_path: Path) -> None:
    """A patient or study folder (the series one level down) was refused as a folder without a DICOM series, with no
    hint; the message now names the sub-folders holding DICOM files."""
    data, affine = _dicom_volume(geo)
    geo.dicom_series(tmp_path / "study" / "2_T1", data, affine)
    geo.dicom_series(tmp_path / "study" / "3_CT", data, affine)
    (tmp_path / "study" / "notes").mkdir()
    (tmp_path / "study" / "notes" / "a.txt").write_text("no images here")
    with pytest.raises(InputError) as info:
        load_image(tmp_path / "study", name="moving image")
    message = str(info.value)
    assert "\n" not in message and "is a folder without a DICOM series" in message
    assert "(its sub-folders 2_T1, 3_CT hold DICOM files: give the one of the series to read" in message



def _image_position(raw: bytes) -> tuple[int, int]:
    """Where the value of the Image Position tag (0020,0032) lies in a DICOM file written by GDCM (implicit VR:
    the tag, a 4-byte length, the value)."""
    at = raw.index(b"\x20\x00\x32\x00", 132) + 8
    return at, at + int.from_bytes(raw[at - 4:at], "little")


def test_a_damaged_slice_position_is_one_plain_line(geo, tmp_path: Path) -> None:
    """An Image Position tag that is not three numbers ("-12.5\\?\\30", a damaged header) ended in a ValueError
    traceback; it is now refused in one line naming the file and the tag."""
    data, affine = _dicom_volume(geo)
    folder = geo.dicom_series(tmp_path / "series", data, affine)
    damaged = sorted(folder.iterdir())[1]
    raw = bytearray(damaged.read_bytes())
    start, _ = _image_position(raw)
    raw[raw.index(b"\\", start) + 1] = ord("?")  # the second number's first character
    damaged.write_bytes(bytes(raw))
    with pytest.raises(InputError) as info:
        load_image(folder, name="moving image")
    message = str(info.value)
    assert message.startswith(f"moving image: DICOM file {damaged.name} has an unreadable image position "
                              "(0020,0032): '")
    assert "not 3 numbers; its header is damaged" in message and "\n" not in message


def test_slice_positions_rounded_in_their_tags_read_without_itk_warnings(geo, tmp_path: Path, capfd) -> None:
    """A slice position a few micrometres off (positions rounded by the scanner or an export) is within svreg's
    tolerance, yet ITK printed its three-line "Non uniform sampling or missing slices detected" warning."""
    data, affine = _dicom_volume(geo)
    folder = geo.dicom_series(tmp_path / "series", data, affine)
    nudged = sorted(folder.iterdir())[2]
    raw = bytearray(nudged.read_bytes())
    start, end = _image_position(raw)
    digit = raw.index(b".", raw.rindex(b"\\", start, end)) + 3
    raw[digit] = ord(str((int(chr(raw[digit])) + 5) % 10))  # the last coordinate 0.005 mm off or so
    nudged.write_bytes(bytes(raw))
    capfd.readouterr()
    image = load_image(folder)
    assert image.shape == data.shape
    assert capfd.readouterr().err == ""
