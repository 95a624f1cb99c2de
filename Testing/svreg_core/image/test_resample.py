"""Resampling through world coordinates against exact flips/permutations, an analytic smooth image,
SimpleITK's ``Resample`` on a real template, and hand-computed smoothing."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from svreg_core.image import Grid
from svreg_core.image.normalize import robust_normalize
from svreg_core.image.resample import (
    antialias_sigma,
    gaussian_smooth,
    resample,
    source_coordinates,
    target_world_points,
    world_to_source_normalized,
)

SHAPE = (20, 22, 18)


def _source_affine(geo) -> np.ndarray:
    # LAS-like, anisotropic, slightly oblique
    return geo.make_affine(geo.rotation([0.2, 0.1, 1.0], 8.0) @ np.diag([-2.0, 1.5, 2.5]), [18.0, -16.0, -20.0])


def _smooth(points: np.ndarray) -> np.ndarray:
    """A smooth analytic image of world position (wavelengths >= 40 mm)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return (np.sin(2 * np.pi * x / 45.0 + 0.3) * np.cos(2 * np.pi * y / 50.0) + 0.5 * np.sin(2 * np.pi * z / 40.0)
            + 0.01 * x).astype(np.float32)


def _tensor(data: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(data, dtype=np.float32))[None, None]


def _resample(data: np.ndarray, src: Grid, dst: Grid, **kw) -> np.ndarray:
    return resample(_tensor(data), src, dst, **kw)[0, 0].numpy()


def _targets(geo, src: Grid) -> dict[str, Grid]:
    n = np.asarray(src.shape)
    flip_i = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_i[0, 3] = n[0] - 1
    swap_ij = np.eye(4)[[1, 0, 2, 3]]
    oblique = geo.covering_grid(src.shape, src.affine, geo.rotation([1.0, -1.0, 0.5], 25.0) * 1.7)
    aniso = geo.covering_grid(src.shape, src.affine, np.diag([3.1, -1.2, 2.2]) @ np.eye(3)[[2, 0, 1]])
    return {"flipped": Grid(src.shape, src.affine @ flip_i),
            "permuted": Grid((n[1], n[0], n[2]), src.affine @ swap_ij),
            "oblique": Grid(*oblique), "anisotropic": Grid(*aniso)}


def test_flip_and_permutation_are_exact(geo) -> None:
    src = Grid(SHAPE, _source_affine(geo))
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    t = _targets(geo, src)
    np.testing.assert_allclose(_resample(data, src, t["flipped"]), data[::-1], atol=1e-4)
    np.testing.assert_allclose(_resample(data, src, t["permuted"]), data.transpose(1, 0, 2), atol=1e-4)


def _inside(geo, points: np.ndarray, grid: Grid, margin: float) -> np.ndarray:
    vox = geo.to_voxel(points, grid.affine)
    return np.all((vox >= margin) & (vox <= np.asarray(grid.shape) - 1 - margin), axis=-1)


@pytest.mark.parametrize("name", ["oblique", "anisotropic"])
def test_resample_follows_world_coordinates_and_back(geo, name: str) -> None:
    src = Grid(SHAPE, _source_affine(geo))
    data = _smooth(geo.world_points(src.shape, src.affine))
    dst = _targets(geo, src)[name]
    pts = geo.world_points(dst.shape, dst.affine)
    out = _resample(data, src, dst)
    inside = _inside(geo, pts, src, 0.0)
    assert inside.mean() > 0.3
    # value at each target voxel = the analytic image at its world point (up to trilinear error)
    err = np.abs(out - _smooth(pts))[inside]
    assert err.max() < 0.03, err.max()
    assert np.all(out[~_inside(geo, pts, src, -1.0)] == 0)  # zero padding far outside
    # and back onto the source grid: reproduces the original in the interior
    back = _resample(out, dst, src)
    interior = _inside(geo, geo.world_points(src.shape, src.affine), dst, 1.0)
    interior &= _inside(geo, geo.world_points(src.shape, src.affine), src, 2.0)
    assert interior.sum() > 1000
    assert np.abs(back - data)[interior].max() < 0.05


