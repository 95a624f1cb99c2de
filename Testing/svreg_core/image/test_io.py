"""NIfTI round trips (checked with nibabel), NRRD / MetaImage reading (hand-written headers; ITK's NIfTI reader
as referee) and the plain one-line errors of unusable inputs."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svreg_core.errors import InputError, OutputError
from svreg_core.image import Image, load_image, save_image, validate_image
from svreg_core.image.io import image_stem, load_grid


def _affine(geo) -> np.ndarray:
    return geo.make_affine(geo.rotation([0.3, 1.0, -0.2], 17.0) @ np.diag([-1.2, 0.9, 2.5]), [40.0, -12.0, 3.5])


def _ramp(shape=(6, 7, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 10.0


def test_save_then_nibabel_reads_same_affine_and_data(geo, tmp_path: Path) -> None:
    aff = _affine(geo)
    data = _ramp()
    path = save_image(Image(data, aff), tmp_path / "a.nii.gz")
    nii = nib.load(str(path))
    np.testing.assert_allclose(nii.affine, aff, atol=1e-5)
    np.testing.assert_allclose(nii.get_sform(), aff, atol=1e-5)
    np.testing.assert_allclose(nii.get_qform(), aff, atol=1e-4)  # qform holds a rotation + zooms only
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(nii.dataobj), data)
    back = load_image(path)
    assert back.data.dtype == np.float32 and back.shape == data.shape
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)


@pytest.mark.parametrize("name", ["out.nii.gz", "out.nii", "out.nrrd", "out.mha", "out.mhd", "out.nhdr"])
def test_an_interrupted_save_leaves_the_earlier_file_as_it_was(tmp_path: Path, monkeypatch, name: str) -> None:
    """A Ctrl-C once the voxels are written but before the file is complete (``svreg apply --overwrite``): the
    earlier file (a detached header: and its data file) is untouched and nothing else is left; then the same
    save completes."""
    from svreg_core.image import io

    path = save_image(Image(_ramp(), np.eye(4)), tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    writer = "save_nifti" if name.endswith((".nii", ".nii.gz")) else "write_itk_image"
    write = getattr(io, writer)

    def write_then_interrupt(*args, **kwargs):
        write(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(io, writer, write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_image(Image(2 * _ramp(), np.eye(4)), path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    save_image(Image(2 * _ramp(), np.eye(4)), path)
    np.testing.assert_array_equal(load_image(path).data, 2 * _ramp())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


@pytest.mark.parametrize(("name", "stored", "compressed"), [("out.mhd", "out.raw", "out.zraw"),
                                                             ("out.nhdr", "out.raw", "out.raw.gz")])
def test_a_detached_header_replaced_with_other_compression_leaves_no_stale_data_file(
        tmp_path: Path, name: str, stored: str, compressed: str) -> None:
    path = save_image(Image(_ramp(), np.eye(4)), tmp_path / name, gzip_level=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, compressed])
    save_image(Image(2 * _ramp(), np.eye(4)), path, gzip_level=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, stored])
    np.testing.assert_array_equal(load_image(path).data, 2 * _ramp())


@pytest.mark.parametrize("name", ["my scan.nhdr", "my scan.mhd"])
def test_a_detached_header_of_a_name_with_spaces_is_rewritten_with_its_data_file(tmp_path: Path, name: str) -> None:
    path = save_image(Image(_ramp(), np.eye(4)), tmp_path / name, gzip_level=0)
    save_image(Image(2 * _ramp(), np.eye(4)), path, gzip_level=0)
    save_image(Image(3 * _ramp(), np.eye(4)), path, gzip_level=6)
    assert len(list(tmp_path.iterdir())) == 2  # the header and its compressed data file
    np.testing.assert_array_equal(load_image(path).data, 3 * _ramp())


def test_a_detached_header_never_replaces_or_removes_another_images_data_file(tmp_path: Path) -> None:
    """``svreg apply OUT x.mhd -o x.nhdr --overwrite``: ``x.raw`` is the input's data; writing ``x.nhdr``
    (compressed: ``x.raw.gz``) removed it as a stale file of the other compression, and uncompressed replaced it."""
    source = save_image(Image(_ramp(), np.eye(4)), tmp_path / "x.mhd", gzip_level=0)
    before = (tmp_path / "x.raw").read_bytes()
    with pytest.raises(OutputError, match=r"x\.nhdr: its data file would replace .*x\.raw, the data of x\.mhd; name"):
        save_image(Image(2 * _ramp(), np.eye(4)), tmp_path / "x.nhdr", gzip_level=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mhd", "x.raw"]
    save_image(Image(2 * _ramp(), np.eye(4)), tmp_path / "x.nhdr", gzip_level=1)
    assert (tmp_path / "x.raw").read_bytes() == before
    np.testing.assert_array_equal(load_image(source).data, _ramp())
    np.testing.assert_array_equal(load_image(tmp_path / "x.nhdr").data, 2 * _ramp())
    source.unlink()  # x.raw is now no image's data: written over, then removed as stale
    save_image(Image(3 * _ramp(), np.eye(4)), tmp_path / "x.nhdr", gzip_level=0)
    save_image(Image(4 * _ramp(), np.eye(4)), tmp_path / "x.nhdr", gzip_level=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nhdr", "x.raw.gz"]


def test_save_through_a_symbolic_link_replaces_its_target(tmp_path: Path) -> None:
    target = save_image(Image(_ramp(), np.eye(4)), tmp_path / "target.nii.gz")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(target)
    save_image(Image(3 * _ramp(), np.eye(4)), link)
    assert link.is_symlink() and link.resolve() == target
    np.testing.assert_array_equal(load_image(target).data, 3 * _ramp())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.nii.gz", "target.nii.gz"]


def test_save_with_dtype_and_load_labels(geo, tmp_path: Path) -> None:
    labels = np.zeros((5, 6, 7), np.float32)
    labels[1:3, 2:4, 3:6] = 2.0
    labels[3, 4, 5] = 7.0000001
    path = save_image(Image(labels, np.eye(4)), tmp_path / "l.nii.gz", dtype=np.int16)
    assert nib.load(str(path)).get_data_dtype() == np.int16
    back = load_image(path, labels=True)
    assert back.data.dtype == np.int32
    np.testing.assert_array_equal(back.data, np.rint(labels).astype(np.int32))
    # float storage noise (well below 1e-3) is rounded away; anything else is refused (below)
    float_labels = geo.save_nifti(labels + 2e-4, np.eye(4), tmp_path / "f.nii.gz")
    np.testing.assert_array_equal(load_image(float_labels, labels=True).data, np.rint(labels))


def _label_file(tmp_path: Path, name: str, value, dtype) -> Path:
    data = np.zeros((4, 5, 6), dtype)
    data[1:3, 1:3, 1:3] = 1
    data[2, 3, 4] = value
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4), dtype=dtype), str(path))  # int64 needs an explicit dtype
    return path


@pytest.mark.parametrize("value, dtype, words", [
    (2.6, np.float32, "not whole numbers (e.g. 2.6)"),  # rounding would merge it into label 3
    (2.5, np.float64, "not whole numbers (e.g. 2.5)"),
    (2**33 + 17, np.int64, "label 8589934609, above the largest"),  # int32 would wrap it to 17
    (2**31, np.uint32, "label 2147483648, above the largest"),
    (3e10, np.float64, "label 30000000000, above the largest"),
    (-1, np.int16, "negative labels (e.g. -1)"),
    (-2.0, np.float32, "negative labels (e.g. -2)"),
])
def test_label_values_that_would_change_are_refused(tmp_path: Path, value, dtype, words: str) -> None:
    path = _label_file(tmp_path, "seg.nii.gz", value, dtype)
    with pytest.raises(InputError) as info:
        load_image(path, labels=True, name="moving labels")
    message = str(info.value)
    assert message.startswith("moving labels (seg.nii.gz) ") and "\n" not in message, message
    assert words in message, message


def test_label_values_kept_exactly(tmp_path: Path) -> None:
    """The largest int32 label, large integer-valued floats and booleans load unchanged."""
    top = load_image(_label_file(tmp_path, "top.nii.gz", 2**31 - 1, np.int64), labels=True)
    assert top.data.dtype == np.int32 and int(top.data.max()) == 2**31 - 1
    big = load_image(_label_file(tmp_path, "big.nii.gz", 40000.0, np.float32), labels=True)
    assert sorted(np.unique(big.data)) == [0, 1, 40000]
    mask = load_image(_label_file(tmp_path, "mask.nii.gz", True, np.uint8), labels=True)
    assert sorted(np.unique(mask.data)) == [0, 1]


def test_qform_only_file_uses_qform(geo, tmp_path: Path) -> None:
    aff = geo.make_affine(geo.rotation([0, 0, 1], 30.0) @ np.diag([2.0, 2.0, 3.0]), [5.0, 6.0, 7.0])
    nii = nib.Nifti1Image(_ramp(), None)
    nii.set_qform(aff, code=1)
    nii.set_sform(None, code=0)
    nib.save(nii, str(tmp_path / "q.nii"))
    np.testing.assert_allclose(load_image(tmp_path / "q.nii").affine, aff, atol=1e-5)


def test_singleton_fourth_axis_is_squeezed(tmp_path: Path) -> None:
    data = _ramp()[..., None]
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "s.nii.gz"))
    img = load_image(tmp_path / "s.nii.gz")
    assert img.shape == (6, 7, 8) and img.data.ndim == 3


def _write(tmp_path: Path, name: str, data: np.ndarray, affine=None) -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    ok = _ramp((20, 20, 20))
    nan, inf = ok.copy(), ok.copy()
    nan[3, 4, 5] = np.nan
    inf[1, 1, 1] = -np.inf
    raw = tmp_path / "ok.nii"
    nib.save(nib.Nifti1Image(ok, np.eye(4)), str(raw))
    body = raw.read_bytes()
    (tmp_path / "truncated.nii").write_bytes(body[: len(body) // 2])
    with gzip.open(tmp_path / "truncated.nii.gz", "wb") as f:
        f.write(body[: len(body) // 2])
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all " * 20)
    (tmp_path / "zero_bytes.nii").write_bytes(b"")
    (tmp_path / "folder.nii.gz").mkdir()
    singular = nib.Nifti1Image(ok, None)
    singular.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # a zero voxel size along j
    nib.save(singular, str(tmp_path / "singular.nii.gz"))
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    surface = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(ok[:, :, 0].ravel().astype(np.float32))])
    nib.save(surface, str(tmp_path / "surface.gii"))
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(ok[:, :, 0]), str(tmp_path / "flat.nrrd"))
    volume = sitk.GetImageFromArray(ok)
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(tmp_path / "series.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([ok, ok, ok], -1), isVector=True), str(tmp_path / "vector.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray((ok + 1j * ok).astype(np.complex64)), str(tmp_path / "complex.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([ok > 5, ok > 9], -1).astype(np.uint8), isVector=True),
                    str(tmp_path / "layers.seg.nrrd"))
    for suffix in (".nrrd", ".mha"):  # the header whole, half the voxels
        sitk.WriteImage(volume, str(tmp_path / f"whole{suffix}"))
        itk_body = (tmp_path / f"whole{suffix}").read_bytes()
        (tmp_path / f"truncated{suffix}").write_bytes(itk_body[: len(itk_body) - ok.nbytes // 2])
    (tmp_path / "junk.mha").write_bytes(b"not an image at all " * 20)
    with gzip.open(tmp_path / "gzipped.nrrd.gz", "wb") as f:  # a whole, valid NRRD, gzipped as a file
        f.write((tmp_path / "whole.nrrd").read_bytes())
    return {
        "NRRD 2-D": (tmp_path / "flat.nrrd", "3-D image; it has 2 dimensions"),
        "NRRD 4-D": (tmp_path / "series.nrrd", "3-D image; it has 4 dimensions"),
        "NRRD vector": (tmp_path / "vector.nrrd", "3 values per voxel"),
        "MetaImage complex": (tmp_path / "complex.mha", "2 values per voxel"),
        "MetaImage NaN": (tmp_path / "nan.mha", "NaN"),
        "NRRD truncated": (tmp_path / "truncated.nrrd", "are missing, shorter than its header says"),
        "MetaImage truncated": (tmp_path / "truncated.mha", "holds (16000 bytes); the file is incomplete"),
        "MetaImage corrupt": (tmp_path / "junk.mha", "cannot read"),
        "NRRD missing": (tmp_path / "nowhere.nrrd", "not found"),
        "gzipped NRRD": (tmp_path / "gzipped.nrrd.gz", "gzipped NRRD file, which svreg does not read: decompress"),
        "Slicer segmentation layers": (tmp_path / "layers.seg.nrrd", "export it as one labelmap volume"),
        "2-D": (_write(tmp_path, "flat.nii.gz", ok[:, :, 0]), "3-D"),
        "4-D": (_write(tmp_path, "series.nii.gz", np.stack([ok, ok], axis=-1)), "3-D"),
        "degenerate": (_write(tmp_path, "slab.nii.gz", ok[:, :, :1]), "at least 2 voxels"),
        "NaN": (_write(tmp_path, "nan.nii.gz", nan), "NaN"),
        "Inf": (_write(tmp_path, "inf.nii.gz", inf), "infinite"),
        "beyond float32": (_write(tmp_path, "huge.nii.gz", ok.astype(np.float64) * 1e37),
                           "holds voxel values up to 8e+39, beyond the range of the 32-bit floats"),
        "constant": (_write(tmp_path, "empty.nii.gz", np.full((5, 5, 5), 3.0, np.float32)), "empty"),
        "zeros": (_write(tmp_path, "zeros.nii.gz", np.zeros((5, 5, 5), np.int16)), "empty"),
        "singular affine": (tmp_path / "singular.nii.gz", "affine"),
        "RGB": (_write(tmp_path, "rgb.nii.gz", rgb), "voxel type"),
        "complex": (_write(tmp_path, "complex.nii.gz", (ok + 1j * ok).astype(np.complex64)), "voxel type"),
        "truncated": (tmp_path / "truncated.nii", "the file is incomplete"),
        "truncated gz": (tmp_path / "truncated.nii.gz", "cannot read"),
        "corrupt": (tmp_path / "junk.nii.gz", "cannot read"),
        "zero bytes": (tmp_path / "zero_bytes.nii", "cannot read"),
        "GIFTI surface": (tmp_path / "surface.gii", "GiftiImage is not a volume"),
        "missing": (tmp_path / "nowhere.nii.gz", "not found"),
        "a folder": (tmp_path / "folder.nii.gz", "is a folder without a DICOM series"),
    }


BAD = ["2-D", "4-D", "degenerate", "NaN", "Inf", "beyond float32", "constant", "zeros", "singular affine", "RGB",
       "complex", "truncated", "truncated gz", "corrupt", "zero bytes", "GIFTI surface", "missing", "a folder",
       "NRRD 2-D", "NRRD 4-D", "NRRD vector", "MetaImage complex", "MetaImage NaN", "NRRD truncated",
       "MetaImage truncated", "MetaImage corrupt", "NRRD missing", "gzipped NRRD", "Slicer segmentation layers"]


@pytest.mark.parametrize("case", BAD)
def test_unusable_image_gives_one_line_input_error(case: str, tmp_path: Path) -> None:
    path, words = _bad_files(tmp_path)[case]
    with pytest.raises(InputError) as info:
        load_image(path, name="moving image")
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert message.startswith("moving image"), message
    assert words in message, message
    assert "Traceback" not in message and len(message) < 300


def test_freesurfer_mgz_volume_loads_with_its_affine(geo, tmp_path: Path) -> None:
    """A FreeSurfer ``.mgz`` (no sform or qform: nothing to disagree) loads with the affine nibabel reads."""
    affine = geo.make_affine(np.diag([-1.0, 1.0, 1.2]) @ np.eye(3)[[0, 2, 1]], [128.0, -128.0, 100.0])
    data = _ramp((12, 10, 8)).astype(np.float32)
    nib.save(nib.MGHImage(data, affine), str(tmp_path / "brain.mgz"))
    image = load_image(tmp_path / "brain.mgz")
    np.testing.assert_allclose(image.affine, nib.load(str(tmp_path / "brain.mgz")).affine)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(image.data, data)


@pytest.mark.parametrize("name", ["out.txt", "out.mgz", "out.nii.gz.bak", "nrrd"])
def test_unwritable_image_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"end its name in \.nii\.gz, \.nii, \.nrrd, \.nhdr, \.mha or \.mhd"):
        save_image(Image(_ramp(), np.eye(4)), tmp_path / name)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name, stem", [("sub01.nii.gz", "sub01"), ("sub01.NII", "sub01"), ("a.b.nrrd", "a.b"),
                                        ("vol.nhdr", "vol"), ("ct.MHA", "ct"), ("ct.mhd", "ct"), ("t1.mgz", "t1"),
                                        ("vol.raw", None), ("notes.txt", None), ("nii.gz", None)])
def test_image_stem(name: str, stem: str | None) -> None:
    assert image_stem(name) == stem


def test_label_maps_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no non-zero label"):
        load_image(_write(tmp_path, "l0.nii.gz", np.zeros((4, 4, 4), np.int16)), labels=True, name="labels")
    nan = np.ones((4, 4, 4), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_image(_write(tmp_path, "ln.nii.gz", nan), labels=True, name="labels")
    # a constant non-zero label map (a mask) is fine
    assert load_image(_write(tmp_path, "l1.nii.gz", np.ones((4, 4, 4), np.uint8)), labels=True).data.sum() == 64


def test_validate_image_in_memory() -> None:
    img = validate_image(Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4)[..., None, None], np.eye(4)), "x")
    assert img.shape == (2, 3, 4) and img.data.dtype == np.float32
    with pytest.raises(InputError, match="x must be a 3-D image"):
        validate_image(Image(np.ones((4, 4, 4, 3)), np.eye(4)), "x")
    with pytest.raises(InputError, match="affine"):
        validate_image(Image(np.arange(27.0).reshape(3, 3, 3), np.full((4, 4), np.nan)), "x")


# ------------------------------------------------------------------------------- sform / qform


def _forms_file(path: Path, data: np.ndarray, sform: np.ndarray | None, qform: np.ndarray | None) -> Path:
    """A NIfTI with the given sform and qform (``None``: that one unset, code 0), written by nibabel; with only the
    sform, ``pixdim`` holds its voxel sizes (as a qform would), as the files of programs that write one do."""
    nii = nib.Nifti1Image(data, None)
    nii.set_sform(sform, code=0 if sform is None else 1)
    nii.set_qform(qform, code=0 if qform is None else 1)
    if sform is not None and qform is None:
        nii.header.set_zooms(tuple(np.linalg.norm(sform[:3, :3], axis=0)))
    nib.save(nii, str(path))
    return path


def _corner_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance between where ``a`` and ``b`` put the outer voxel corners (independent of svreg)."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    return max(np.linalg.norm(nib.affines.apply_affine(a, c) - nib.affines.apply_affine(b, c)) for c in corners)


def test_sheared_sform_with_other_qform_is_refused(geo, tmp_path: Path) -> None:
    """The issue's case: a sheared sform, whose qform (no shear) ITK / SimpleITK read instead."""
    data = _ramp((20, 22, 18))
    sheared = geo.make_affine(np.array([[2.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 2.5]]), [-20.0, 10.0, 5.0])
    nii = nib.Nifti1Image(data, None)
    nii.set_sform(sheared, code=1)
    nii.set_qform(sheared, code=1)  # nibabel drops the shear: the qform differs
    path = tmp_path / "sheared.nii.gz"
    nib.save(nii, str(path))
    stored_q = nib.load(str(path)).get_qform()
    expected = _corner_distance(sheared, stored_q, data.shape)
    assert expected > 5.0
    import SimpleITK as sitk

    # SimpleITK places the image by the qform: its first voxel is where the qform, not the sform, puts it
    origin_lps = np.array(sitk.ReadImage(str(path)).GetOrigin())
    np.testing.assert_allclose(origin_lps * [-1, -1, 1], stored_q[:3, 3], atol=1e-3)
    with pytest.raises(InputError) as info:
        load_image(path, name="moving image")
    message = str(info.value)
    assert "\n" not in message and message.startswith("moving image (sheared.nii.gz)")
    assert "sform" in message and "qform" in message and "fslorient" in message
    assert f"{expected:.3g} mm" in message


