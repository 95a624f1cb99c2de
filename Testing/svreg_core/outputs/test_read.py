"""Transform files read back (``svreg_core.outputs.read``), on hand-made fields and files.

Files are written here with nibabel and SimpleITK directly (LPS vectors, ITK layout), not with svreg's
writer, so the reader is checked against the formats' conventions rather than against itself. The
registered outputs read back are tested in ``Testing/svreg_core/test_apply.py``.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from svreg_core.errors import InputError
from svreg_core.image.grid import Grid
from svreg_core.outputs.read import (
    DisplacementField,
    Transform,
    load_transform,
    read_displacement,
    read_itk_transform,
    read_linear_transform,
)

#: A 2 mm grid, its first axis flipped (LAS-like), voxel (0, 0, 0) at RAS (10, -20, 5).
_AFFINE = np.array([[-2.0, 0, 0, 10.0], [0, 2.0, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
_SHAPE = (6, 5, 4)


def _grid_points() -> np.ndarray:
    """RAS mm of every voxel centre of the test grid, ``(I, J, K, 3)``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in _SHAPE], indexing="ij"), axis=-1)
    return nib.affines.apply_affine(_AFFINE, ijk)


def _constant(vector_ras: tuple[float, float, float]) -> DisplacementField:
    return DisplacementField(np.broadcast_to(np.float32(vector_ras), (*_SHAPE, 3)).copy(), Grid(_SHAPE, _AFFINE))


def test_constant_field_inside_and_zero_beyond_half_a_voxel() -> None:
    field = _constant((1.0, -2.0, 0.5))
    # voxel (0, 0, 0) is RAS (10, -20, 5); the grid spans i = 0..5 along -x, j = 0..4 along +y
    points = np.array([[10.0, -20.0, 5.0],   # a corner voxel centre
                       [4.0, -16.0, 7.0],    # inside
                       [10.9, -20.0, 5.0],   # 0.45 voxel beyond i = 0: the border vector continues
                       [11.2, -20.0, 5.0],   # 0.6 voxel beyond: zero
                       [4.0, -21.2, 7.0]])   # 0.6 voxel below j = 0: zero
    expected = points + np.array([[1.0, -2.0, 0.5]] * 3 + [[0.0, 0.0, 0.0]] * 2)
    np.testing.assert_allclose(field(points), expected, atol=1e-6)


def test_linear_field_is_interpolated_exactly() -> None:
    """Trilinear interpolation reproduces a field that is linear in the world coordinates."""
    matrix = np.array([[0.02, -0.01, 0.0], [0.0, 0.03, 0.01], [-0.02, 0.0, 0.01]])
    u = (_grid_points() @ matrix.T).astype(np.float32)
    field = DisplacementField(u, Grid(_SHAPE, _AFFINE))
    rng = np.random.default_rng(0)
    points = nib.affines.apply_affine(_AFFINE, rng.uniform(0, np.asarray(_SHAPE) - 1, size=(50, 3)))
    np.testing.assert_allclose(field(points), points + points @ matrix.T, atol=1e-4)
    assert field(points.reshape(5, 10, 3)).shape == (5, 10, 3)


def test_steps_act_in_order_and_matrices_invert_exactly() -> None:
    shift = np.eye(4)
    shift[:3, 3] = [1.0, 2.0, 3.0]
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    point = np.array([[1.0, 1.0, 1.0]])
    # steps[0] acts first: scale then shift -> (3, 4, 5); shift then scale -> (4, 6, 8)
    np.testing.assert_allclose(Transform((scale, shift)).transform_points(point), [[3.0, 4.0, 5.0]])
    np.testing.assert_allclose(Transform((shift, scale)).transform_points(point), [[4.0, 6.0, 8.0]])
    back = Transform((scale, shift)).inverse()
    np.testing.assert_allclose(back.transform_points([[3.0, 4.0, 5.0]]), point)


