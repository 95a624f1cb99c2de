"""Dice and HD95 on hand-made label volumes with hand-computed answers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from svreg_core.errors import InputError
from svreg_core.metrics import dice, hd95, scored_labels


def _two_cubes() -> tuple[np.ndarray, np.ndarray]:
    fixed = np.zeros((12, 12, 12), dtype=np.int32)
    warped = np.zeros_like(fixed)
    fixed[2:6, 2:6, 2:6] = 1          # 64 voxels
    warped[3:7, 2:6, 2:6] = 1         # shifted by one voxel along i: overlap 3*4*4 = 48
    fixed[8:10, 8:10, 8:10] = 2       # 8 voxels
    warped[8:10, 8:10, 8:11] = 2      # 12 voxels, overlap 8
    fixed[0, 0, 0] = 3                # only in the fixed map
    warped[11, 11, 11] = 4            # only in the warped map
    return fixed, warped


def test_dice_hand_computed() -> None:
    fixed, warped = _two_cubes()
    scores = dice(fixed, warped)
    assert set(scores) == {1, 2}
    assert scores[1] == pytest.approx(2 * 48 / (64 + 64))    # 0.75
    assert scores[2] == pytest.approx(2 * 8 / (8 + 12))      # 0.8


def test_dice_explicit_labels_missing_from_one_map_score_zero() -> None:
    fixed, warped = _two_cubes()
    scores = dice(fixed, warped, labels=[2, 3, 4, 99])  # 3 only fixed, 4 only warped, 99 in neither
    assert scores == {2: pytest.approx(0.8), 3: 0.0, 4: 0.0}
    # background is scored only when listed
    assert 0 not in dice(fixed, warped)
    bg = dice(fixed, warped, labels=[0])
    n_f, n_w = np.count_nonzero(fixed == 0), np.count_nonzero(warped == 0)
    n_both = np.count_nonzero((fixed == 0) & (warped == 0))
    assert bg[0] == pytest.approx(2 * n_both / (n_f + n_w))


def test_dice_identical_and_float_and_large_labels() -> None:
    fixed, warped = _two_cubes()
    assert dice(fixed, fixed) == {1: 1.0, 2: 1.0, 3: 1.0}
    # float label maps (nibabel get_fdata) and label values outside the bincount range
    big_f = np.where(fixed > 0, fixed * 5_000_000 - 7, 0).astype(np.float64)
    big_w = np.where(warped > 0, warped * 5_000_000 - 7, 0).astype(np.float64)
    scores = dice(big_f, big_w)
    assert scores == {4_999_993: pytest.approx(0.75), 9_999_993: pytest.approx(0.8)}
    neg = dice(-fixed, -warped)
    assert neg == {-1: pytest.approx(0.75), -2: pytest.approx(0.8)}


@pytest.mark.parametrize("warped, message", [
    (np.zeros((6, 6)), "3-D label map"),
    (np.zeros((0, 6, 6)), "empty"),
    (np.full((6, 6, 6), np.nan), "NaN"),
    (np.full((6, 6, 6), 0.5), "non-integer"),
    (np.full((6, 6, 6), "a"), "unsupported data type"),
])
def test_label_maps_are_checked(warped: np.ndarray, message: str) -> None:
    fixed = np.zeros((6, 6, 6), np.int16)
    with pytest.raises(InputError, match=message):
        dice(fixed, warped)


def test_dice_rejects_bad_input() -> None:
    fixed, warped = _two_cubes()
    with pytest.raises(InputError):
        dice(fixed, warped[:-1])
    with pytest.raises(InputError):
        dice(fixed + 0.5, warped)
    # boolean and integer-valued float maps are label maps
    assert dice(fixed > 0, (warped > 0).astype(np.float32)) == dice((fixed > 0).astype(np.int8), warped > 0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, np.nan, 1.0)])
def test_hd95_rejects_bad_spacing(spacing: tuple[float, ...]) -> None:
    fixed, warped = _two_cubes()
    with pytest.raises(InputError, match="three positive numbers"):
        hd95(fixed, warped, spacing=spacing)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_shifted_box_anisotropic(axis: int) -> None:
    # A flat 8x8x4 box and the same box shifted by n=2 voxels along `axis`. Every surface distance is
    # <= n * spacing[axis], and the faces perpendicular to `axis` (> 5 % of the surface) are exactly
    # that far, so HD95 = n * spacing[axis] in both directions.
    spacing = (0.7, 1.3, 2.5)
    extent = [8, 8, 8]
    extent[axis] = 4
    fixed = np.zeros((16, 16, 16), dtype=np.uint8)
    box = tuple(slice(3, 3 + e) for e in extent)
    fixed[box] = 7
    warped = np.roll(fixed, 2, axis=axis)
    result = hd95(fixed, warped, spacing=spacing)
    assert result == {7: pytest.approx(2 * spacing[axis])}


def test_hd95_identical_is_zero_and_selection() -> None:
    fixed = np.zeros((10, 10, 10), dtype=np.int16)
    fixed[2:5, 2:5, 2:5] = 1
    fixed[6:9, 6:9, 6:9] = 2
    warped = fixed.copy()
    warped[warped == 2] = 0
    assert hd95(fixed, fixed) == {1: 0.0, 2: 0.0}
    assert hd95(fixed, warped, labels=[1, 2]) == {1: 0.0}


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> float:
    """Independent reference: explicit surface points and all pairwise distances (``spacing``: the voxel sizes,
    or a 3x3 voxel-to-world linear part)."""
    def surface_points(m: np.ndarray) -> np.ndarray:
        p = np.pad(m, 1)
        inner = p[1:-1, 1:-1, 1:-1]
        interior = inner.copy()
        for ax in range(3):
            for s in (1, -1):
                interior &= np.roll(p, s, axis=ax)[1:-1, 1:-1, 1:-1]
        ijk = np.argwhere(inner & ~interior)
        return ijk @ spacing.T if spacing.ndim == 2 else ijk * spacing

    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hd95_matches_brute_force_on_blobs() -> None:
    rng = np.random.default_rng(3)
    shape = (14, 12, 10)
    idx = np.indices(shape).transpose(1, 2, 3, 0).astype(float)
    spacing = np.array([1.2, 0.8, 2.0])
    fixed = np.zeros(shape, dtype=np.int32)
    warped = np.zeros(shape, dtype=np.int32)
    for label, centre in ((1, (4, 4, 4)), (5, (9, 7, 5))):
        r_f = np.linalg.norm((idx - centre) * spacing, axis=-1)
        r_w = np.linalg.norm((idx - centre - rng.uniform(-1, 1, 3)) * spacing, axis=-1)
        fixed[r_f < 3.5 + rng.uniform(-1, 1, shape)] = label
        warped[r_w < 3.0 + rng.uniform(-1, 1, shape)] = label
    fixed[:, :, -2:] = 5  # a label touching the array border (its border voxels are surface)
    result = hd95(fixed, warped, spacing=spacing)
    assert set(result) == {1, 5}
    for label in (1, 5):
        expected = _brute_hd95(fixed == label, warped == label, spacing)
        assert result[label] == pytest.approx(expected)
        assert result[label] > 0


def test_hd95_on_a_sheared_grid_measures_world_millimetres() -> None:
    """On a non-orthogonal grid (second voxel axis leaning 40 % along the first) ``linear`` gives the world
    distances; voxel indices scaled by the columns' lengths (``spacing``) do not."""
    rng = np.random.default_rng(4)
    shape = (14, 12, 10)
    fixed = (rng.uniform(size=shape) < 0.3).astype(np.int32) * 2
    fixed[3:10, 3:9, 2:8] = 1
    warped = np.roll(fixed, (2, -1), axis=(0, 1))
    linear = np.array([[1.0, 0.4, 0.0], [0.0, 0.9, 0.0], [0.1, 0.0, 1.5]])
    result = hd95(fixed, warped, linear=linear)
    for label in (1, 2):
        assert result[label] == pytest.approx(_brute_hd95(fixed == label, warped == label, linear))
    by_norms = hd95(fixed, warped, spacing=np.linalg.norm(linear, axis=0))
    assert by_norms[1] != pytest.approx(result[1], rel=0.02)
    with pytest.raises(InputError, match="invertible 3x3"):
        hd95(fixed, warped, linear=np.zeros((3, 3)))


