"""Label-overlap metrics between two label maps on the same voxel grid: Dice and HD95.

Both functions take two integer label maps of identical shape ``(I, J, K)`` (voxel index order of
:mod:`svreg_core.conventions`): ``fixed_labels`` and ``warped_labels`` (the moving label map
resampled onto the fixed grid). Float arrays are accepted when every value is integral (as returned
by ``nibabel``'s ``get_fdata()``).

Label selection (shared by :func:`dice` and :func:`hd95`):

* ``labels=None``: every **non-zero** label present in **both** maps is scored.
* explicit ``labels``: :func:`dice` scores every listed label present in **either** map (0 where it is missing
  from one: a structure the warp erased scores 0); :func:`hd95` only those present in **both** (a surface
  distance needs both surfaces). Listed labels missing from both maps are skipped silently (they do not
  appear in the result). Label ``0`` is scored only if it is listed explicitly.

A registration is scored on the labels of its *inputs*, :func:`scored_labels` (the fixed and the moving label
map before warping), passed explicitly: with ``labels=None`` a label the warp erased would leave the mean.

Results are ``dict[int, float]`` keyed by label value, in increasing label order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from svreg_core.errors import InputError
from svreg_core.parallel import map_threads

__all__ = ["dice", "hd95", "present_labels", "scored_labels"]

#: Largest label value for which the fast ``np.bincount`` path is used.
_BINCOUNT_MAX_LABEL = 1 << 20


def _as_label_array(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as an integer array, or raise :class:`InputError` if it is not a label map."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise InputError(f"{name} must be a 3-D label map, got an array of shape {arr.shape}.")
    if arr.size == 0:
        raise InputError(f"{name} is empty.")
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} contains NaN or infinite values.")
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise InputError(f"{name} has non-integer values; it is not a label map.")
        return rounded.astype(np.int64)
    raise InputError(f"{name} has unsupported data type {arr.dtype}.")


def _check_pair(fixed_labels: np.ndarray, warped_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fixed = _as_label_array(fixed_labels, "fixed_labels")
    warped = _as_label_array(warped_labels, "warped_labels")
    if fixed.shape != warped.shape:
        raise InputError(f"The label maps have different shapes: {fixed.shape} and {warped.shape}.")
    return fixed, warped


def _label_counts(fixed: np.ndarray, warped: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-label voxel counts.

    Returns ``(values, n_fixed, n_warped, n_both)``: the sorted label values occurring in either map,
    and for each the number of voxels carrying it in ``fixed``, in ``warped``, and in both at the same
    voxel. Uses three ``np.bincount`` passes (no per-label full-volume comparison). Both maps are flattened
    in the same order, their memory order when they share one (NIfTI arrays are Fortran-ordered: no copy).
    """
    order: Literal["C", "F"] = "F" if fixed.flags.f_contiguous and warped.flags.f_contiguous else "C"
    f = fixed.ravel(order)
    w = warped.ravel(order)
    lo = min(int(f.min()), int(w.min()))
    hi = max(int(f.max()), int(w.max()))
    if lo >= 0 and hi < _BINCOUNT_MAX_LABEL:
        codes_f, codes_w, values = f, w, None
        n = hi + 1
    else:  # negative or very large label values: compress them to 0..n-1 first
        values, inverse = np.unique(np.concatenate((f, w)), return_inverse=True)
        codes_f, codes_w = inverse[:f.size], inverse[f.size:]
        n = values.size
    n_fixed = np.bincount(codes_f, minlength=n)
    n_warped = np.bincount(codes_w, minlength=n)
    n_both = np.bincount(codes_f[codes_f == codes_w], minlength=n)
    if values is None:
        values = np.arange(n)
    present = (n_fixed > 0) | (n_warped > 0)
    return values[present], n_fixed[present], n_warped[present], n_both[present]


