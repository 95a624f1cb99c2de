"""The affine pre-alignment: centre of mass on oblique grids, the matrix parameterisation, and a known affine
recovered between images on differently oriented grids, from the usual start and through the pose search."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from svreg_core.image.grid import Grid
from svreg_core.optim.affine import _matrix, affine_register, center_of_mass


def _grid(shape: tuple[int, int, int], spacing: float, axes: tuple[int, int, int] = (1, 1, 1),
          origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Grid:
    """A grid with voxel size ``spacing`` mm and axis signs ``axes`` (e.g. (-1, 1, 1): LAS voxel order)."""
    affine = np.diag([*(s * spacing for s in axes), 1.0])
    affine[:3, 3] = origin
    return Grid(shape, affine)


def test_center_of_mass_hand_computed() -> None:
    grid = _grid((6, 7, 8), 2.0, axes=(-1, 1, 1), origin=(10.0, -5.0, 3.0))
    image = torch.zeros(1, 1, 6, 7, 8)
    image[0, 0, 1, 2, 3] = 1.0
    image[0, 0, 3, 2, 5] = 3.0  # three times the weight: the centre lies 3/4 of the way to it
    # voxel (2.5, 2, 4.5) -> RAS: x = 10 - 2 * 2.5, y = -5 + 2 * 2, z = 3 + 2 * 4.5
    np.testing.assert_allclose(center_of_mass(image, grid), [5.0, -1.0, 12.0], atol=1e-9)
    image[0, 0, 0, 0, 0] = -50.0  # negative values carry no weight
    np.testing.assert_allclose(center_of_mass(image, grid), [5.0, -1.0, 12.0], atol=1e-9)
    # an empty image: the grid's centre, voxel (2.5, 3, 3.5)
    np.testing.assert_allclose(center_of_mass(torch.zeros(1, 1, 6, 7, 8), grid), [5.0, 1.0, 10.0], atol=1e-9)


def test_matrix_is_a_linear_map_about_the_centre_then_a_shift() -> None:
    linear = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, -0.2], [0.05, 0.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    centre = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    m = _matrix(linear, shift, centre).numpy()
    x = np.array([12.0, 17.0, 35.0])
    expected = (np.eye(3) + linear.numpy()) @ (x - centre.numpy()) + centre.numpy() + shift.numpy()
    np.testing.assert_allclose(m[:3, :3] @ x + m[:3, 3], expected, atol=1e-12)
    np.testing.assert_array_equal(m[3], [0.0, 0.0, 0.0, 1.0])


def _blobs(points: np.ndarray) -> np.ndarray:
    """A smooth, asymmetric test object at RAS points ``(..., 3)``: three Gaussian blobs of different sizes."""
    centres = np.array([[0.0, 0.0, 0.0], [18.0, 6.0, -4.0], [-6.0, -16.0, 10.0]])
    widths = np.array([14.0, 7.0, 9.0])
    heights = np.array([1.0, 0.8, 0.6])
    value = np.zeros(points.shape[:-1])
    for c, w, h in zip(centres, widths, heights):
        value += h * np.exp(-np.sum((points - c) ** 2, axis=-1) / (2 * w * w))
    return value


@pytest.mark.parametrize("unit", [1.0, 0.1], ids=["human-sized", "mouse-sized"])
def test_recovers_a_known_affine_between_differently_oriented_grids(unit: float) -> None:
    """moving(A x) = fixed(x) for a rotation of 10° about z, a 6 % scaling along x and a shift of (5, −4, 3) mm;
    the moving image lies on a flipped (LAS) grid of another voxel size. The recovered matrix maps points of
    the object to within 1 mm of the true ones.

    ``unit`` 0.1: the same case with every length a tenth (a 9.6 mm field of view of 0.2 mm voxels, a mouse
    brain's size): the pyramid shrinks with the field of view (:func:`affine_scale`), so the error is a tenth too;
    on the 8 and 4 mm levels of a human head (one or two voxels across here) it was 0.29 mm on average, five times
    the 0.06 mm allowed (2.9 and 0.6 in the test's human-sized units)."""
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    truth = np.eye(4)
    truth[:3, :3] = rotation @ np.diag([1.06, 1.0, 1.0])
    truth[:3, 3] = np.array([5.0, -4.0, 3.0]) * unit
    fixed_grid = _grid((48, 48, 48), 2.0 * unit, origin=(-47.0 * unit, -47.0 * unit, -47.0 * unit))
    moving_grid = _grid((40, 44, 40), 2.5 * unit, axes=(-1, 1, 1), origin=(50.0 * unit, -55.0 * unit, -48.0 * unit))
    fixed = _blobs(fixed_grid.world_points() / unit)
    # moving(y) = fixed(A⁻¹ y): the same object, moved by A
    moving_points = moving_grid.world_points()
    inverse = np.linalg.inv(truth)
    moving = _blobs((moving_points @ inverse[:3, :3].T + inverse[:3, 3]) / unit)
    found = affine_register(torch.as_tensor(fixed, dtype=torch.float32)[None, None], fixed_grid,
                            torch.as_tensor(moving, dtype=torch.float32)[None, None], moving_grid)
    assert found.shape == (4, 4)
    object_points = fixed_grid.world_points()[fixed > 0.2]  # where the object is
    error = np.linalg.norm(object_points @ (found - truth)[:3, :3].T + (found - truth)[:3, 3], axis=-1) / unit
    # the finest level is 4 mm: a quarter of its voxel at most (0.43 mm on average, 0.80 at most, 2026-11-28);
    # the identity is 3.8-11.6 mm off there
    assert error.mean() < 0.6 and error.max() < 1.0, (error.mean(), error.max())


def test_the_moving_mask_keeps_what_lies_outside_it_out_of_the_alignment() -> None:
    """The moving image holds, besides the object, a bright slab (a neck, a table) that the moving mask leaves out:
    the affine stage compares only where the fixed points map into the mask (and, with both masks, starts from the
    centres of mass of what they keep), and recovers the object's shift; without the masks the slab pulls the
    alignment away. Before, the moving mask was ignored by the affine stage."""
    truth = np.eye(4)
    truth[:3, 3] = [6.0, -5.0, 4.0]
    fixed_grid = _grid((40, 40, 40), 2.0, origin=(-39.0, -39.0, -39.0))
    moving_grid = _grid((34, 34, 40), 2.5, axes=(-1, 1, 1), origin=(42.0, -42.0, -55.0))
    fixed = _blobs(fixed_grid.world_points())
    object_frame = moving_grid.world_points() - truth[:3, 3]  # moving(y) = fixed(y − t)
    slab = (object_frame[..., 2] < -44.0) * (2.0 + 0.5 * np.sin(object_frame[..., 0] / 3.0))
    moving = _blobs(object_frame) + slab
    mask = np.linalg.norm(object_frame, axis=-1) < 36.0
    as_tensor = (lambda a: torch.as_tensor(a, dtype=torch.float32)[None, None])  # noqa: E731
    object_points = fixed_grid.world_points()[fixed > 0.2]

    def error(found: np.ndarray) -> np.ndarray:
        return np.linalg.norm(object_points @ (found - truth)[:3, :3].T + (found - truth)[:3, 3], axis=-1)

    fixed_mask = np.linalg.norm(fixed_grid.world_points(), axis=-1) < 36.0  # the same ball around the object
    masked = affine_register(as_tensor(fixed), fixed_grid, as_tensor(moving), moving_grid,
                             fixed_mask=as_tensor(fixed_mask), moving_mask=as_tensor(mask))
    assert error(masked).max() < 0.5, error(masked).max()  # 0.16 mm (2026-11-29)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the slab may also be matched from a rotated start: a warning
        unmasked = affine_register(as_tensor(fixed), fixed_grid, as_tensor(moving), moving_grid)
    assert error(unmasked).mean() > 20.0, error(unmasked).mean()  # 63 mm


def _turned_brain(geo, degrees: float) -> tuple[torch.Tensor, Grid, torch.Tensor, Grid, np.ndarray, np.ndarray]:
    """The template brain at 4 mm (fixed) and at 3 mm with its header turned ``degrees`` about an oblique axis
    through its centre (moving); the true matrix and the fixed grid's brain points."""
    shape, affine = geo.brain_grid(4.0)
    fixed_grid = Grid(shape, affine)
    fixed = geo.sample_template(fixed_grid.world_points(), 2.0)
    moving_shape, moving_affine = geo.brain_grid(3.0)
    moving = geo.sample_template(Grid(moving_shape, moving_affine).world_points(), 1.5)
    centre = Grid(moving_shape, moving_affine).corner_points().mean(0)
    truth = np.eye(4)
    truth[:3, :3] = geo.rotation([1.0, -0.5, 0.3], degrees)
    truth[:3, 3] = centre - truth[:3, :3] @ centre
    as_tensor = (lambda a: torch.as_tensor(a, dtype=torch.float32)[None, None])  # noqa: E731
    return (as_tensor(fixed), fixed_grid, as_tensor(moving), Grid(moving_shape, truth @ moving_affine), truth,
            fixed_grid.world_points()[fixed > 0.2])


def _error_mm(found: np.ndarray, truth: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points @ (found - truth)[:3, :3].T + (found - truth)[:3, 3], axis=-1)


def test_pose_search_aligns_images_whose_headers_disagree_by_130_degrees(geo) -> None:
    """A brain whose header is turned 130°: from the centres of mass alone the affine stage ends in a wrong pose
    (errors of centimetres); with the pose search it finds the alignment (within 1.5 mm in the brain, the
    finest level being 4 mm) and warns that the orientations disagree."""
    fixed, fixed_grid, moving, moving_grid, truth, brain = _turned_brain(geo, 130.0)
    plain = affine_register(fixed, fixed_grid, moving, moving_grid, pose_search=False)
    assert _error_mm(plain, truth, brain).mean() > 20.0
    with pytest.warns(UserWarning, match=r"orientations disagree by about 130°"):
        found = affine_register(fixed, fixed_grid, moving, moving_grid)
    error = _error_mm(found, truth, brain)
    assert error.mean() < 1.0 and error.max() < 1.5, (error.mean(), error.max())


def test_pose_search_keeps_the_usual_alignment_bit_for_bit(geo) -> None:
    """Headers 10° apart (within the optimiser's reach): the search finds nothing better, the result is the
    plain stage's to the last bit, with no warning; an initial matrix skips the search."""
    fixed, fixed_grid, moving, moving_grid, truth, brain = _turned_brain(geo, 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = affine_register(fixed, fixed_grid, moving, moving_grid)
    np.testing.assert_array_equal(found, affine_register(fixed, fixed_grid, moving, moving_grid, pose_search=False))
    assert _error_mm(found, truth, brain).mean() < 1.0
    start = np.eye(4)
    start[:3, 3] = [2.0, 0.0, 0.0]
    np.testing.assert_array_equal(affine_register(fixed, fixed_grid, moving, moving_grid, initial=start),
                                  affine_register(fixed, fixed_grid, moving, moving_grid, initial=start,
                                                  pose_search=False))
