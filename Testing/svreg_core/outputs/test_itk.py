"""ITK-convention transform files read back by nibabel and SimpleITK, with frames converted by hand.

A synthetic :class:`RegistrationResult` (smooth velocity on a coarse working grid, a rotation +
translation affine, oblique/flipped/anisotropic grids) gives a mapping ``T(x) = A(x + u(x))`` whose
files must map points exactly as :meth:`RegistrationResult.transform_points` does.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
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