def test_sform_qform_tolerance_and_single_forms(geo, tmp_path: Path) -> None:
    data = _ramp((10, 12, 14))
    aff = geo.make_affine(geo.rotation([0.2, 1.0, 0.4], 25.0) @ np.diag([1.5, 1.5, 3.0]), [3.0, -4.0, 8.0])
    near, far = aff.copy(), aff.copy()
    near[:3, 3] += [0.1, 0.0, 0.0]   # 0.1 mm: within 10 % of the 1.5 mm voxel (float storage noise)
    far[:3, 3] += [0.0, 0.2, 0.0]    # 0.2 mm: more than 10 % of a voxel
    np.testing.assert_allclose(load_image(_forms_file(tmp_path / "near.nii", data, aff, near)).affine, aff,
                               atol=1e-4)  # the sform
    with pytest.raises(InputError, match=r"sform and qform place the image up to 0\.2 mm apart"):
        load_image(_forms_file(tmp_path / "far.nii", data, aff, far))
    # only one of them set: that one is used, whatever the other holds
    sheared = aff.copy()
    sheared[0, 1] += 0.8
    only_s = _forms_file(tmp_path / "only_s.nii", data, sheared, None)
    np.testing.assert_allclose(load_image(only_s).affine, sheared, atol=1e-5)
    only_q = _forms_file(tmp_path / "only_q.nii", data, None, far)
    np.testing.assert_allclose(load_image(only_q).affine, far, atol=1e-4)