def _select(values: np.ndarray, n_fixed: np.ndarray, n_warped: np.ndarray,
            labels: Sequence[int] | None, *, listed_in_either: bool = False) -> np.ndarray:
    """Boolean selector over ``values`` implementing the module's label-selection rule (``listed_in_either``:
    explicit labels present in either map, :func:`dice`'s rule, instead of in both)."""
    in_both = (n_fixed > 0) & (n_warped > 0)
    if labels is None:
        return in_both & (values != 0)
    wanted = np.asarray(list(labels), dtype=np.int64).ravel()
    present = (n_fixed > 0) | (n_warped > 0) if listed_in_either else in_both
    return present & np.isin(values, wanted)


def present_labels(label_map: np.ndarray) -> np.ndarray:
    """The sorted label values occurring in ``label_map`` (a label map: integer values)."""
    flat = _as_label_array(label_map, "label map").ravel()
    low, high = int(flat.min()), int(flat.max())
    if low >= 0 and high < _BINCOUNT_MAX_LABEL:
        return np.flatnonzero(np.bincount(flat, minlength=high + 1))
    return np.unique(flat)


def scored_labels(fixed_labels: np.ndarray, moving_labels: np.ndarray,
                  labels: Sequence[int] | None = None) -> list[int]:
    """The labels a registration of these two label maps is scored on: ``labels`` when given, else every
    non-zero label present in both the fixed and the *moving* map (before warping; the maps may lie on
    different grids). Passed to :func:`dice`, a label the warp erased then scores 0 instead of leaving the mean."""
    if labels is not None:
        return [int(v) for v in labels]
    fixed = _as_label_array(fixed_labels, "fixed_labels")
    moving = _as_label_array(moving_labels, "moving_labels")
    return [int(v) for v in np.intersect1d(present_labels(fixed), present_labels(moving)) if v != 0]


def dice(fixed_labels: np.ndarray, warped_labels: np.ndarray,
         labels: Sequence[int] | None = None) -> dict[int, float]:
    """Per-label Dice coefficient ``2|A∩B| / (|A| + |B|)`` (dimensionless, in ``[0, 1]``).

    Args:
        fixed_labels: integer label map ``(I, J, K)`` of the fixed image.
        warped_labels: integer label map ``(I, J, K)`` of the moving image warped onto the fixed grid.
        labels: labels to score; see the module docstring for the selection rule (``None``: every
            non-zero label present in both maps; an explicit label present in only one map scores 0).

    Returns:
        ``{label: dice}`` for the selected labels.
    """
    fixed, warped = _check_pair(fixed_labels, warped_labels)
    values, n_fixed, n_warped, n_both = _label_counts(fixed, warped)
    keep = _select(values, n_fixed, n_warped, labels, listed_in_either=True)
    scores = 2.0 * n_both[keep] / (n_fixed[keep] + n_warped[keep]).astype(np.float64)
    return {int(v): float(s) for v, s in zip(values[keep], scores)}