def test_map_grid_reads_a_field_on_the_grid_at_its_voxels() -> None:
    """On the field's own grid, ``map_grid`` is ``x + u(x)`` at the voxel centres, then the later steps; on another
    grid (or with a matrix first) it maps the voxel centres through every step as ``transform_points`` does."""
    u = np.random.default_rng(4).normal(0.0, 1.5, (*_SHAPE, 3)).astype(np.float32)
    field = DisplacementField(u, Grid(_SHAPE, _AFFINE))
    shift = np.eye(4)
    shift[:3, 3] = [1.0, -2.0, 0.5]
    grid = Grid(_SHAPE, _AFFINE)
    np.testing.assert_allclose(Transform((field, shift)).map_grid(grid), _grid_points() + u + shift[:3, 3],
                               atol=1e-6)
    other = Grid((4, 3, 5), np.array([[1.5, 0, 0.2, 1.0], [0, 1.7, 0, -17.0], [0, 0, 1.8, 6.0], [0, 0, 0, 1]]))
    for tx in (Transform((field, shift)), Transform((shift, field))):
        for g in (grid, other):
            np.testing.assert_allclose(tx.map_grid(g), tx.transform_points(g.world_points()), atol=1e-4)


def test_field_inverse_is_numerical_and_its_inverse_the_field() -> None:
    grid_points = _grid_points()
    centre = grid_points.reshape(-1, 3).mean(0)
    u = (0.8 * np.sin((grid_points - centre) / 6.0)).astype(np.float32)  # |∇u| ≤ 0.13: invertible
    field = DisplacementField(u, Grid(_SHAPE, _AFFINE))
    forward = Transform((field,), grid=field.grid)
    inverse = forward.inverse()
    points = grid_points[1:-1, 1:-1, 1:-1].reshape(-1, 3)
    np.testing.assert_allclose(inverse.transform_points(forward.transform_points(points)), points, atol=0.02)
    assert inverse.inverse().steps[0] is field


def test_folding_field_is_not_inverted() -> None:
    """``u(x) = -2 (x - c)`` near the centre (fading to 0 from 3 to 6 mm, far inside the grid) maps x to 2c - x,
    where the fixed-point iteration diverges: refused, not taken from the edge's leniency."""
    shape, affine = (20, 20, 20), np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -9.5  # centre c = 0
    points = nib.affines.apply_affine(affine, np.indices(shape).transpose(1, 2, 3, 0))
    weight = np.clip((6.0 - np.linalg.norm(points, axis=-1)) / 3.0, 0.0, 1.0)[..., None]
    field = DisplacementField((-2.0 * points * weight).astype(np.float32), Grid(shape, affine))
    with pytest.raises(InputError, match="could not be inverted"):
        Transform((field,)).inverse().transform_points(np.array([[1.0, 0.5, 0.2]]))


def test_inverse_along_the_field_edge_matches_itk() -> None:
    """A constant 0.6 mm field on 16³ at 1 mm, inverted on a larger grid (as ``svreg apply --inverse --reference``
    does): beyond the field the inverse is the identity, inside it -u, as ITK's inverted field gives; the one layer
    along the edge the field jumps over has no exact inverse: its points take the best iterate, with one warning,
    instead of refusing the whole grid."""
    shape = (16, 16, 16)
    lps = np.broadcast_to(np.float64([0.6, 0.0, 0.0]), (*shape[::-1], 3)).copy()  # RAS (-0.6, 0, 0)
    image = sitk.GetImageFromArray(lps, isVector=True)
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS axes, voxel (0, 0, 0) at the origin
    itk_inverse = sitk.DisplacementFieldTransform(sitk.InvertDisplacementField(image, 50, 1e-3, 1e-4, False))
    field = DisplacementField(np.broadcast_to(np.float32([-0.6, 0.0, 0.0]), (*shape, 3)).copy(),
                              Grid(shape, np.eye(4)))
    y = np.indices((24, 24, 24)).reshape(3, -1).T - 4.0  # RAS mm, 4 voxels beyond the field on every side
    with pytest.warns(UserWarning, match=r"^256 of 13824 points near the edge of the displacement field have no "
                                         r"exact inverse there \(up to 0.6 mm off\)"):
        ours = Transform((field,)).inverse().transform_points(y)
    flip = np.array([-1.0, -1.0, 1.0])
    theirs = np.array([itk_inverse.TransformPoint(tuple(p * flip)) for p in y]) * flip
    gap = (y[:, 0] > 14.9) & (y[:, 0] < 15.5) & np.all((y >= -0.5) & (y <= 15.5), axis=1)  # F never lands here
    assert gap.sum() == 256
    np.testing.assert_allclose(ours[~gap], theirs[~gap], atol=1e-3)
    np.testing.assert_allclose(field(ours[gap]), y[gap], atol=0.6 + 1e-6)  # as near as an iterate got


