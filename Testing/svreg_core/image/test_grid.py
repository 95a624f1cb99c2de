"""Grid geometry: voxel centres, spacing/direction, isotropic resampling and cropping, hand-computed."""
from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from svreg_core.image import Grid


def _oblique(geo) -> np.ndarray:
    return geo.make_affine(geo.rotation([1.0, -2.0, 0.5], 25.0) @ np.diag([2.0, 1.0, 3.0]), [-30.0, 12.5, 7.0])


def test_contains_the_voxels_out_to_half_a_voxel() -> None:
    """A 4x5x6 grid of 2 mm voxels from RAS (10, 20, 30): its field of view spans 9-17, 19-29, 29-41 mm."""
    grid = Grid((4, 5, 6), np.diag([2.0, 2.0, 2.0, 1.0]) + np.array([[0, 0, 0, 10.0], [0, 0, 0, 20.0],
                                                                         [0, 0, 0, 30.0], [0, 0, 0, 0]]))
    points = np.array([[9.0, 19.0, 29.0], [17.0, 29.0, 41.0], [8.99, 25.0, 35.0], [12.0, 29.01, 35.0],
                       [12.0, 25.0, 41.01], [13.0, 24.0, 35.0]])
    np.testing.assert_array_equal(grid.contains(points), [True, True, False, False, False, True])
    assert grid.contains(points.reshape(2, 3, 3)).shape == (2, 3)
    np.testing.assert_array_equal(grid.to_voxel(points[:2]), [[-0.5, -0.5, -0.5], [3.5, 4.5, 5.5]])
    np.testing.assert_array_equal(grid.contains_voxels(grid.to_voxel(points)), grid.contains(points))


def test_to_voxel_inverts_world_points(geo) -> None:
    grid = Grid((10, 20, 5), _oblique(geo))
    np.testing.assert_allclose(grid.to_voxel(grid.world_points()), np.indices((10, 20, 5)).transpose(1, 2, 3, 0),
                               atol=1e-9)


def test_world_points_match_affine(geo) -> None:
    aff = _oblique(geo)
    grid = Grid((10, 20, 5), aff)
    pts = grid.world_points()
    assert pts.shape == (10, 20, 5, 3)
    np.testing.assert_allclose(pts, nib.affines.apply_affine(aff, np.indices((10, 20, 5)).transpose(1, 2, 3, 0)),
                               atol=1e-9)
    np.testing.assert_allclose(pts[3, 7, 2], aff @ [3, 7, 2, 1] @ np.eye(4)[:, :3], atol=1e-9)


def test_spacing_and_direction(geo) -> None:
    aff = _oblique(geo)
    grid = Grid((10, 20, 5), aff)
    np.testing.assert_allclose(grid.spacing, [2.0, 1.0, 3.0])
    np.testing.assert_allclose(grid.direction, geo.rotation([1.0, -2.0, 0.5], 25.0), atol=1e-12)
    flipped = Grid((4, 4, 4), np.diag([-1.5, 2.0, -0.5, 1.0]))
    np.testing.assert_allclose(flipped.spacing, [1.5, 2.0, 0.5])
    np.testing.assert_allclose(flipped.direction, np.diag([-1.0, 1.0, -1.0]))


def test_resampled_keeps_origin_and_direction(geo) -> None:
    aff = _oblique(geo)
    grid = Grid((10, 20, 5), aff)
    new = grid.resampled(4.0)
    # extents (n - 1) * spacing = (18, 19, 12) mm -> floor(extent / 4) + 1 voxels
    assert new.shape == (5, 5, 4)
    np.testing.assert_allclose(new.spacing, [4.0, 4.0, 4.0])
    np.testing.assert_allclose(new.direction, grid.direction, atol=1e-12)
    np.testing.assert_allclose(new.affine[:3, 3], aff[:3, 3], atol=1e-12)  # voxel (0, 0, 0) stays put
    # the last new voxel centres lie inside the original lattice
    corners = geo.to_voxel(new.world_points()[[0, -1]][:, [0, -1]][:, :, [0, -1]].reshape(-1, 3), aff)
    assert corners.min() >= -1e-9 and np.all(corners.max(0) <= np.asarray(grid.shape) - 1 + 1e-9)
    # a finer spacing than the grid is allowed; a tiny grid keeps at least 2 voxels per axis
    assert grid.resampled(0.5).shape == (37, 39, 25)
    assert Grid((3, 3, 3), np.eye(4)).resampled(10.0).shape == (2, 2, 2)


