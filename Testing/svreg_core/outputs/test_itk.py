"""ITK-convention transform files read back by nibabel and SimpleITK, with frames converted by hand.

A synthetic :class:`RegistrationResult` (smooth velocity on a coarse working grid, a rotation +
translation affine, oblique/flipped/anisotropic grids) gives a mapping ``T(x) = A(x + u(x))`` whose
files must map points exactly as :meth:`RegistrationResult.transform_points` does. ``transform.h5``
is written with h5py (SimpleITK is not involved) and stores its field as compressed float32: read by
SimpleITK and by Slicer's storage node (slicer-core), it must hold the same entries as, and map points
as, the float64, uncompressed file SimpleITK writes itself.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from svreg_core.outputs import composite_transform, displacement_nifti, write_transform


def _field_transform(path: Path) -> sitk.DisplacementFieldTransform:
    img = sitk.ReadImage(str(path))
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetDimension() == 3
    return sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))


def _sample_points(result, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random fixed voxel indices (away from the border) and their RAS points."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(result.fixed.shape)
    ijk = rng.integers(2, shape - 2, size=(n, 3))
    return ijk, nib.affines.apply_affine(result.fixed.affine, ijk)


def test_displacement_nifti_layout(synthetic_result, tmp_path: Path) -> None:
    r = synthetic_result
    nib.save(displacement_nifti(r.displacement, r.fixed.grid), str(tmp_path / "d.nii.gz"))
    nii = nib.load(str(tmp_path / "d.nii.gz"))
    assert nii.shape == (*r.fixed.shape, 1, 3)
    assert nii.get_data_dtype() == np.float32  # ANTs' Warp.nii.gz layout; a float64 input field is rounded
    assert nii.header.get_intent()[0] == "vector" and int(nii.header["intent_code"]) == 1007
    np.testing.assert_allclose(nii.affine, r.fixed.affine, atol=1e-4)
    assert int(nii.header["sform_code"]) == 1
    data = np.asanyarray(nii.dataobj)[:, :, :, 0, :]
    np.testing.assert_allclose(data[..., 0], -r.displacement[..., 0], atol=1e-6)  # R -> L
    np.testing.assert_allclose(data[..., 1], -r.displacement[..., 1], atol=1e-6)  # A -> P
    np.testing.assert_allclose(data[..., 2], r.displacement[..., 2], atol=1e-6)   # S stays


def test_simpleitk_reads_displacement_as_our_mapping(synthetic_result, geo, tmp_path: Path) -> None:
    r = synthetic_result
    path = tmp_path / "displacement.nii.gz"
    nib.save(displacement_nifti(r.displacement, r.fixed.grid), str(path))
    img = sitk.ReadImage(str(path))
    ref = geo.sitk_image(np.zeros(r.fixed.shape), r.fixed.affine)  # geometry converted to LPS by hand
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5)
    tx = _field_transform(path)
    ijk, x = _sample_points(r)
    d = r.displacement[tuple(ijk.T)]
    got = np.array([tx.TransformPoint(tuple(p)) for p in geo.lps(x)])
    np.testing.assert_allclose(got, geo.lps(x + d), atol=1e-3)
    assert np.abs(d).max() > 3.0  # the check is not trivially satisfied
    # between voxel centres ITK interpolates the vectors trilinearly (vectors are LPS, not RAS)
    vox = ijk + np.random.default_rng(1).uniform(0, 1, ijk.shape)
    p = nib.affines.apply_affine(r.fixed.affine, vox)
    interp = np.stack([ndimage.map_coordinates(r.displacement[..., c].astype(np.float64), vox.T, order=1)
                       for c in range(3)], axis=-1)
    got = np.array([tx.TransformPoint(tuple(q)) for q in geo.lps(p)])
    np.testing.assert_allclose(got, geo.lps(p + interp), atol=1e-3)


def test_displacement_on_a_sheared_grid_has_no_disagreeing_qform(geo, tmp_path: Path) -> None:
    """A sheared grid (which a qform cannot hold) is written with the sform only, as ``save_image`` writes images:
    a qform without the shear would be what SimpleITK reads (the first voxel several mm off, without a word)."""
    from svreg_core.image import Grid

    sheared = geo.make_affine(np.array([[2.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 2.5]]), [-20.0, 10.0, 5.0])
    grid = Grid((20, 22, 18), sheared)
    path = tmp_path / "displacement.nii.gz"
    nib.save(displacement_nifti(np.zeros((*grid.shape, 3), np.float32), grid), str(path))
    nii = nib.load(str(path))
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 0
    np.testing.assert_allclose(nii.affine, sheared, atol=1e-5)
    try:  # ITK 5.4 refuses a sheared sform ("only supports orthonormal direction cosines") rather than misplace it
        origin = np.array(sitk.ReadImage(str(path)).GetOrigin())
    except RuntimeError as exc:
        assert "orthonormal" in str(exc)
    else:
        np.testing.assert_allclose(geo.lps(origin), sheared[:3, 3], atol=1e-3)  # the sform's first voxel


def test_transform_h5_composite_applies_field_then_affine(synthetic_result, geo, tmp_path: Path) -> None:
    r = synthetic_result
    path = write_transform(tmp_path / "transform.h5", r.affine, r.deformable_displacement, r.fixed.grid)
    tx = sitk.ReadTransform(str(path))
    ijk, x = _sample_points(r)
    expected = r.transform_points(x)
    got = np.array([tx.TransformPoint(tuple(p)) for p in geo.lps(x)])
    np.testing.assert_allclose(got, geo.lps(expected), atol=2e-3)
    np.testing.assert_allclose(expected, x + r.displacement[tuple(ijk.T)], atol=2e-3)
    # the other order, x -> A x + u(A x), is measurably different: the check can fail
    u = r.deformable_displacement[tuple(ijk.T)]
    a = r.affine
    assert np.abs(expected - ((x + u) @ a[:3, :3].T + a[:3, 3])).max() < 2e-3
    assert np.abs(expected - (x @ a[:3, :3].T + a[:3, 3] + u)).max() > 1.0
    # in memory too
    mem = composite_transform(r.affine, r.deformable_displacement, r.fixed.grid)
    np.testing.assert_allclose([mem.TransformPoint(tuple(p)) for p in geo.lps(x[:20])], got[:20], atol=1e-6)


def test_simpleitk_resample_with_displacement_reproduces_warped(synthetic_result, geo, tmp_path: Path) -> None:
    r = synthetic_result
    path = tmp_path / "displacement.nii.gz"
    nib.save(displacement_nifti(r.displacement, r.fixed.grid), str(path))
    out = sitk.Resample(geo.sitk_image(r.moving.data, r.moving.affine),
                        geo.sitk_image(np.zeros(r.fixed.shape), r.fixed.affine), _field_transform(path),
                        sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    theirs = geo.sitk_array(out)
    ours = r.warped.data
    vox = geo.to_voxel(geo.world_points(r.fixed.shape, r.fixed.affine) + r.displacement, r.moving.affine)
    inside = np.all((vox >= 0.01) & (vox <= np.asarray(r.moving.shape) - 1.01), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-3)


def _inside_points(result, n: int = 300, seed: int = 2) -> np.ndarray:
    """``n`` random RAS points off the voxel centres, inside the fixed grid."""
    vox = np.random.default_rng(seed).uniform(1.0, np.asarray(result.fixed.shape) - 2.0, size=(n, 3))
    return nib.affines.apply_affine(result.fixed.affine, vox)


def _sitk_points(path: Path, points_lps: np.ndarray) -> np.ndarray:
    tx = sitk.ReadTransform(str(path))
    return np.array([tx.TransformPoint(tuple(p)) for p in points_lps])


@pytest.mark.parametrize("level", [0, 4])
def test_transform_h5_field_is_float32_stored_or_compressed(synthetic_result, tmp_path: Path, level: int) -> None:
    """The layout of SimpleITK's own file, with the field as float32: stored (level 0, the default) or
    chunked, shuffled and gzip-compressed."""
    r = synthetic_result
    new = write_transform(tmp_path / "transform.h5", r.affine, r.deformable_displacement, r.fixed.grid,
                          gzip_level=level)
    old = tmp_path / "float64.h5"
    sitk.WriteTransform(composite_transform(r.affine, r.deformable_displacement, r.fixed.grid), str(old))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float64.h5", "transform.h5"]  # no temporary left
    with h5py.File(new, "r") as f, h5py.File(old, "r") as g:
        assert sorted(f) == sorted(g) and sorted(f["TransformGroup"]) == sorted(g["TransformGroup"]) == ["0", "1", "2"]
        for index in "012":
            assert sorted(f["TransformGroup"][index]) == sorted(g["TransformGroup"][index]), index
            name = f"TransformGroup/{index}/TransformType"
            assert f[name].dtype == g[name].dtype and f[name].shape == g[name].shape == (1,)
            assert f[name][()].tolist() == g[name][()].tolist(), name
        assert f["TransformGroup/2/TransformType"][0] == b"DisplacementFieldTransform_double_3_3"
        for name in ("1/TransformParameters", "1/TransformFixedParameters", "2/TransformFixedParameters"):
            a, b = f["TransformGroup/" + name], g["TransformGroup/" + name]
            assert a.dtype == b.dtype == np.float64 and a.compression is None
            np.testing.assert_array_equal(a[()], b[()])
        field, plain = f["TransformGroup/2/TransformParameters"], g["TransformGroup/2/TransformParameters"]
        assert field.dtype == np.float32 and plain.dtype == np.float64 and plain.compression is None
        assert field.shape == plain.shape == (r.deformable_displacement.size,)
        np.testing.assert_array_equal(field[()], plain[()])  # svreg's float32 field: stored without loss
        if level:
            assert field.compression == "gzip" and field.compression_opts == level and field.shuffle
            assert field.id.get_storage_size() < 0.5 * plain.id.get_storage_size()
        else:
            assert field.compression is None and field.chunks is None
            assert field.id.get_storage_size() == plain.id.get_storage_size() // 2
    if level:
        assert new.stat().st_size < 0.6 * old.stat().st_size
    with pytest.raises(ValueError, match="gzip level must be 0 to 9"):
        write_transform(tmp_path / "bad.h5", r.affine, r.deformable_displacement, r.fixed.grid, gzip_level=10)


def test_transform_h5_maps_as_the_float64_file(synthetic_result, geo, tmp_path: Path) -> None:
    """A float64 field is rounded to float32 in the file: points move by less than 1e-5 mm."""
    r = synthetic_result
    u = r.deformable_displacement
    u64 = u.astype(np.float64) + np.random.default_rng(3).uniform(-1e-4, 1e-4, u.shape)
    new = write_transform(tmp_path / "transform.h5", r.affine, u64, r.fixed.grid)
    old = tmp_path / "float64.h5"
    sitk.WriteTransform(composite_transform(r.affine, u64, r.fixed.grid), str(old))
    with h5py.File(old, "r") as g:  # the float64 file holds values float32 cannot
        plain = g["TransformGroup/2/TransformParameters"][()]
        assert np.any(plain.astype(np.float32) != plain)
    x = geo.lps(_inside_points(r))
    ref, got = _sitk_points(old, x), _sitk_points(new, x)
    assert np.abs(ref - x).max() > 3.0  # the points do move
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    # ... and svreg's float32 field maps bit for bit as its float64 file
    sitk.WriteTransform(composite_transform(r.affine, r.deformable_displacement, r.fixed.grid), str(old))
    for level in (0, 4):  # stored and compressed
        new32 = write_transform(tmp_path / f"t32-{level}.h5", r.affine, r.deformable_displacement, r.fixed.grid,
                                gzip_level=level)
        np.testing.assert_array_equal(_sitk_points(new32, x), _sitk_points(old, x))


@pytest.mark.parametrize("level", [0, 4])
def test_slicer_reads_transform_h5(synthetic_result, geo, tmp_path: Path, level: int) -> None:
    """Slicer's transform storage node (slicer-core) reads the stored and the compressed file; RAS in, RAS out."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (test extra)")
    if not hasattr(slicer, "vtkMRMLTransformStorageNode"):
        pytest.skip("the installed 'slicer' package is not slicer-core (no MRML)")
    r = synthetic_result
    path = write_transform(tmp_path / "transform.h5", r.affine, r.deformable_displacement, r.fixed.grid,
                           gzip_level=level)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "T")
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    from_parent = node.GetTransformFromParent()  # the resampling direction, as ITK's file holds it
    for i in range(from_parent.GetNumberOfConcatenatedTransforms()):  # Slicer picks cubic for grids
        part = from_parent.GetConcatenatedTransform(i)
        if hasattr(part, "SetInterpolationModeToLinear"):
            part.SetInterpolationModeToLinear()
    x = _inside_points(r)
    got = np.array([from_parent.TransformPoint(tuple(p)) for p in x])
    np.testing.assert_allclose(got, geo.lps(_sitk_points(path, geo.lps(x))), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got, r.transform_points(x), atol=2e-3)
    scene.Clear(1)