@pytest.mark.parametrize("layout", ["itk", "plain"])
def test_read_displacement_converts_lps_vectors(tmp_path: Path, layout: str) -> None:
    lps = np.broadcast_to(np.float32([1.0, 2.0, 3.0]), (*_SHAPE, 3))
    data = lps[:, :, :, None, :] if layout == "itk" else lps
    path = tmp_path / "field.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), _AFFINE), str(path))
    field = read_displacement(path)
    np.testing.assert_array_equal(field.displacement[2, 2, 2], [-1.0, -2.0, 3.0])  # RAS
    np.testing.assert_array_equal(field.grid.affine, _AFFINE)
    assert field.grid.shape == _SHAPE


def test_displacement_in_microns_is_placed_as_itk_places_it(tmp_path: Path) -> None:
    """A field whose header gives its grid in microns (NIfTI xyzt_units) was placed as if in mm, 1000 times too
    large, where ITK (hence ANTs, Slicer) converts its grid to mm: now mapped as SimpleITK maps it, with a warning."""
    vectors = np.broadcast_to(np.float32([1.0, 2.0, 3.0]), (*_SHAPE, 1, 3)).copy()
    microns = np.diag([1000.0, 1000.0, 1000.0, 1.0]) @ _AFFINE
    nii = nib.Nifti1Image(vectors, microns)
    nii.header.set_xyzt_units("micron")
    nii.header.set_intent("vector")
    path = tmp_path / "field.nii.gz"
    nib.save(nii, str(path))
    with pytest.warns(UserWarning, match="microns"):
        field = read_displacement(path)
    np.testing.assert_allclose(field.grid.affine, _AFFINE)
    itk = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    points_ras = _grid_points()[1:-1, 1:-1, 1:-1].reshape(-1, 3)
    flip = np.array([-1.0, -1.0, 1.0])
    expected = np.array([itk.TransformPoint(tuple(p * flip)) for p in points_ras]) * flip
    np.testing.assert_allclose(field(points_ras), expected, atol=1e-4)


def test_displacement_placed_differently_by_itk_is_warned_or_refused(tmp_path: Path) -> None:
    """A field that ITK (ANTs, Slicer) places elsewhere than svreg was read silently: with no orientation stored
    (ITK: LPS axes from the origin) it is now warned of, with negative voxel sizes (ITK mirrors) refused, as images
    are."""
    vectors = np.zeros((*_SHAPE, 1, 3), np.float32)
    nii = nib.Nifti1Image(vectors, _AFFINE)
    nii.set_sform(None, code=0)
    nii.set_qform(None, code=0)
    nib.save(nii, str(tmp_path / "bare.nii.gz"))
    with pytest.warns(UserWarning, match="displacement field bare.nii.gz stores no orientation"):
        read_displacement(tmp_path / "bare.nii.gz")
    mirrored = nib.Nifti1Image(vectors, _AFFINE)
    mirrored.header["pixdim"][1] = -2.0
    nib.save(mirrored, str(tmp_path / "mirrored.nii.gz"))
    with pytest.warns(UserWarning, match="nibabel corrected"), \
            pytest.raises(InputError, match="mirrored.nii.gz: its header gives negative voxel sizes"):
        read_displacement(tmp_path / "mirrored.nii.gz")


