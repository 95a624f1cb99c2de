"""Jacobian determinant, folding, SDlogJ and NDV on fields with hand-computed answers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from svreg_core.errors import InputError
from svreg_core.metrics import folding_percent, jacobian_determinant, ndv_map, ndv_percent, sdlogj


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = _rotation([1.0, 2.0, -0.5], 35.0) @ np.diag([0.8, 1.5, 2.2])
    aff[:3, 3] = [-20.0, 13.0, 4.5]
    return aff


def _world_points(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape).transpose(1, 2, 3, 0).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


SHAPE = (9, 8, 7)
AFFINES = {"identity": np.eye(4), "oblique": _oblique_affine()}


# ---------------------------------------------------------------------------- Jacobian determinant

@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("s", [0.6, 1.7])
def test_uniform_scaling_gives_s_cubed(name: str, s: float) -> None:
    affine = AFFINES[name]
    x = _world_points(SHAPE, affine)
    c = np.array([1.0, -2.0, 3.0])
    disp = (s - 1.0) * (x - c)
    det = jacobian_determinant(disp, affine)
    assert det.dtype == np.float32 and det.shape == SHAPE
    np.testing.assert_allclose(det, s ** 3, rtol=1e-5)
    assert folding_percent(det) == 0.0
    assert sdlogj(det) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", list(AFFINES))
def test_rotation_gives_one(name: str) -> None:
    affine = AFFINES[name]
    x = _world_points(SHAPE, affine)
    c = x.mean(axis=(0, 1, 2))
    rot = _rotation([0.3, -1.0, 0.4], 40.0)
    disp = (x - c) @ rot.T + c - x
    np.testing.assert_allclose(jacobian_determinant(disp, affine), 1.0, rtol=1e-5)


def test_reflection_gives_minus_one() -> None:
    affine = AFFINES["oblique"]
    x = _world_points(SHAPE, affine)
    c = x.mean(axis=(0, 1, 2))
    mirror = np.eye(3) - 2 * np.outer([0.6, 0.0, 0.8], [0.6, 0.0, 0.8])  # reflection, det -1
    det = jacobian_determinant((x - c) @ mirror.T + c - x, affine)
    np.testing.assert_allclose(det, -1.0, rtol=1e-5)
    assert folding_percent(det) == 100.0


def test_identity_field() -> None:
    det = jacobian_determinant(np.zeros(SHAPE + (3,)), AFFINES["oblique"])
    np.testing.assert_array_equal(det, 1.0)
    assert folding_percent(det) == 0.0
    assert sdlogj(det) == 0.0


def test_gaussian_bump_folds_locally() -> None:
    # d = A exp(-|x-c|^2 / 2 sigma^2) along world x: d(d_x)/dx reaches -A/sigma e^-1/2 ~ -1.8 < -1.
    affine = np.eye(4)
    shape = (21, 15, 15)
    x = _world_points(shape, affine)
    c = np.array([10.0, 7.0, 7.0])
    disp = np.zeros(shape + (3,))
    disp[..., 0] = 6.0 * np.exp(-np.sum((x - c) ** 2, axis=-1) / (2 * 2.0 ** 2))
    det = jacobian_determinant(disp, affine)
    pct = folding_percent(det)
    assert 0.0 < pct < 5.0
    assert np.all(det[:3] > 0.99) and np.all(det[-3:] > 0.99)  # far from the bump: no change
    mask = np.zeros(shape, dtype=bool)
    mask[:5] = True
    assert folding_percent(det, mask) == 0.0
    assert folding_percent(det, ~mask) > pct
    assert sdlogj(det) > 1.0  # clipped logs of the folded voxels dominate
    assert ndv_percent(disp, affine) > 0.0


def test_matches_reference_formula_on_random_field() -> None:
    # dT/dx = I + (dd/dijk) @ inv(M), np.gradient on the whole volume (also checks the slab seams).
    rng = np.random.default_rng(1)
    affine = AFFINES["oblique"]
    shape = (19, 6, 5)
    disp = rng.normal(0.0, 0.4, shape + (3,))
    grads = np.stack(np.gradient(disp, axis=(0, 1, 2)), axis=-1)  # [..., c, a] = dd_c / dijk_a
    jac = np.eye(3) + grads @ np.linalg.inv(affine[:3, :3])
    np.testing.assert_allclose(jacobian_determinant(disp, affine), np.linalg.det(jac),
                               rtol=1e-5, atol=1e-5)


def test_sdlogj_hand_computed_and_mask() -> None:
    det = np.array([np.e, 1.0, 1 / np.e, 1.0]).reshape(2, 2, 1)
    assert sdlogj(det) == pytest.approx(np.std([1.0, 0.0, -1.0, 0.0]))
    mask = np.array([True, False, True, False]).reshape(2, 2, 1)
    assert sdlogj(det, mask) == pytest.approx(1.0)
    det_fold = np.array([1.0, -3.0]).reshape(1, 2, 1)  # clipped to 1e-9
    assert sdlogj(det_fold) == pytest.approx(0.5 * abs(np.log(1e-9)))
    assert folding_percent(det_fold) == 50.0
    assert folding_percent(np.array([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 4)) == 25.0  # det = 0 counts


@pytest.mark.parametrize("displacement, affine, message", [
    (np.zeros((4, 4, 4, 2)), np.eye(4), "shape"),
    (np.zeros((0, 4, 4, 3)), np.eye(4), "empty"),
    (np.full((4, 4, 4, 3), np.inf), np.eye(4), "NaN or infinite"),
    (np.zeros((4, 4, 4, 3)), np.eye(3), "finite 4x4"),
    (np.zeros((4, 4, 4, 3)), np.zeros((4, 4)), "singular"),
    (np.zeros((1, 4, 4, 3)), np.eye(4), "at least 2 voxels"),
])
def test_rejects_bad_input(displacement: np.ndarray, affine: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        jacobian_determinant(displacement, affine)


def test_rejects_bad_masks() -> None:
    with pytest.raises(InputError):
        folding_percent(np.ones((3, 3, 3)), np.zeros((3, 3, 3), dtype=bool))
    with pytest.raises(InputError, match="mask has shape"):
        ndv_percent(np.zeros((4, 4, 4, 3)), np.eye(4), np.ones((4, 4, 3), dtype=bool))


# ---------------------------------------------------------------------------- NDV

def test_ndv_identity_is_zero() -> None:
    ndv = ndv_map(np.zeros(SHAPE + (3,)), AFFINES["oblique"])
    assert ndv.shape == SHAPE and ndv.dtype == np.float32
    np.testing.assert_array_equal(ndv, 0.0)
    assert ndv_percent(np.zeros(SHAPE + (3,)), AFFINES["oblique"]) == 0.0


@pytest.mark.parametrize("name", list(AFFINES))
def test_ndv_affine_maps(name: str) -> None:
    affine = AFFINES[name]
    x = _world_points(SHAPE, affine)
    c = x.mean(axis=(0, 1, 2))
    for lin in (0.6 * np.eye(3), 1.7 * np.eye(3), _rotation([1.0, 1.0, 0.0], 70.0)):
        disp = (x - c) @ lin.T + c - x
        np.testing.assert_allclose(ndv_map(disp, affine), 0.0, atol=0.0)
    # a reflection turns every tetrahedron inside out: 8 * 0.5 * 1/6 + 2 * 0.5 * 2/6 = 1 voxel/voxel
    mirror = np.diag([1.0, -1.0, 1.0])
    disp = (x - c) @ mirror.T + c - x
    # (interior only: outside the grid the displacement is edge-replicated, not reflected)
    np.testing.assert_allclose(ndv_map(disp, affine)[1:-1, 1:-1, 1:-1], 1.0, rtol=1e-5)
    assert ndv_percent(disp, affine) == pytest.approx(100.0, rel=1e-5)


def test_ndv_single_voxel_fold_hand_computed() -> None:
    # The voxel p0 is pushed 1.5 voxels along +i, past its neighbour p0 + e_i. Only the 4 corner
    # tetrahedra at p0 using the forward i-difference (det = 1 - 1.5) and the 4 at p0 + e_i using the
    # backward i-difference (same det) are inverted; every central tetrahedron keeps det 2 +- 1.5 > 0.
    # So ndv = 4 * 0.5 * 0.5 / 6 = 1/6 at those two voxels and 0 elsewhere.
    affine = AFFINES["oblique"]
    shape = (8, 7, 6)
    p0 = (3, 3, 2)
    disp = np.zeros(shape + (3,))
    disp[p0] = affine[:3, :3] @ np.array([1.5, 0.0, 0.0])  # world mm of +1.5 voxel along i
    ndv = ndv_map(disp, affine)
    expected = np.zeros(shape)
    expected[p0] = 1 / 6
    expected[p0[0] + 1, p0[1], p0[2]] = 1 / 6
    np.testing.assert_allclose(ndv, expected, atol=1e-6)
    n_interior = 6 * 5 * 4
    assert ndv_percent(disp, affine) == pytest.approx(100 * (1 / 3) / n_interior, rel=1e-5)
    mask = np.zeros(shape, dtype=bool)
    mask[p0] = True
    assert ndv_percent(disp, affine, mask) == pytest.approx(100 / 6, rel=1e-5)
    # the central-difference Jacobian is blind to this fold (the "checkerboard" problem)
    assert folding_percent(jacobian_determinant(disp, affine)) == 0.0
    # no voxel inside the one-voxel border (a border-only mask, or a 2-slice slab): NDV is undefined (NaN)
    border = np.zeros(shape, dtype=bool)
    border[0] = True
    assert np.isnan(ndv_percent(disp, affine, border))
    assert np.isnan(ndv_percent(np.zeros((9, 8, 2, 3)), affine))


def test_ndv_percent_on_the_mask_box_equals_the_whole_map() -> None:
    # ndv_percent evaluates only the box around its mask; a rough random field (many folds) gives the same
    # percentage as the whole map for masks inside the grid, touching its border, and none
    affine = AFFINES["oblique"]
    shape = (14, 12, 10)
    disp = np.random.default_rng(5).normal(scale=2.0, size=shape + (3,))
    whole = ndv_map(disp, affine)
    interior = np.zeros(shape, dtype=bool)
    interior[1:-1, 1:-1, 1:-1] = True
    inner = np.zeros(shape, dtype=bool)
    inner[4:9, 3:7, 5:8] = True
    touching = np.zeros(shape, dtype=bool)
    touching[:6, 7:, 2:5] = True
    for mask in (inner, touching, None):
        m = interior & (np.ones(shape, dtype=bool) if mask is None else mask)
        expected = 100.0 * np.sum(whole[m], dtype=np.float64) / np.count_nonzero(m)
        assert expected > 1.0
        assert ndv_percent(disp, affine, mask) == pytest.approx(expected, rel=1e-6)


def _ndv_loop(q: np.ndarray) -> np.ndarray:
    """Per-voxel loop implementation of the documented NDV definition (voxel-unit displacement q)."""
    shape = q.shape[:3]
    qp = np.pad(q, ((1, 1), (1, 1), (1, 1), (0, 0)), mode="edge")

    def p(v: np.ndarray) -> np.ndarray:
        return v + qp[tuple(v + 1)]

    out = np.zeros(shape)
    e = np.eye(3, dtype=int)
    for idx in itertools.product(*[range(n) for n in shape]):
        x = np.array(idx)
        dets = []
        for signs in itertools.product((1, -1), repeat=3):
            cols = [p(x + e[a]) - p(x) if s > 0 else p(x) - p(x - e[a]) for a, s in enumerate(signs)]
            dets.append(np.linalg.det(np.stack(cols, axis=1)))
        for offs in (((-1, -1, 0), (-1, 0, -1), (0, -1, -1)), ((1, 1, 0), (0, 1, 1), (1, 0, 1))):
            cols = [p(x + np.array(o)) - p(x) for o in offs]
            dets.append(np.linalg.det(np.stack(cols, axis=1)))
        out[idx] = sum(0.5 * max(-d, 0.0) / 6 for d in dets)
    return out


def test_ndv_matches_loop_reference_on_random_field() -> None:
    rng = np.random.default_rng(7)
    affine = AFFINES["oblique"]
    shape = (10, 5, 4)  # spans two slabs
    q = rng.normal(0.0, 0.6, shape + (3,))  # voxel units: plenty of folds
    disp = q @ affine[:3, :3].T
    ndv = ndv_map(disp, affine)
    expected = _ndv_loop(q)
    assert expected.max() > 0
    np.testing.assert_allclose(ndv, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scale", [0.05, 0.2, 0.35])
def test_ndv_screening_changes_no_value(monkeypatch, scale: float) -> None:
    """The NDV map computes determinants only where a tetrahedron's edge perturbation may reach the bound
    below which its determinant is provably positive; with the screening off (every voxel evaluated) the
    map is bitwise the same, on fields from a few risky voxels to many, a localised fold included."""
    import svreg_core.metrics.jacobian as jacobian

    rng = np.random.default_rng(11)
    affine = AFFINES["oblique"]
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in (19, 9, 8)], indexing="ij"), -1)
    q = scale * rng.normal(size=ijk.shape) + 0.4 * np.sin(ijk / 3.0)
    q[9, 4, 4] += (1.8, 0.0, 0.0)  # one voxel pushed past its neighbour: a fold
    disp = q @ affine[:3, :3].T
    screened = ndv_map(disp, affine)
    monkeypatch.setattr(jacobian, "_SAFE_PERTURBATION", -1.0)
    assert np.array_equal(screened, ndv_map(disp, affine))
    assert screened.sum() > 0 and (screened == 0).mean() > 0.3


def test_ndv_is_zero_for_strong_smooth_compression_within_the_bound() -> None:
    # q = -0.85 x: every tetrahedron's edges shrink to 0.15 of their length (det > 0, perturbation norm²
    # 3 * 0.85² > 0.81 for a corner, so the determinants are evaluated) and the loop reference agrees: 0
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in (6, 5, 4)], indexing="ij"), -1)
    q = -0.85 * ijk
    np.testing.assert_array_equal(ndv_map(q, np.eye(4)), 0.0)
    np.testing.assert_array_equal(_ndv_loop(q), 0.0)
    # beyond the identity (q = -1.05 x mirrors every axis): every tetrahedron inverted, the loop's value
    q = -1.05 * ijk
    np.testing.assert_allclose(ndv_map(q, np.eye(4)), _ndv_loop(q), rtol=1e-5)


def test_slabs_on_threads_give_the_single_thread_result(monkeypatch) -> None:
    """Jacobian and NDV fill slabs of rows on several threads: bitwise the result of one thread."""
    import svreg_core.parallel as threads

    rng = np.random.default_rng(3)
    disp = rng.normal(0.0, 0.6, (37, 7, 6, 3))  # 5 slabs, folds included
    affine = AFFINES["oblique"]
    monkeypatch.setattr(threads, "MAX_THREADS", 4)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # map_threads uses no more threads than torch may
    try:
        threaded = jacobian_determinant(disp, affine), ndv_map(disp, affine)
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(threads, "MAX_THREADS", 1)
    single = jacobian_determinant(disp, affine), ndv_map(disp, affine)
    for a, b in zip(threaded, single):
        assert np.array_equal(a, b)
    assert (threaded[0] <= 0).any() and threaded[1].sum() > 0  # the fields fold: the maps are not trivial