@pytest.mark.parametrize("name", ["flipped", "permuted", "oblique", "anisotropic"])
def test_source_coordinates_are_those_of_the_world_points(geo, name: str) -> None:
    # the affine shortcut (one composed matrix: a float64 plane plus rows) equals mapping every voxel centre through
    # world space in float64, with and without a world transform, on oblique and one-slice targets
    src = Grid(SHAPE, _source_affine(geo))
    target = _targets(geo, src)[name]
    w = geo.make_affine(geo.rotation([0.3, 1.0, 0.2], 12.0), [3.0, -2.0, 5.0])
    for transform in (None, w):
        for grid in (target, target.cropped((4, 0, 0), (5, *target.shape[1:]))):
            expected = world_to_source_normalized(target_world_points(grid, transform, dtype=torch.float64), src)
            got = source_coordinates(grid, src, transform)
            assert got.shape == expected.shape and got.dtype == torch.float32
            np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-6)


def test_world_transform_pulls_from_transformed_points(geo) -> None:
    src = Grid(SHAPE, _source_affine(geo))
    data = _smooth(geo.world_points(src.shape, src.affine))
    dst = Grid(*geo.covering_grid(SHAPE, src.affine, np.diag([2.0, 2.0, 2.0])))
    w = geo.make_affine(geo.rotation([0, 0, 1], 6.0), [4.0, -3.0, 2.0])
    out = _resample(data, src, dst, world_transform=w)
    pts = geo.world_points(dst.shape, dst.affine)
    moved = pts @ w[:3, :3].T + w[:3, 3]
    inside = _inside(geo, moved, src, 0.0)
    assert np.abs(out - _smooth(moved))[inside].max() < 0.03
    assert np.abs(out - _smooth(pts))[inside].max() > 0.2  # W really acts


@pytest.mark.parametrize("name", ["flipped", "permuted", "oblique", "anisotropic"])
def test_agrees_with_simpleitk_on_a_real_template(geo, name: str) -> None:
    shape, aff = geo.brain_grid(5.0)
    src = Grid(shape, aff)
    data = geo.sample_template(geo.world_points(shape, aff), 2.0)
    dst = _targets(geo, src)[name]
    ours = _resample(data, src, dst)
    ref = sitk.Resample(geo.sitk_image(data, aff), geo.sitk_image(np.zeros(dst.shape), dst.affine),
                        sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    theirs = geo.sitk_array(ref)
    inside = _inside(geo, geo.world_points(dst.shape, dst.affine), src, 0.01)
    assert inside.mean() > 0.3 and np.ptp(theirs[inside]) > 0.5
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=2e-4)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gaussian_smooth_acts_on_the_named_axis(axis: int) -> None:
    shape = (15, 17, 19)
    delta = torch.zeros(1, 2, *shape, dtype=torch.float64)
    centre = tuple(n // 2 for n in shape)
    delta[(0, slice(None)) + centre] = 1.0
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = 1.5
    out = gaussian_smooth(delta, tuple(sigma))[0, 0].numpy()
    assert out.sum() == pytest.approx(1.0)
    line = np.moveaxis(out, axis, 0)[(slice(None),) + tuple(c for a, c in enumerate(centre) if a != axis)]
    x = np.arange(shape[axis]) - centre[axis]
    assert line.sum() == pytest.approx(1.0)  # all mass stays on that line
    assert np.sum(line * x ** 2) == pytest.approx(1.5 ** 2, rel=0.02)
    torch.testing.assert_close(gaussian_smooth(delta, (0.0, 0.0, 0.0)), delta)


def test_antialias_sigma_hand_values() -> None:
    grid = Grid((4, 4, 4), np.diag([1.0, 2.0, 4.0, 1.0]))
    np.testing.assert_allclose(antialias_sigma(grid, 4.0), [0.5 * np.sqrt(15), 0.5 * np.sqrt(3), 0.0])


def test_robust_normalize() -> None:
    rng = np.random.default_rng(0)
    data = np.zeros((20, 20, 20), np.float32)
    data[5:15, 5:15, 5:15] = rng.uniform(100, 200, (10, 10, 10))
    data[10, 10, 10] = 1e6  # an outlier above the 99.5th percentile
    out = robust_normalize(data)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[data == 0] == 0)
    fg = out[5:15, 5:15, 5:15]
    # a zero background keeps 0 as the lower end; the upper end is the 99.5th percentile (~199.5), so the
    # outlier does not squash the range: the median 150 maps to about 0.75
    assert np.median(fg) == pytest.approx(0.75, abs=0.02)
    np.testing.assert_array_equal(robust_normalize(np.full((3, 3, 3), 7.0)), 0.0)