@pytest.mark.parametrize("content, message", [
    (np.zeros((*_SHAPE, 2), np.float32), "has shape"),
    (np.full((*_SHAPE, 3), np.nan, np.float32), "NaN"),
    (None, "cannot read"),
])
def test_read_displacement_errors(tmp_path: Path, content: np.ndarray | None, message: str) -> None:
    path = tmp_path / "field.nii.gz"
    if content is None:
        path.write_bytes(b"not a NIfTI file")
    else:
        nib.save(nib.Nifti1Image(content, _AFFINE), str(path))
    with pytest.raises(InputError, match=message):
        read_displacement(path)


def _sitk_field(vector_lps: tuple[float, float, float]) -> sitk.DisplacementFieldTransform:
    """A constant LPS displacement on the test grid, in SimpleITK's own (LPS) geometry."""
    image = sitk.GetImageFromArray(np.broadcast_to(np.float64(vector_lps), (*_SHAPE[::-1], 3)).copy(),
                                   isVector=True)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-10.0, 20.0, 5.0))  # RAS (10, -20, 5)
    image.SetDirection((1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS columns (-1, 0, 0), (0, 1, 0), (0, 0, 1)
    return sitk.DisplacementFieldTransform(image)


def test_itk_composite_matches_simpleitk(tmp_path: Path) -> None:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.0, 0.1, 0.0, 0.0, 0.95, 0.05, 0.0, 0.0, 1.1))
    affine.SetTranslation((2.0, -3.0, 1.5))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(_sitk_field((0.5, -1.0, 2.0)))  # added last: ITK applies it first
    path = tmp_path / "composite.h5"
    sitk.WriteTransform(composite, str(path))
    transform = read_itk_transform(path)
    assert isinstance(transform.steps[0], DisplacementField) and isinstance(transform.steps[1], np.ndarray)
    np.testing.assert_array_equal(transform.grid.affine, _AFFINE)
    points_ras = _grid_points()[1:-1, 1:-1, 1:-1].reshape(-1, 3)
    flip = np.array([-1.0, -1.0, 1.0])
    expected = np.array([composite.TransformPoint(tuple(p * flip)) for p in points_ras]) * flip
    np.testing.assert_allclose(transform.transform_points(points_ras), expected, atol=1e-5)


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5", ".mat"])
def test_linear_transform_file_is_one_matrix_mapping_like_simpleitk(tmp_path: Path, suffix: str) -> None:
    """A rigid (Euler) step then an affine one in an ITK composite, as Slicer or ANTs write them: one RAS matrix that
    maps points as SimpleITK's ``TransformPoint`` maps their LPS coordinates (``.mat``: ANTs' format, one affine)."""
    rigid = sitk.Euler3DTransform((10.0, -5.0, 20.0), 0.1, -0.2, 0.3, (4.0, 1.0, -2.0))
    affine = sitk.AffineTransform((1.05, 0.02, 0.0, -0.03, 0.97, 0.01, 0.0, 0.04, 1.1), (-7.0, 2.5, 3.0),
                                  (1.0, 2.0, 3.0))
    if suffix == ".mat":
        transform = affine
    else:
        transform = sitk.CompositeTransform(3)
        transform.AddTransform(affine)
        transform.AddTransform(rigid)  # added last: ITK applies it first
    sitk.WriteTransform(transform, str(tmp_path / f"t{suffix}"))
    matrix = read_linear_transform(tmp_path / f"t{suffix}")
    points_ras = np.random.default_rng(0).uniform(-80, 80, (20, 3))
    flip = np.array([-1.0, -1.0, 1.0])
    expected = np.array([transform.TransformPoint(tuple(p * flip)) for p in points_ras]) * flip
    np.testing.assert_allclose(points_ras @ matrix[:3, :3].T + matrix[:3, 3], expected, atol=1e-9)
    np.testing.assert_array_equal(matrix[3], [0, 0, 0, 1])