def test_an_sform_only_nifti_whose_pixdim_disagrees_is_refused(tmp_path: Path) -> None:
    """Only the sform set, with other voxel sizes than ``pixdim`` (here left at nibabel's 1 mm by ``set_sform``):
    svreg read the sform's 2, 3, 4 mm, SimpleITK (the referee, as Slicer) spaces the voxels by ``pixdim``, so the
    image had another size there; one plain line. Within a tenth of a voxel over the image, it loads."""
    import SimpleITK as sitk

    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 20.0]
    data = _ramp((10, 12, 14))
    nii = nib.Nifti1Image(data, None)
    nii.set_sform(affine, code=1)
    nib.save(nii, str(tmp_path / "scaled.nii.gz"))
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "unexpected scales in sform"
    try:
        assert sitk.ReadImage(str(tmp_path / "scaled.nii.gz")).GetSpacing() == (1.0, 1.0, 1.0)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)
    for read in (load_image, load_grid):
        with pytest.raises(InputError) as info:
            read(tmp_path / "scaled.nii.gz", name="fixed image")
        message = str(info.value)
        assert message.startswith("fixed image (scaled.nii.gz): its sform gives voxel sizes 2, 3, 4 mm but its "
                                  "pixdim 1, 1, 1 mm") and "fslorient -copysform2qform" in message
        assert "\n" not in message
    nii.header.set_zooms((2.0, 3.0, 4.0 + 0.05 * 4.0 / 14))  # a twentieth of a voxel over the 14 slices
    nib.save(nii, str(tmp_path / "near.nii.gz"))
    np.testing.assert_allclose(load_image(tmp_path / "near.nii.gz").affine, affine)