# --------------------------------------------------------------------------- anti-aliased pyramid


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 3, 1), (4, 1, 2)])
def test_strided_smoothing_is_smoothing_then_subsampling(stride) -> None:
    x = torch.rand(1, 2, 17, 14, 11, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = (1.2, 0.0, 0.7)
    full = gaussian_smooth(x, sigma)
    strided = gaussian_smooth(x, sigma, stride=stride)
    torch.testing.assert_close(strided, full[:, :, ::stride[0], ::stride[1], ::stride[2]])
    # no smoothing at all: plain subsampling
    torch.testing.assert_close(gaussian_smooth(x, (0.0, 0.0, 0.0), stride=stride),
                               x[:, :, ::stride[0], ::stride[1], ::stride[2]])


def _very_smooth(points: np.ndarray) -> np.ndarray:
    """Wavelengths >= 100 mm, slope <= 0.1 per mm."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return (np.sin(2 * np.pi * x / 100.0 + 0.3) + np.cos(2 * np.pi * (y - z) / 120.0)).astype(np.float32)


def _fine_grid(geo) -> Grid:
    # oblique, LAS-like, anisotropic 1 x 2 x 1.5 mm
    lin = geo.rotation([0.3, -0.2, 1.0], 12.0) @ np.diag([-1.0, 2.0, 1.5])
    return Grid((48, 26, 34), geo.make_affine(lin, [20.0, -25.0, -24.0]))


def test_downsample_geometry_and_values(geo) -> None:
    from svreg_core.image.resample import downsample

    fine = _fine_grid(geo)
    data = _very_smooth(geo.world_points(fine.shape, fine.affine))
    out, grid = downsample(_tensor(data), fine, 4.0)
    expected_grid = fine.resampled(4.0)
    assert grid.same_as(expected_grid) and out.shape[2:] == expected_grid.shape
    pts = geo.world_points(grid.shape, grid.affine)
    inside = _inside(geo, pts, fine, 2.0)
    assert inside.mean() > 0.5
    # a very smooth image is barely changed by the anti-aliasing filter; a geometry slip of 1 mm would
    # show as an error of about 0.1
    err = np.abs(out[0, 0].numpy() - _very_smooth(pts))[inside]
    assert err.max() < 0.03, err.max()
    # already coarse enough: returned as is
    same, same_grid = downsample(out, grid, 4.0)
    assert same is out and same_grid is grid


def test_downsample_removes_aliasing(geo) -> None:
    from svreg_core.image.resample import downsample

    fine = Grid((65, 20, 20), np.diag([1.0, 4.0, 4.0, 1.0]))
    stripes = np.where(np.arange(65) % 2 == 0, 1.0, -1.0)[:, None, None] * np.ones((65, 20, 20))
    out, grid = downsample(_tensor(stripes), fine, 4.0)
    assert grid.shape[0] == 17  # its voxel centres fall on every 4th fine voxel, all with value +1
    inner = out[0, 0, 2:-2]  # away from the replicate-padded ends
    assert float(inner.abs().max()) < 0.05  # the Nyquist-frequency stripes average out ...
    naive = resample(_tensor(stripes), fine, grid)
    assert float(naive.abs().max()) > 0.9  # ... where plain resampling aliases them


def test_antialiased_level_is_the_same_for_a_flipped_and_permuted_copy(geo) -> None:
    """Smoothing on each image's own grid, then one sampling at the level's points: an image and the
    same image on a flipped, permuted grid give the same level image (up to float rounding)."""
    from svreg_core.image.resample import antialiased

    fine = _fine_grid(geo)
    data = np.random.default_rng(3).random(fine.shape).astype(np.float32)
    affine = fine.affine.copy()
    affine[:3, 3] += affine[:3, 1] * (fine.shape[1] - 1)
    affine[:3, 1] *= -1
    copy_affine = affine[:, [2, 0, 1, 3]]
    copy = Grid(tuple(fine.shape[a] for a in (2, 0, 1)), copy_affine)
    copy_data = np.transpose(np.flip(data, 1), (2, 0, 1)).copy()
    level = fine.resampled(4.0).cropped((1, 1, 1), (6, 5, 6))
    a = resample(antialiased(_tensor(data), fine, 4.0), fine, level)
    b = resample(antialiased(_tensor(copy_data), copy, 4.0), copy, level)
    assert float((a - b).abs().max()) < 1e-5
    # the smoothing acts (white noise loses most of its variance at 4 mm) ...
    assert float(antialiased(_tensor(data), fine, 4.0).std()) < 0.5 * float(data.std())
    # ... while resampling each copy onto its own coarse grid first (anchored at its own voxel 0) and then
    # onto the level's points interpolates twice, differently for the two copies
    from svreg_core.image.resample import downsample
    twice_a = resample(*downsample(_tensor(data), fine, 4.0), level)
    twice_b = resample(*downsample(_tensor(copy_data), copy, 4.0), level)
    assert float((twice_a - twice_b).abs().max()) > 100 * float((a - b).abs().max())


def test_large_target_is_filled_slab_by_slab_with_the_same_values(geo) -> None:
    """A target of more than one slab (1.3 M voxels) gets what one pass over all its points gives."""
    from svreg_core.image.resample import sample_at_points, target_world_points
    src = Grid(SHAPE, _source_affine(geo))
    source = torch.as_tensor(_smooth(geo.world_points(src.shape, src.affine)), dtype=torch.float32)[None, None]
    dst = Grid((130, 128, 80), geo.make_affine(geo.rotation([1, 0, 1], 20.0) * 0.4, [-20.0, -25.0, -15.0]))
    assert len(list(dst.slabs())) > 1
    w = geo.make_affine(geo.rotation([0, 0, 1], 6.0), [1.0, -1.0, 0.5])
    slabbed = resample(source, src, dst, world_transform=w, padding_mode="border")
    whole = sample_at_points(source, src, target_world_points(dst, w), padding_mode="border")
    assert slabbed.shape == (1, 1, *dst.shape)
    torch.testing.assert_close(slabbed, whole, atol=1e-5, rtol=0)


def _general(source: torch.Tensor, src: Grid, dst: Grid, w: np.ndarray | None, padding_mode: str) -> torch.Tensor:
    """The one-``grid_sample`` resampling (the path for oblique grids), as the reference."""
    from svreg_core.image.sampling import grid_sample
    coords = source_coordinates(dst, src, w, dtype=source.dtype)
    return grid_sample(source, coords.expand(source.shape[0], -1, -1, -1, -1), padding_mode=padding_mode)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_aligned_grids_are_interpolated_axis_by_axis_as_grid_sample(geo, padding_mode: str) -> None:
    """A coarse grid onto a finer one with its axes permuted and flipped and reaching beyond the source (so that
    the padding matters), and through a world shift: the axis-by-axis path gives grid_sample's values."""
    from svreg_core.image.resample import _axis_map
    src = Grid((9, 11, 7), geo.make_affine(np.diag([3.0, -2.0, 4.0]), [-10.0, 12.0, -8.0]))
    # target axes: (source k flipped, source i, source j), 1.3 mm, starting 2 mm outside the source
    dst = Grid((26, 22, 25), geo.make_affine(np.array([[0.0, 1.3, 0], [0, 0, -1.3], [-1.3, 0, 0]]),
                                             [-12.0, 14.0, 18.0]))
    shift = geo.make_affine(np.eye(3), [0.7, -0.4, 1.1])
    assert _axis_map(src, dst, shift)[0] == (2, 0, 1)
    source = torch.randn(2, 3, *src.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = resample(source, src, dst, shift, padding_mode=padding_mode)
    reference = _general(source, src, dst, shift, padding_mode)
    assert ours.shape == (2, 3, *dst.shape) and ours.is_contiguous()
    torch.testing.assert_close(ours, reference, atol=1e-9, rtol=0)
    if padding_mode == "zeros":
        assert (reference == 0).any()  # some target voxels lie beyond the source


def test_axis_by_axis_hand_computed() -> None:
    """A 2 mm ramp ``f(i, j, k) = i + 10 j + 100 k`` sampled at 1 mm: halfway values are the means, the points
    beyond the last voxel get the border value or zero."""
    src = Grid((3, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0]))
    dst = Grid((6, 3, 3), np.diag([1.0, 1.0, 1.0, 1.0]))
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in src.shape], indexing="ij")
    ramp = torch.as_tensor(i + 10 * j + 100 * k)[None, None]
    border = resample(ramp, src, dst, padding_mode="border")[0, 0]
    # target (a, b, c) is source (a / 2, b / 2, c / 2); a = 5 is 0.5 voxel beyond i = 2, b = c = 2 lie on j = k = 1
    np.testing.assert_allclose(border[:, 1, 1].numpy(), [55.0, 55.5, 56.0, 56.5, 57.0, 57.0])
    np.testing.assert_allclose(border[3, :, 2].numpy(), [101.5, 106.5, 111.5])
    zeros = resample(ramp, src, dst, padding_mode="zeros")[0, 0]
    assert float(zeros[5, 1, 1]) == pytest.approx(0.5 * 57.0)  # half of the upper neighbour is outside
    np.testing.assert_allclose(zeros[:5, 1, 1].numpy(), border[:5, 1, 1].numpy())


