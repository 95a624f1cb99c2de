"""The canonical network grid: RAS axes, isotropic, centred on the foreground, shape a multiple."""
from __future__ import annotations

import numpy as np
import pytest

from svreg_core.image import Image
from svreg_core.image.network_grid import foreground_extent, network_grid


def _blob_image(affine: np.ndarray) -> Image:
    data = np.zeros((20, 24, 16), np.float32)
    data[5:15, 6:18, 4:12] = 1.0  # voxel box 5..14, 6..17, 4..11
    return Image(data, affine)


def test_extent_and_grid_of_an_axis_aligned_image() -> None:
    image = _blob_image(np.diag([2.0, 1.0, 3.0, 1.0]))
    lo, hi = foreground_extent(image)
    np.testing.assert_allclose(lo, [10.0, 6.0, 12.0])
    np.testing.assert_allclose(hi, [28.0, 17.0, 33.0])
    grid = network_grid(image, 2.0, multiple=8, margin_mm=4.0)
    # extents + 8 mm: 26, 19, 29 mm -> 13+1=14, 10.5->11+1=12, 14.5->15+1=16 voxels -> rounded to 16, 16, 16
    assert grid.shape == (16, 16, 16)
    np.testing.assert_allclose(grid.affine[:3, :3], np.diag([2.0, 2.0, 2.0]))
    centre = grid.affine[:3, :3] @ ((np.array(grid.shape) - 1) / 2) + grid.affine[:3, 3]
    np.testing.assert_allclose(centre, (lo + hi) / 2)


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, 1), (1, -1, -1)])
def test_flipped_and_oblique_images_give_a_ras_grid_around_the_same_world_box(flip) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(np.array(flip) * 1.5)
    affine[:3, 3] = [-10.0, 5.0, 2.0]
    image = _blob_image(affine)
    grid = network_grid(image, 3.0, shape=(12, 14, 10))
    assert grid.shape == (12, 14, 10)
    assert np.all(np.diag(grid.affine)[:3] > 0) and np.count_nonzero(grid.affine[:3, :3]) == 3
    lo, hi = foreground_extent(image)
    centre = grid.affine[:3, :3] @ ((np.array(grid.shape) - 1) / 2) + grid.affine[:3, 3]
    np.testing.assert_allclose(centre, (lo + hi) / 2, atol=1e-9)
    # the blob's world centre does not depend on how the voxels are stored
    np.testing.assert_allclose((lo + hi) / 2, affine[:3, :3] @ [9.5, 11.5, 7.5] + affine[:3, 3], atol=1e-9)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        network_grid(_blob_image(np.eye(4)), 0.0)