def test_file_without_orientation_warns_which_placement_was_used(tmp_path: Path) -> None:
    """sform and qform codes 0: svreg reads nibabel's placement and says so, naming ITK's, which differs (checked
    with SimpleITK); a file whose sform is set loads without a warning."""
    import SimpleITK as sitk

    data = _ramp((10, 12, 14))
    bare = _forms_file(tmp_path / "bare.nii.gz", data, None, None)
    with pytest.warns(UserWarning) as caught:
        image = load_image(bare, name="fixed image")
    message = str(caught[0].message)
    assert message.startswith("fixed image (bare.nii.gz) stores no orientation") and "\n" not in message
    expected = nib.load(str(bare)).affine  # nibabel's guess: x mirrored, centred
    np.testing.assert_allclose(image.affine, expected)
    assert "LAS" in message and f"({expected[0, 3]:.1f}, {expected[1, 3]:.1f}, {expected[2, 3]:.1f}) mm" in message
    itk = sitk.ReadImage(str(bare))  # ITK's guess: LPS axes, the first voxel at the origin
    assert itk.GetOrigin() == (0.0, 0.0, 0.0) and itk.GetDirection() == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    assert "ITK and Slicer with LPS axes from the origin" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(_forms_file(tmp_path / "set.nii.gz", data, np.diag([2.0, 2.0, 2.0, 1.0]), None))


