"""The spatial conventions of :mod:`svreg_core.conventions`, checked on hand-computed cases.

Axis order (i, j, k) vs grid_sample's (k, j, i), ``align_corners=True`` normalisation, voxel <-> world
vectors, RAS <-> LPS, and the pull direction ``warped(x) = moving(T(x))`` of a result.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svreg_core.conventions import (
    ALIGN_CORNERS,
    RAS_TO_LPS,
    add_identity_,
    identity_grid,
    itk_geometry_from_ras_affine,
    map_points,
    normalized_to_voxel,
    pad_thin_axes,
    point_rows,
    ras_affine_from_itk,
    ras_lps_matrix,
    ras_to_lps_vectors,
    voxel_displacement_to_normalized,
    voxel_to_normalized,
    voxel_to_world_vectors,
    world_to_voxel_vectors,
)
from svreg_core.errors import InputError

SHAPE = (5, 9, 17)  # distinct sizes: 2 / (n - 1) = 0.5, 0.25, 0.125


def test_align_corners_and_lps_flip() -> None:
    assert ALIGN_CORNERS is True
    np.testing.assert_array_equal(RAS_TO_LPS, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(ras_to_lps_vectors(np.array([1.0, 2.0, 3.0])), [-1.0, -2.0, 3.0])
    v = np.random.default_rng(0).normal(size=(4, 5, 3))
    np.testing.assert_array_equal(ras_to_lps_vectors(ras_to_lps_vectors(v)), v)


def test_itk_geometry_hand_values() -> None:
    """ITK direction (columns: the LPS axes of ITK's x, y, z index), spacing and LPS origin -> voxel-to-RAS affine:
    the i axis along L (RAS -x) 2 mm steps, j along S 3 mm, k along P (RAS -y) 4 mm; origin LPS (1, 2, 3)."""
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # row-major: column 1 is (0, 0, 1)
    affine = ras_affine_from_itk(direction.ravel(), (2.0, 3.0, 4.0), (1.0, 2.0, 3.0))
    expected = np.array([[-2.0, 0, 0, -1.0], [0, 0, -4.0, -2.0], [0, 3.0, 0, 3.0], [0, 0, 0, 1.0]])
    np.testing.assert_array_equal(affine, expected)
    back = itk_geometry_from_ras_affine(affine)
    for got, want in zip(back, (direction.ravel(), [2.0, 3.0, 4.0], [1.0, 2.0, 3.0])):
        np.testing.assert_allclose(got, want, atol=1e-15)


def test_ras_lps_matrix_hand_values() -> None:
    """A shift of 10 mm to the right (RAS +x) and a 90° turn R -> A about S, written for LPS points: the shift is
    -10 mm along LPS x, the turn takes L to P. Checked on a point, and self-inverse."""
    ras = np.array([[0.0, -1.0, 0, 10.0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    lps = ras_lps_matrix(ras)
    np.testing.assert_array_equal(lps, [[0.0, -1.0, 0, -10.0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    point_ras = np.array([1.0, 2.0, 3.0, 1.0])
    point_lps = np.array([-1.0, -2.0, 3.0, 1.0])
    np.testing.assert_array_equal(lps @ point_lps, (ras @ point_ras) * [-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ras_lps_matrix(lps), ras)


def test_voxel_to_normalized_hand_values() -> None:
    m = voxel_to_normalized(SHAPE, dtype=torch.float64).numpy()
    # voxel (i, j, k) -> grid_sample (x, y, z) = (k, j, i) normalised: x = -1 + 2k/16, y = -1 + 2j/8, z = -1 + 2i/4
    np.testing.assert_allclose(m @ [0, 0, 0, 1], [-1, -1, -1, 1])
    np.testing.assert_allclose(m @ [4, 8, 16, 1], [1, 1, 1, 1])
    np.testing.assert_allclose(m @ [1, 0, 0, 1], [-1, -1, -0.5, 1])   # i moves z (last channel)
    np.testing.assert_allclose(m @ [0, 1, 0, 1], [-1, -0.75, -1, 1])  # j moves y
    np.testing.assert_allclose(m @ [0, 0, 1, 1], [-0.875, -1, -1, 1])  # k moves x (first channel)


def test_normalized_to_voxel_inverts_voxel_to_normalized() -> None:
    m = voxel_to_normalized(SHAPE, dtype=torch.float64).numpy()
    np.testing.assert_allclose(normalized_to_voxel(SHAPE) @ m, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(normalized_to_voxel(SHAPE) @ [1, -1, 0, 1], [2, 0, 16, 1])  # (x_k, y_j, z_i)
    # a one-voxel axis: every normalised value is voxel 0 of that axis
    np.testing.assert_allclose(normalized_to_voxel((1, 9, 17)) @ [0.3, 0.5, 0.7, 1], [0, 6, 10.4, 1])


def test_identity_grid_matches_voxel_to_normalized() -> None:
    grid = identity_grid(SHAPE, dtype=torch.float64)[0].numpy()
    assert grid.shape == (*SHAPE, 3)
    m = voxel_to_normalized(SHAPE, dtype=torch.float64).numpy()
    ijk = np.indices(SHAPE).transpose(1, 2, 3, 0).reshape(-1, 3)
    expected = (np.c_[ijk, np.ones(len(ijk))] @ m.T)[:, :3]
    np.testing.assert_allclose(grid.reshape(-1, 3), expected, atol=1e-12)
    np.testing.assert_allclose(grid[2, 3, 5], [-1 + 2 * 5 / 16, -1 + 2 * 3 / 8, -1 + 2 * 2 / 4])


@pytest.mark.parametrize("shape", [SHAPE, (1, 9, 17)])
def test_add_identity_equals_adding_the_identity_grid(shape) -> None:
    """In place, bitwise the sum with :func:`identity_grid`, also on a channel-first (permuted) offset."""
    disp = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    offset = voxel_displacement_to_normalized(disp)  # (N, I, J, K, 3), a permuted view
    expected = offset + identity_grid(shape)
    out = add_identity_(offset)
    assert out is offset and torch.equal(out, expected)
    assert torch.equal(add_identity_(torch.zeros(1, *shape, 3)), identity_grid(shape))


def test_identity_grid_sampling_is_identity() -> None:
    image = torch.rand(2, 3, *SHAPE, generator=torch.Generator().manual_seed(0))
    grid = identity_grid(SHAPE).expand(2, -1, -1, -1, -1)
    out = F.grid_sample(image, grid, mode="bilinear", align_corners=ALIGN_CORNERS)
    torch.testing.assert_close(out, image, atol=2e-6, rtol=0)
    # with align_corners=False the same grid would be off by up to half a voxel: the convention matters
    off = F.grid_sample(image, grid, mode="bilinear", align_corners=not ALIGN_CORNERS)
    assert float((off - image).abs().max()) > 0.1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_voxel_displacement_to_normalized_channel_and_scale(axis: int) -> None:
    disp = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    disp[:, axis] = 1.0  # one voxel along i, j or k
    out = voxel_displacement_to_normalized(disp)
    assert out.shape == (1, *SHAPE, 3)
    expected = np.zeros(3)
    expected[2 - axis] = 2.0 / (SHAPE[axis] - 1)  # (i, j, k) -> (z, y, x), align_corners units
    np.testing.assert_allclose(out[0, 1, 2, 3].numpy(), expected)
    np.testing.assert_allclose(out.reshape(-1, 3).numpy() - expected, 0.0)


def test_voxel_world_vectors_hand_values() -> None:
    # i -> +y (2 mm), j -> -x (3 mm), k -> +z (0.5 mm): a permuted, flipped, anisotropic grid
    affine = np.array([[0, -3.0, 0, 10], [2.0, 0, 0, -5], [0, 0, 0.5, 7], [0, 0, 0, 1]])
    v = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 2.0, -4.0]])
    world = voxel_to_world_vectors(v, affine)
    np.testing.assert_allclose(world, [[0, 2, 0], [-3, 0, 0], [0, 0, 0.5], [-6, 2, -2]])
    np.testing.assert_allclose(world_to_voxel_vectors(world, affine), v, atol=1e-12)


def test_map_points_hand_values_numpy_and_torch() -> None:
    # the grid above: voxel (i, j, k) -> RAS (10 - 3 j, -5 + 2 i, 7 + 0.5 k); points as rows, any leading shape
    affine = np.array([[0, -3.0, 0, 10], [2.0, 0, 0, -5], [0, 0, 0.5, 7], [0, 0, 0, 1]])
    ijk = np.array([[[0.0, 0, 0], [1.0, 2.0, -4.0]]])
    expected = [[[10, -5, 7], [4, -3, 5]]]
    np.testing.assert_allclose(map_points(affine, ijk), expected)
    as_torch = map_points(torch.as_tensor(affine), torch.as_tensor(ijk))
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (1, 2, 3)
    np.testing.assert_allclose(as_torch.numpy(), expected)


def test_result_is_pull_direction(geo) -> None:
    """``warped(x) = moving(T(x))`` with ``T(x) = A x``: a world-linear ramp shows which way A acts."""
    from svreg_core.image import Grid, Image
    from svreg_core.optim.parameters import RegistrationParameters
    from svreg_core.registration import RegistrationResult

    f_aff = geo.make_affine(np.diag([-2.0, 2.0, 2.0]), [20.0, -10.0, -8.0])
    fixed = Image(np.ones((12, 11, 10), np.float32), f_aff)
    m_shape, m_aff = geo.covering_grid(fixed.shape, f_aff, geo.rotation([0, 0, 1], 20.0) @ np.diag([1.5, 1.5, 2.0]),
                                       margin=5)
    y = geo.world_points(m_shape, m_aff)
    ramp = lambda p: 0.3 * p[..., 0] - 0.2 * p[..., 1] + 0.1 * p[..., 2] + 5.0  # noqa: E731
    moving = Image(ramp(y).astype(np.float32), m_aff)
    a = geo.make_affine(geo.rotation([1, 0, 0], 5.0), [3.0, -2.0, 1.5])
    x = geo.world_points(fixed.shape, f_aff)
    disp = (x @ a[:3, :3].T + a[:3, 3] - x).astype(np.float32)
    work = Grid((4, 4, 4), f_aff @ np.diag([4.0, 4.0, 4.0, 1.0]))
    result = RegistrationResult(fixed=fixed, moving=moving, parameters=RegistrationParameters(device="cpu"),
                                affine=a, working_grid=work, velocity=torch.zeros(1, 3, 4, 4, 4),
                                weight=torch.ones(1, 1, 4, 4, 4), displacement=disp,
                                deformable_displacement=np.zeros_like(disp))
    # every T(x) lies inside the moving grid
    vox = geo.to_voxel(x + disp, m_aff)
    assert vox.min() > 0 and np.all(vox.max(axis=(0, 1, 2)) < np.asarray(m_shape) - 1)
    np.testing.assert_allclose(result.warped.data, ramp(x @ a[:3, :3].T + a[:3, 3]), atol=2e-3)
    np.testing.assert_allclose(result.transform_points(x.reshape(-1, 3)[::37]),
                               (x.reshape(-1, 3)[::37]) @ a[:3, :3].T + a[:3, 3], atol=1e-4)


def test_pad_thin_axes_hand_values() -> None:
    """A single slice gets a slice of 0 on each side of its one-voxel axes, every voxel at its world position: the
    affine's origin moves back one voxel step along each padded axis (here the i step (2, 0, 0.5) mm, then also the
    j step (0, 0, 1.5) mm for a second thin axis)."""
    affine = np.array([[2.0, 0.0, 0.0, 10.0], [0.0, 0.0, -3.0, 20.0], [0.0, 1.5, 0.0, 30.0], [0, 0, 0, 1.0]])
    affine[:3, 0] = [2.0, 0.0, 0.5]  # an oblique i axis
    data = np.arange(1.0, 13.0).reshape(1, 3, 4)
    padded, moved = pad_thin_axes(data, affine)
    assert padded.shape == (3, 3, 4)
    np.testing.assert_array_equal(padded[1], data[0])
    assert not padded[0].any() and not padded[2].any()
    np.testing.assert_allclose(moved[:3, :3], affine[:3, :3], atol=0)
    np.testing.assert_allclose(moved[:3, 3], [8.0, 20.0, 29.5], atol=1e-12)
    for j, k in ((0, 0), (2, 3)):  # the same world point before and after
        np.testing.assert_allclose(moved @ [1, j, k, 1], affine @ [0, j, k, 1], atol=1e-12)
    two, moved_two = pad_thin_axes(np.full((1, 1, 4), 7.0), affine)
    assert two.shape == (3, 3, 4) and two.sum() == 28.0 and (two[1, 1] == 7.0).all()
    np.testing.assert_allclose(moved_two[:3, 3], [8.0, 20.0, 28.0], atol=1e-12)  # j steps (0, 0, 1.5) mm
    thick = np.ones((2, 3, 4))
    same, kept = pad_thin_axes(thick, affine)
    assert same is thick and kept is affine  # nothing thin: unchanged


def test_point_rows_takes_n_by_3_numbers_only() -> None:
    rows = point_rows([[1, 2, 3], [4.5, float("nan"), -6]])
    assert rows.dtype == np.float64 and rows.shape == (2, 3) and np.isnan(rows[1, 1])
    np.testing.assert_array_equal(point_rows(np.zeros((0, 3))), np.zeros((0, 3)))
    with pytest.raises(InputError, match=r"^landmarks must be an \(N, 3\) array of RAS millimetres, not of shape "
                                         r"\(3,\): give a single point as \[\[x, y, z\]\]\.$"):
        point_rows([1.0, 2.0, 3.0], "landmarks")
    with pytest.raises(InputError, match=r"^points must be an \(N, 3\) array of RAS millimetres, not of shape "
                                         r"\(2, 2\)\.$"):
        point_rows([[1, 2], [3, 4]])
    with pytest.raises(InputError, match=r"^points must be an \(N, 3\) array of RAS millimetres, not \[\['a', "):
        point_rows([["a", "b", "c"]])