def test_oblique_grids_or_large_sources_keep_grid_sample(geo) -> None:
    from svreg_core.image.resample import SEPARABLE_MAX_SOURCE, _axis_map
    src = Grid((9, 11, 7), np.diag([2.0, 2.0, 2.0, 1.0]))
    oblique = Grid((9, 11, 7), geo.make_affine(geo.rotation([0, 0, 1], 10.0) * 2.0, [0.0, 0.0, 0.0]))
    assert _axis_map(src, oblique, None) is None
    source = torch.randn(1, 1, *src.shape, dtype=torch.float64)
    torch.testing.assert_close(resample(source, src, oblique), _general(source, src, oblique, None, "zeros"),
                               atol=0, rtol=0)
    big = Grid((SEPARABLE_MAX_SOURCE + 1, 4, 4), np.eye(4))
    big_source = torch.randn(1, 1, *big.shape, dtype=torch.float64)
    shifted = Grid(big.shape, geo.make_affine(np.eye(3), [0.3, 0.2, 0.1]))
    torch.testing.assert_close(resample(big_source, big, shifted), _general(big_source, big, shifted, None, "zeros"),
                               atol=0, rtol=0)


def test_own_grid_is_a_copy(geo) -> None:
    """Onto its own grid (of any size and orientation) a source comes back bit for bit, as a new tensor;
    grid_sample's float32 coordinates would move it by rounding."""
    big = Grid((140, 6, 5), geo.make_affine(geo.rotation([1, 2, 3], 30.0) * 1.5, [3.0, -2.0, 1.0]))
    source = torch.randn(1, 2, *big.shape)
    for w in (None, np.eye(4)):
        out = resample(source, big, big, w, padding_mode="border")
        assert torch.equal(out, source) and out.data_ptr() != source.data_ptr()