def test_save_image_never_writes_disagreeing_forms(geo, tmp_path: Path) -> None:
    """A sheared affine is written as the sform only (a qform cannot hold it); svreg reads its own files back."""
    sheared = geo.make_affine(np.array([[2.0, 0.6, 0.0], [0.0, 2.0, 0.0], [0.1, 0.0, 2.0]]), [1.0, 2.0, 3.0])
    path = save_image(Image(_ramp(), sheared), tmp_path / "s.nii.gz")
    nii = nib.load(str(path))
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 0
    np.testing.assert_allclose(load_image(path).affine, sheared, atol=1e-5)


# ------------------------------------------------------------------------------ nearly singular


def test_nearly_singular_affine_is_refused_before_any_grid(geo, tmp_path: Path) -> None:
    data = _ramp((20, 20, 20))
    squashed = np.diag([2.0, 2.0, 2.0, 1.0])
    squashed[:3, 0] *= 1e-7  # the case: one column scaled to 1e-7
    parallel = geo.make_affine(np.array([[2.0, 2.0, 0.0], [0.0, 1e-5, 0.0], [0.0, 0.0, 2.0]]), [0.0, 0.0, 0.0])
    for name, aff, sizes in (("squashed", squashed, "2e-07, 2, 2 mm"), ("parallel", parallel, "2, 2, 2 mm")):
        with pytest.raises(InputError) as info:
            load_image(_write(tmp_path, f"{name}.nii.gz", data, aff), name="moving image")
        message = str(info.value)
        assert message.startswith("moving image has a (nearly) singular voxel-to-world affine"), message
        assert sizes in message and "\n" not in message
    # strongly anisotropic but real voxels (0.3 x 0.3 x 6 mm) are fine
    thin = geo.make_affine(np.diag([0.3, 0.3, 6.0]), [0.0, 0.0, 0.0])
    assert load_image(_write(tmp_path, "thin.nii.gz", data, thin)).shape == (20, 20, 20)