def test_resampled_integer_ratio_is_a_strided_subset(geo) -> None:
    lin = geo.rotation([1.0, 1.0, 0.0], 30.0) @ np.diag([1.0, 2.0, 0.5])
    grid = Grid((11, 8, 17), geo.make_affine(lin, [5.0, -7.0, 3.0]))
    new = grid.resampled(2.0)  # ratios 2, 1, 4
    assert new.shape == (6, 8, 5)
    np.testing.assert_allclose(new.world_points(), grid.world_points()[::2, ::1, ::4], atol=1e-9)


def test_cropped_sub_lattice(geo) -> None:
    aff = _oblique(geo)
    grid = Grid((10, 20, 5), aff)
    sub = grid.cropped((2, 3, 1), (6, 7, 4))
    assert sub.shape == (4, 4, 3)
    np.testing.assert_allclose(sub.world_points(), grid.world_points()[2:6, 3:7, 1:4], atol=1e-9)
    clipped = grid.cropped((-5, 18, 0), (4, 40, 99))
    assert clipped.shape == (4, 2, 5)
    np.testing.assert_allclose(clipped.world_points(), grid.world_points()[0:4, 18:20, :], atol=1e-9)


def test_grid_normalises_types() -> None:
    grid = Grid([np.int64(4), 5.0, 6], np.eye(4).tolist())
    assert grid.shape == (4, 5, 6) and all(type(n) is int for n in grid.shape)
    assert isinstance(grid.affine, np.ndarray) and grid.affine.dtype == np.float64
    with pytest.raises(dataclasses.FrozenInstanceError):
        grid.shape = (1, 1, 1)  # frozen


def test_same_as(geo) -> None:
    aff = _oblique(geo)
    grid = Grid((10, 20, 5), aff)
    assert grid.same_as(Grid((10, 20, 5), aff + 1e-6))
    assert not grid.same_as(Grid((10, 20, 6), aff))
    shifted = aff.copy()
    shifted[0, 3] += 0.01
    assert not grid.same_as(Grid((10, 20, 5), shifted))
    assert grid.same_as(Grid((10, 20, 5), shifted), atol=0.02)


def test_box_voxels_axis_aligned_by_hand() -> None:
    """2 mm voxels, origin (10, -4, 0): voxel centres R = 10, 12, ..., A = -4, -2, ..., S = 0, 2, ..."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 0.0]
    grid = Grid((10, 10, 10), affine)
    # R 13..19 holds centres 14, 16, 18 (i = 2..4); A -4..1 holds -4, -2, 0 (j = 0..2); corners in any order
    assert grid.box_voxels(np.array([19.0, 1.0, 100.0]), np.array([13.0, -4.0, 5.0])) == ((2, 0, 3), (5, 3, 10))
    assert grid.box_voxels(np.array([-50.0, -50, -50]), np.array([0.0, 0, 0])) is None  # R < 10: outside


def test_box_voxels_oblique_covers_the_box(geo) -> None:
    grid = Grid((30, 40, 20), _oblique(geo))
    centre = grid.world_points()[15, 20, 10]
    start, stop = grid.box_voxels(centre - 5.0, centre + 5.0)
    block = grid.world_points()[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]].reshape(-1, 3)
    inside = np.all(np.abs(grid.world_points().reshape(-1, 3) - centre) <= 5.0, axis=1)
    assert inside.sum() > 10
    # every voxel centre inside the box is in the block, and the block is smaller than the grid
    in_block = {tuple(p) for p in np.round(block, 6)}
    assert all(tuple(p) in in_block for p in np.round(grid.world_points().reshape(-1, 3)[inside], 6))
    assert block.shape[0] < 30 * 40 * 20


def test_corner_points_are_the_extreme_voxel_centres(geo) -> None:
    grid = Grid((4, 5, 6), _oblique(geo))
    points = grid.world_points()
    expected = np.array([points[i, j, k] for i in (0, -1) for j in (0, -1) for k in (0, -1)])
    np.testing.assert_allclose(grid.corner_points(), expected, atol=1e-9)


def test_slabs_tile_the_grid_with_its_own_world_points(geo) -> None:
    grid = Grid((7, 5, 4), _oblique(geo))
    slabs = list(grid.slabs(voxels=45))  # 45 // (5 * 4) = 2 rows per slab
    assert [(a, b) for a, b, _ in slabs] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    full = grid.world_points()
    for start, stop, slab in slabs:
        assert slab.shape == (stop - start, 5, 4)
        np.testing.assert_allclose(slab.world_points(), full[start:stop], atol=1e-12)
    assert [(a, b) for a, b, _ in grid.slabs(voxels=1)] == [(i, i + 1) for i in range(7)]  # at least one row