def test_memory_order_does_not_change_the_scores() -> None:
    """NIfTI arrays are Fortran-ordered, warped maps C-ordered: every combination scores the same."""
    rng = np.random.default_rng(7)
    fixed = rng.integers(0, 4, (9, 8, 7))
    warped = np.where(rng.random((9, 8, 7)) < 0.8, fixed, rng.integers(0, 4, (9, 8, 7)))
    expected_dice, expected_hd = dice(fixed, warped), hd95(fixed, warped, spacing=(1.0, 1.5, 2.0))
    for f in (fixed, np.asfortranarray(fixed)):
        for w in (warped, np.asfortranarray(warped)):
            assert dice(f, w) == expected_dice
            assert hd95(f, w, spacing=(1.0, 1.5, 2.0)) == expected_hd


def test_scored_labels_come_from_the_inputs_so_an_erased_label_scores_zero() -> None:
    """The labels of both *input* maps (on their own grids), not of the warped map: a registration that
    erases a structure cannot raise its mean Dice by dropping it."""
    fixed = np.zeros((8, 8, 8), dtype=np.int16)
    fixed[1:5, 1:5, 1:5], fixed[6, 6, 6], fixed[0, 7, 0] = 1, 2, 5
    moving = np.zeros((6, 7, 9), dtype=np.int16)  # another grid
    moving[1:4, 1:4, 1:4], moving[5, 5, 5], moving[0, 0, 8] = 1, 2, 7
    assert scored_labels(fixed, moving) == [1, 2]  # 5 only fixed, 7 only moving, 0 never
    assert scored_labels(fixed, moving, labels=[5, 1]) == [5, 1]
    erased = fixed.copy()
    erased[erased == 2] = 0  # the warp wiped out label 2
    assert dice(fixed, erased) == {1: 1.0, 5: 1.0}  # labels=None: label 2 silently gone
    assert dice(fixed, erased, scored_labels(fixed, moving)) == {1: 1.0, 2: 0.0}
    large = moving.astype(np.int64) * 3_000_000  # values beyond the bincount path
    assert scored_labels(fixed.astype(np.int64) * 3_000_000, large) == [3_000_000, 6_000_000]