@pytest.mark.parametrize("kind, parameters", [
    ("MatrixOffsetTransformBase_double_3_3", "1.05 0.02 0 -0.03 0.97 0.01 0 0.04 1.1 -7 2.5 3"),  # ANTs' affine .mat
    ("QuaternionRigidTransform_double_3_3", "0.1 -0.2 0.3 0.9273618495495703 4 1 -2"),  # unit quaternion, shift
])
def test_linear_itk_transforms_of_any_class_are_read(tmp_path: Path, kind: str, parameters: str) -> None:
    """ANTs' and nitransforms' affine files name ``MatrixOffsetTransformBase``, which SimpleITK returns nested in a
    composite, and ``QuaternionRigidTransform``: read through their point mapping like any linear transform, for
    ``svreg apply`` and ``--initial-transform``, mapping points as SimpleITK does."""
    path = tmp_path / "t.txt"
    path.write_text(f"#Insight Transform File V1.0\n#Transform 0\nTransform: {kind}\nParameters: {parameters}\n"
                    "FixedParameters: 10 -5 20\n")
    itk = sitk.ReadTransform(str(path))
    points_ras = np.random.default_rng(1).uniform(-80, 80, (20, 3))
    flip = np.array([-1.0, -1.0, 1.0])
    expected = np.array([itk.TransformPoint(tuple(p * flip)) for p in points_ras]) * flip
    assert np.abs(expected - points_ras).max() > 1.0
    np.testing.assert_allclose(load_transform(path).transform_points(points_ras), expected, atol=1e-9)
    matrix = read_linear_transform(path)
    np.testing.assert_allclose(points_ras @ matrix[:3, :3].T + matrix[:3, 3], expected, atol=1e-9)


def test_linear_transform_errors(tmp_path: Path) -> None:
    sitk.WriteTransform(_sitk_field((0.5, -1.0, 2.0)), str(tmp_path / "field.h5"))
    with pytest.raises(InputError, match="field.h5 holds a displacement field; an initial transform must be linear"):
        read_linear_transform(tmp_path / "field.h5")
    with pytest.raises(InputError, match="initial transform not found"):
        read_linear_transform(tmp_path / "nowhere.tfm")
    (tmp_path / "points.csv").write_text("x,y,z\n0,0,0\n")  # not a transform: named as what it should be
    with pytest.raises(InputError, match=r"points.csv: an initial transform is a linear ITK transform file \(.h5, "
                                         r".hdf5, .tfm, .txt, .mat\)"):
        read_linear_transform(tmp_path / "points.csv")


def test_itk_errors(tmp_path: Path) -> None:
    bspline = sitk.BSplineTransform(3)
    sitk.WriteTransform(bspline, str(tmp_path / "b.tfm"))
    with pytest.raises(InputError, match="BSplineTransform"):
        read_itk_transform(tmp_path / "b.tfm")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF corrupt")
    with pytest.raises(InputError, match="cannot read"):
        read_itk_transform(tmp_path / "bad.h5")


def test_truncated_h5_is_one_line_without_hdf5_error_stack(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A transform.h5 cut short (an interrupted copy or download) printed ITK's HDF5 error stack (dozens of
    ``HDF5-DIAG`` lines on stderr) before svreg's one-line error; now only the error, which says why."""
    sitk.WriteTransform(_sitk_field((0.5, -1.0, 2.0)), str(tmp_path / "whole.h5"))
    whole = (tmp_path / "whole.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) // 2])
    capfd.readouterr()
    with pytest.raises(InputError, match="cut.h5 as an ITK transform file: it is not a complete HDF5 file"):
        load_transform(tmp_path / "cut.h5")
    assert "HDF5" not in capfd.readouterr().err


def test_load_transform_paths(tmp_path: Path) -> None:
    path = tmp_path / "field.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*_SHAPE, 1, 3), np.float32), _AFFINE), str(path))
    assert isinstance(load_transform(path).steps[0], DisplacementField)
    with pytest.raises(InputError, match="not found"):
        load_transform(tmp_path / "missing.nii.gz")
    (tmp_path / "field.vtk").write_text("x")
    with pytest.raises(InputError, match="unknown transform file type"):
        load_transform(tmp_path / "field.vtk")
    with pytest.raises(InputError, match="holds neither"):
        load_transform(tmp_path)
