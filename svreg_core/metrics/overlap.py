"""Label-overlap metrics between two label maps on the same voxel grid: Dice and HD95.

Both functions take two integer label maps of identical shape ``(I, J, K)`` (voxel index order of
:mod:`svreg_core.conventions`): ``fixed_labels`` and ``warped_labels`` (the moving label map
resampled onto the fixed grid). Float arrays are accepted when every value is integral (as returned
by ``nibabel``'s ``get_fdata()``).

Label selection (shared by :func:`dice` and :func:`hd95`):

* ``labels=None``: every **non-zero** label present in **both** maps is scored.
* explicit ``labels``: only those of the listed labels present in **both** maps are scored; listed
  labels missing from either map are skipped silently (they do not appear in the result). Label
  ``0`` is scored only if it is listed explicitly.

Results are ``dict[int, float]`` keyed by label value, in increasing label order.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from svreg_core.errors import InputError
from svreg_core.parallel import map_threads

__all__ = ["dice", "hd95"]

#: Largest label value for which the fast ``np.bincount`` path is used.
_BINCOUNT_MAX_LABEL = 1 << 20

#: 6-connectivity structuring element (face neighbours) used to define label surfaces.
_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


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
    voxel. Uses three ``np.bincount`` passes (no per-label full-volume comparison).
    """
    f = fixed.ravel()
    w = warped.ravel()
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
            labels: Sequence[int] | None) -> np.ndarray:
    """Boolean selector over ``values`` implementing the module's label-selection rule."""
    in_both = (n_fixed > 0) & (n_warped > 0)
    if labels is None:
        return in_both & (values != 0)
    wanted = np.asarray(list(labels), dtype=np.int64).ravel()
    return in_both & np.isin(values, wanted)


def dice(fixed_labels: np.ndarray, warped_labels: np.ndarray,
         labels: Sequence[int] | None = None) -> dict[int, float]:
    """Per-label Dice coefficient ``2|A∩B| / (|A| + |B|)`` (dimensionless, in ``[0, 1]``).

    Args:
        fixed_labels: integer label map ``(I, J, K)`` of the fixed image.
        warped_labels: integer label map ``(I, J, K)`` of the moving image warped onto the fixed grid.
        labels: labels to score; see the module docstring for the selection rule (``None``: every
            non-zero label present in both maps; explicit labels missing from either map are skipped).

    Returns:
        ``{label: dice}`` for the selected labels.
    """
    fixed, warped = _check_pair(fixed_labels, warped_labels)
    values, n_fixed, n_warped, n_both = _label_counts(fixed, warped)
    keep = _select(values, n_fixed, n_warped, labels)
    scores = 2.0 * n_both[keep] / (n_fixed[keep] + n_warped[keep]).astype(np.float64)
    return {int(v): float(s) for v, s in zip(values[keep], scores)}


def _bounding_boxes(labels: np.ndarray) -> list[tuple[slice, ...] | None] | None:
    """``ndimage.find_objects`` boxes for positive labels (index ``label - 1``), or None if unusable."""
    if int(labels.max()) <= 0 or int(labels.max()) >= _BINCOUNT_MAX_LABEL:
        return None
    return ndimage.find_objects(np.where(labels > 0, labels, 0))


def _box_of(label: int, labels: np.ndarray,
            boxes: list[tuple[slice, ...] | None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-low / exclusive-high voxel bounds of ``label`` in ``labels``."""
    box = boxes[label - 1] if boxes is not None and 0 < label <= len(boxes) else None
    if box is not None:
        return np.array([s.start for s in box]), np.array([s.stop for s in box])
    idx = np.nonzero(labels == label)
    return np.array([a.min() for a in idx]), np.array([a.max() + 1 for a in idx])


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` having at least one of their 6 face neighbours outside ``mask``.

    Voxels outside the array count as outside the mask.
    """
    interior = ndimage.binary_erosion(mask, structure=_SIX_NEIGHBOURS, border_value=0)
    return mask & ~interior


def hd95(fixed_labels: np.ndarray, warped_labels: np.ndarray,
         labels: Sequence[int] | None = None,
         spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[int, float]:
    """Per-label 95th-percentile symmetric Hausdorff distance between label surfaces, in millimetres.

    For a label, the surface of a map is its set of label voxels with at least one 6-neighbour outside
    the label (voxels beyond the array border count as outside). With ``d(a, S)`` the Euclidean
    distance in millimetres from voxel centre ``a`` to the nearest voxel centre of surface ``S``
    (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``)::

        HD95 = max( P95{ d(a, S_warped) : a in S_fixed },  P95{ d(b, S_fixed) : b in S_warped } )

    where ``P95`` is ``np.percentile(..., 95)`` (linear interpolation) — the symmetric convention of
    MONAI's ``compute_hausdorff_distance(percentile=95)``. Each label is processed inside the bounding
    box of the two labels enlarged by one voxel, which gives the same result as the whole volume; labels
    run on threads (:func:`~svreg_core.parallel.map_threads`: SciPy's distance transform releases
    the GIL).

    Args:
        fixed_labels: integer label map ``(I, J, K)`` of the fixed image.
        warped_labels: integer label map ``(I, J, K)`` of the warped moving image.
        labels: labels to score; same selection rule as :func:`dice`.
        spacing: voxel size along ``(i, j, k)`` in millimetres (e.g. ``Grid.spacing``).

    Returns:
        ``{label: hd95_mm}`` for the selected labels.
    """
    fixed, warped = _check_pair(fixed_labels, warped_labels)
    sampling = np.asarray(spacing, dtype=np.float64).ravel()
    if sampling.size != 3 or not np.all(np.isfinite(sampling)) or np.any(sampling <= 0):
        raise InputError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}.")
    values, n_fixed, n_warped, _ = _label_counts(fixed, warped)
    selected = values[_select(values, n_fixed, n_warped, labels)]

    boxes_f = _bounding_boxes(fixed)
    boxes_w = _bounding_boxes(warped)
    shape = np.asarray(fixed.shape)

    def distance(label: int) -> float:
        lo_f, hi_f = _box_of(label, fixed, boxes_f)
        lo_w, hi_w = _box_of(label, warped, boxes_w)
        lo = np.maximum(np.minimum(lo_f, lo_w) - 1, 0)
        hi = np.minimum(np.maximum(hi_f, hi_w) + 1, shape)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        surf_f = _surface(fixed[crop] == label)
        surf_w = _surface(warped[crop] == label)
        dist_to_w = ndimage.distance_transform_edt(~surf_w, sampling=sampling)
        dist_to_f = ndimage.distance_transform_edt(~surf_f, sampling=sampling)
        d_fw = np.percentile(dist_to_w[surf_f], 95)
        d_wf = np.percentile(dist_to_f[surf_w], 95)
        return float(max(d_fw, d_wf))

    chosen = [int(label) for label in selected]
    return dict(zip(chosen, map_threads(distance, chosen)))