@pytest.mark.parametrize("sizes, accepted", [
    ((1e-7, 1e-7, 1e-7), False),  # the case: tiny isotropic voxels reached an allocation failure
    ((9e-4, 1e-3, 1e-3), False), ((1e-3, 1e-3, 1e-3), True),
    ((100.0, 100.0, 100.0), True), ((1.0, 1.0, 101.0), False), ((1e3, 1e3, 1e3), False),
])
def test_voxel_sizes_outside_the_plausible_range_are_refused(geo, sizes, accepted: bool) -> None:
    """Well-conditioned affines whose voxels are not plausibly millimetres: one line naming both."""
    affine = geo.make_affine(geo.rotation([0.2, 1.0, 0.4], 25.0) @ np.diag(sizes), [3.0, -4.0, 5.0])
    image = Image(_ramp((20, 20, 20)), affine)
    if accepted:
        assert validate_image(image, "fixed image").shape == (20, 20, 20)
        return
    with pytest.raises(InputError) as info:
        validate_image(image, "fixed image")
    message = str(info.value)
    assert message.startswith("fixed image has voxel sizes ") and "\n" not in message
    assert ", ".join(f"{v:.3g}" for v in sizes) + " mm" in message
    assert "plausible range 0.001 to 100 mm" in message


@pytest.mark.parametrize("level", [0, 1, 2, 3, 9])
def test_gzip_level_changes_only_the_compression(geo, tmp_path: Path, level: int) -> None:
    """Every level writes a valid .nii.gz (gzip, then NIfTI) with the same header and data; level 0
    stores the bytes uncompressed inside the gzip container (the file is as large as the NIfTI). The gzip
    header names no file and no time, so the same image gives the same bytes under any name."""
    import SimpleITK as sitk

    aff = _affine(geo)
    data = _ramp((20, 21, 22))
    path = save_image(Image(data, aff), tmp_path / f"l{level}.nii.gz", gzip_level=level)
    reference = save_image(Image(data, aff), tmp_path / "default.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    assert raw == gzip.decompress(reference.read_bytes())  # same NIfTI bytes whatever the level
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(path)).dataobj), data)
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)  # an independent reader
    np.testing.assert_array_equal(back, data)
    size = path.stat().st_size
    if level == 0:
        assert size > len(raw)  # stored: the NIfTI bytes plus the gzip framing
    else:
        assert size < len(raw)
    header = path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08" and header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0"  # no FNAME, mtime 0
    again = save_image(Image(data, aff), tmp_path / "again.nii.gz", gzip_level=level)
    assert again.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError):
        save_image(Image(data, aff), tmp_path / "bad.nii.gz", gzip_level=10)