def _surface_voxels(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Flat indices (increasing) of every label's surface voxels: the voxels carrying the label with at least
    one of their 6 face neighbours carrying another (voxels beyond the array border count as another label).

    One pass over the volume for all labels (neighbour differences along each axis), then the surface
    voxels are grouped by label.
    """
    surface = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        differs = np.diff(labels, axis=axis) != 0
        lower = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        surface[lower] |= differs
        surface[upper] |= differs
        for end in (0, -1):
            surface[tuple(end if a == axis else slice(None) for a in range(3))] = True
    index = np.flatnonzero(surface)
    values = labels.ravel()[index]
    order = np.argsort(values, kind="stable")  # stable: indices stay increasing within a label
    index, values = index[order], values[order]
    present, starts = np.unique(values, return_index=True)
    stops = np.append(starts[1:], values.size)
    return {int(v): index[a:b] for v, a, b in zip(present, starts, stops)}


def _distances_to(points: np.ndarray, surface: np.ndarray, shape: tuple[int, ...],
                  steps: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) from each voxel centre of ``points`` to the nearest voxel centre of
    ``surface`` (both flat indices into ``shape``, increasing); 0 for the points that lie on ``surface``."""
    from scipy.spatial import cKDTree  # imported here: 0.17 s, which every svreg command would pay

    distance = np.zeros(points.size)
    away = ~np.isin(points, surface, assume_unique=True)
    if away.any():
        distance[away] = cKDTree(_millimetres(surface, shape, steps)).query(
            _millimetres(points[away], shape, steps))[0]
    return distance


def _millimetres(flat: np.ndarray, shape: tuple[int, ...], steps: np.ndarray) -> np.ndarray:
    """``(N, 3)`` positions (mm, relative to voxel 0) of the flat indices ``flat`` into ``shape``: their voxel
    indices times ``steps``, the 3x3 voxel-to-world linear part (columns: one voxel step along each axis)."""
    return np.stack(np.unravel_index(flat, shape), axis=1) @ steps.T


def hd95(fixed_labels: np.ndarray, warped_labels: np.ndarray,
         labels: Sequence[int] | None = None,
         spacing: Sequence[float] = (1.0, 1.0, 1.0), linear: np.ndarray | None = None) -> dict[int, float]:
    """Per-label 95th-percentile symmetric Hausdorff distance between label surfaces, in millimetres.

    For a label, the surface of a map is its set of label voxels with at least one 6-neighbour outside
    the label (voxels beyond the array border count as outside). With ``d(a, S)`` the Euclidean
    distance in millimetres from voxel centre ``a`` to the nearest voxel centre of surface ``S``
    (voxel indices mapped by ``linear``, else scaled by ``spacing``)::

        HD95 = max( P95{ d(a, S_warped) : a in S_fixed },  P95{ d(b, S_fixed) : b in S_warped } )

    where ``P95`` is ``np.percentile(..., 95)`` (linear interpolation) — the symmetric convention of
    MONAI's ``compute_hausdorff_distance(percentile=95)``. The surfaces of all labels are found in one pass
    over each map; the distances are nearest-neighbour queries of one surface's points in a k-d tree of the
    other's (``scipy.spatial.cKDTree``; points on both surfaces are at distance 0 without a query), the exact
    Euclidean distances a distance transform of the surface would give, at a fraction of its cost (1 mm brain
    pair, 44 labels: 0.9 s instead of 1.2–1.4 s with the distance transform in each label's box, 2026-11-28).
    Labels run on threads (:func:`~svreg_core.parallel.map_threads`: the k-d tree releases the GIL).

    Args:
        fixed_labels: integer label map ``(I, J, K)`` of the fixed image.
        warped_labels: integer label map ``(I, J, K)`` of the warped moving image.
        labels: labels to score (``None``: every non-zero label in both maps; explicit labels missing
            from either map are skipped: they have no surface distance).
        spacing: voxel size along ``(i, j, k)`` in millimetres (e.g. ``Grid.spacing``), for an axis-aligned grid.
        linear: the grid's 3x3 voxel-to-world linear part (the affine's ``[:3, :3]``; columns: one voxel step
            along each axis, mm); when given, ``spacing`` is not used and distances are world distances on any
            grid, a sheared (non-orthogonal) one included.

    Returns:
        ``{label: hd95_mm}`` for the selected labels.
    """
    fixed, warped = _check_pair(fixed_labels, warped_labels)
    if linear is None:
        sampling = np.asarray(spacing, dtype=np.float64).ravel()
        if sampling.size != 3 or not np.all(np.isfinite(sampling)) or np.any(sampling <= 0):
            raise InputError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}.")
        steps = np.diag(sampling)
    else:
        steps = np.asarray(linear, dtype=np.float64)
        if steps.shape != (3, 3) or not np.all(np.isfinite(steps)) or abs(np.linalg.det(steps)) == 0:
            raise InputError(f"linear must be an invertible 3x3 matrix (mm per voxel step), got {linear!r}.")
    values, n_fixed, n_warped, _ = _label_counts(fixed, warped)
    selected = values[_select(values, n_fixed, n_warped, labels)]

    surfaces_f, surfaces_w = _surface_voxels(fixed), _surface_voxels(warped)

    def distance(label: int) -> float:
        surf_f, surf_w = surfaces_f[label], surfaces_w[label]
        d_fw = np.percentile(_distances_to(surf_f, surf_w, fixed.shape, steps), 95)
        d_wf = np.percentile(_distances_to(surf_w, surf_f, fixed.shape, steps), 95)
        return float(max(d_fw, d_wf))

    chosen = [int(label) for label in selected]
    return dict(zip(chosen, map_threads(distance, chosen)))