@pytest.mark.parametrize("unit, linear, factor", [
    ("micron", np.diag([500.0, 400.0, 300.0]), 0.001),   # a microscopy volume: 0.5 x 0.4 x 0.3 mm voxels
    ("meter", np.diag([0.002, 0.003, 0.004]), 1000.0),   # 2 x 3 x 4 mm voxels given in metres
])
def test_nifti_spatial_units_are_converted_to_mm_as_simpleitk_reads_them(geo, tmp_path: Path, unit: str,
                                                                         linear: np.ndarray, factor: float) -> None:
    """A NIfTI in microns or metres (xyzt_units) is placed in mm as SimpleITK (hence Slicer) places it, with one
    warning line naming the conversion; written back, it keeps its physical size (in mm)."""
    import SimpleITK as sitk

    affine = geo.make_affine(geo.rotation([0.3, 1.0, 0.2], 15.0) @ linear, 20.0 / factor * np.array([1.0, -2.0, 3.0]))
    nii = nib.Nifti1Image(_ramp((6, 7, 8)), affine)
    nii.set_sform(affine, code=1)
    nii.set_qform(affine, code=1)
    nii.header.set_xyzt_units(unit)
    path = tmp_path / f"{unit}.nii.gz"
    nib.save(nii, str(path))
    with pytest.warns(UserWarning) as caught:
        image = load_image(path, name="fixed image")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"fixed image ({unit}.nii.gz) gives its voxel sizes and position in {unit}s")
    assert f"(x {factor:g})" in message and "\n" not in message
    theirs = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.affine, _sitk_ras_affine(theirs), atol=1e-4)
    save_image(image, tmp_path / "out.nii.gz")
    written = nib.load(str(tmp_path / "out.nii.gz"))
    assert written.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "out.nii.gz")).GetSpacing(), theirs.GetSpacing(),
                               rtol=1e-5)


def _sitk_ras_affine(img) -> np.ndarray:
    """The voxel-to-RAS affine of a SimpleITK image, converted from its LPS geometry by hand."""
    linear = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ linear
    affine[:3, 3] = np.asarray(img.GetOrigin()) * [-1.0, -1.0, 1.0]
    return affine


@pytest.mark.parametrize("codes", [(1, 0), (0, 1), (1, 1)])
def test_negative_voxel_size_in_the_header_is_refused(tmp_path: Path, codes: tuple[int, int]) -> None:
    """A NIfTI with pixdim[1] < 0 (old Analyze-style flip): nibabel takes the size made positive, SimpleITK mirrors
    x (the referee), so the two place the image mirrored; svreg refuses it in one line, whichever form is set."""
    import struct

    import SimpleITK as sitk

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    path = _forms_file(tmp_path / "neg.nii", _ramp((5, 6, 7)), affine if codes[0] else None,
                       affine if codes[1] else None)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 80, -2.0)  # pixdim[1]: the header's float at byte 76 + 4
    path.write_bytes(bytes(raw))
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "unexpected scales in sform"
    try:
        assert sitk.ReadImage(str(path)).GetDirection()[0] == 1.0  # LPS +x: RAS -x, mirrored
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)
    assert nib.load(str(path)).affine[0, 0] == 2.0
    with pytest.raises(InputError) as info:
        load_image(path, name="moving image")
    message = str(info.value)
    assert message.startswith("moving image (neg.nii): its header gives negative voxel sizes (pixdim -2, ")
    assert "\n" not in message


def test_what_nibabel_corrects_in_a_header_is_one_warning_and_no_stray_line(tmp_path: Path, capfd) -> None:
    """A slice thickness of 0 in pixdim (nibabel reads it as 1 mm) and a negative one (refused by svreg) made
    nibabel print bare lines of its own on stderr (``pixdim[1,2,3] should be non-zero; setting 0 dims to 1``): the
    first is now one warning naming the file, the second only svreg's error line."""
    import struct

    path = _forms_file(tmp_path / "thin.nii", _ramp((5, 6, 7)), None, np.diag([2.0, 2.0, 3.0, 1.0]))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 88, 0.0)  # pixdim[3]
    path.write_bytes(bytes(raw))
    capfd.readouterr()
    for read in (load_image, load_grid):
        with pytest.warns(UserWarning) as caught:
            read(path, name="moving image")
        messages = [str(w.message) for w in caught]
        assert messages == ["moving image (thin.nii): nibabel corrected its header on reading it (pixdim[1,2,3] "
                            "should be non-zero; setting 0 dims to 1); check that it reads as intended (svreg info)."]
    struct.pack_into("<f", raw, 88, -3.0)
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="negative voxel sizes"):
            load_image(path)
    assert capfd.readouterr().err == ""


def test_a_nifti_whose_compression_contradicts_its_name_is_named_so(tmp_path: Path) -> None:
    """A .nii.gz that a download left decompressed, or a .nii holding gzip: nibabel's reason was "not a gzip file" or
    "Cannot work out file type"; the line now says which it is and the name to give it."""
    nib.save(nib.Nifti1Image(_ramp(), np.eye(4)), tmp_path / "a.nii")
    nib.save(nib.Nifti1Image(_ramp(), np.eye(4)), tmp_path / "b.nii.gz")
    (tmp_path / "a.nii").rename(tmp_path / "plain.nii.gz")
    (tmp_path / "b.nii.gz").rename(tmp_path / "packed.nii")
    for read in (load_image, load_grid):
        with pytest.raises(InputError, match=r"^plain\.nii\.gz: plain\.nii\.gz is not gzip-compressed although its "
                                             r"name ends in \.gz .* rename it to plain\.nii and give that\.$"):
            read(tmp_path / "plain.nii.gz")
        with pytest.raises(InputError, match=r"^packed\.nii: packed\.nii is gzip-compressed although its name ends "
                                             r"in \.nii; rename it to packed\.nii\.gz and give that\.$"):
            read(tmp_path / "packed.nii")


def test_nifti_pair_without_its_data_file_is_one_input_error(tmp_path: Path) -> None:
    """A NIfTI pair (.hdr + .img) whose .img is missing: the header check of the voxel data's size found no file to
    measure and ended with a FileNotFoundError traceback; it is the unreadable file's one-line InputError."""
    nib.save(nib.Nifti1Pair(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "pair.hdr")
    (tmp_path / "pair.img").unlink()
    for read in (load_image, load_grid):
        with pytest.raises(InputError) as info:
            read(tmp_path / "pair.hdr")
        assert "cannot read" in str(info.value) and "pair.img" in str(info.value)


@pytest.mark.parametrize("name", ["claims.nii", "claims.nii.gz", "series.nii.gz"])
def test_header_problems_are_refused_before_the_voxels_are_read(tmp_path: Path, name: str) -> None:
    """A header declaring 1200³ int16 voxels (3.2 GiB) over a few bytes of data, plain or gzipped, is refused before
    nibabel allocates them (it took 3.5 GB and 7 s to fail); so is a 4-D series, named as not 3-D rather than read
    whole first: the data after these headers is missing, so reading any voxel would fail differently."""
    if name.startswith("series"):
        header = nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.float32), np.eye(4)).header
        words = "must be a 3-D image; it has 4 dimensions (4, 5, 6, 2)."
    else:
        header = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)).header
        header.set_data_shape((1200, 1200, 1200))
        words = "header declares 1200 x 1200 x 1200 voxels of int16 (3.22 GiB), more than its file ("
    body = header.binaryblock + bytes(4) + bytes(64)  # 64 bytes of voxels
    with (gzip.open if name.endswith(".gz") else open)(tmp_path / name, "wb") as stream:
        stream.write(body)
    for read in (load_image, load_grid):
        with pytest.raises(InputError) as info:
            read(tmp_path / name)
        assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("stored", "kept"), [((4, 4), (4, 4)), ((2, 1), (2, 1)), ((1, 1), (1, 1)), ((4, 0), (4, 4)),
                                              ((0, 2), (2, 2)), ((5, 9), (5, 5))])
@pytest.mark.filterwarnings("ignore:.*nibabel corrected its header")  # qform code 9, which nibabel reads as 0
def test_the_nifti_space_of_an_input_is_kept_by_what_is_written_on_its_grid(geo, tmp_path: Path, stored, kept) -> None:
    """A template-space input (sform code 4 MNI, 2 aligned, ...) keeps its codes through load_image, load_grid,
    cropping and resampling, into every NIfTI written on its grid; an unset (0) or unknown (9) code takes the
    other's."""
    from svreg_core.image import crop_to_box
    from svreg_core.image.io import nifti_image

    aff = _affine(geo)
    nii = nib.Nifti1Image(_ramp(), aff)
    nii.set_sform(aff if stored[0] else None, code=stored[0])
    nii.set_qform(aff if stored[1] else None, code=min(stored[1], 1))
    nii.header["qform_code"] = stored[1]  # 9 is not a NIfTI code: nibabel's set_qform refuses it
    nib.save(nii, str(tmp_path / "in.nii.gz"))
    image = load_image(tmp_path / "in.nii.gz")
    grid = load_grid(tmp_path / "in.nii.gz")
    cropped = crop_to_box(image, image.grid.corner_points()[0], image.grid.corner_points()[-1] * 0.5, "image")
    assert image.xform_codes == grid.xform_codes == kept
    assert validate_image(image, "image").xform_codes == cropped.grid.xform_codes == grid.resampled(3.0).xform_codes \
        == Image.on(grid, image.data).xform_codes == kept
    for written in (save_image(image, tmp_path / "a.nii"), save_image(cropped, tmp_path / "b.nii.gz")):
        back = nib.load(str(written))
        assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == kept
        assert load_image(written).xform_codes == kept
    sheared = aff.copy()
    sheared[0, 1] += 0.8  # a qform cannot hold it: written as the sform only, with its code
    header = nifti_image(_ramp(), sheared, kept).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (kept[0], 0)


def test_files_without_a_nifti_space_write_scanner_space(geo, tmp_path: Path) -> None:
    """An MGH volume, an NRRD and an image made in memory hold no space code: their NIfTI outputs say scanner (1)."""
    aff = _affine(geo)
    nib.save(nib.MGHImage(_ramp(), aff), str(tmp_path / "a.mgz"))
    save_image(Image(_ramp(), aff), tmp_path / "b.nrrd")
    for path in (tmp_path / "a.mgz", tmp_path / "b.nrrd"):
        assert load_image(path).xform_codes == load_grid(path).xform_codes == (1, 1)
    save_image(Image(_ramp(), aff), tmp_path / "c.nii.gz")
    header = nib.load(str(tmp_path / "c.nii.gz")).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (1, 1)
