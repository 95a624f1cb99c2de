"""Intensity normalisation robust to scale and outliers."""
from __future__ import annotations

import numpy as np

#: A voxel is foreground when its normalised intensity (:func:`robust_normalize`) exceeds this: 1 % of the way up
#: the :func:`intensity_window` (MR: above the background's noise; CT: above air).
FOREGROUND_LEVEL = 0.01


def intensity_window(data: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """The intensities ``(low, high)`` that :func:`robust_normalize` maps to 0 and 1 (``high > low`` always).

    The foreground is every voxel above the image minimum (so zero-padded backgrounds, or the padding outside a
    CT scanner's field of view, do not pull the percentiles). ``high`` is the ``upper`` percentile of its non-zero
    voxels: a zero background stays out of it also when a few voxels dip below zero (an MR resampled with a
    B-spline or sinc kernel), where it would lower ``high`` into the tissue (brain on zeros: to its 97th
    percentile; an object filling 1 % of the image: to its median). ``low`` is the image minimum for non-negative
    images (MR: a zero background stays 0) and the ``lower`` percentile of the foreground otherwise (CT: air at
    about −1000 HU; MR with a few negative voxels: its zero background), unless ``high`` does not exceed it (a
    two-level image, e.g. a phantom on a −1000 HU background): then the image minimum. A constant image gets
    ``(minimum, minimum + 1)``.
    """
    vmin = float(data.min())
    fg = data[data > vmin]
    if fg.size == 0:
        return vmin, vmin + 1.0
    sample = _subsample(fg)
    non_zero = sample if vmin >= 0 else sample[sample != 0]  # above a non-negative minimum: no zeros
    lo = vmin if vmin >= 0 else float(np.percentile(sample, lower))
    hi = float(np.percentile(non_zero if non_zero.size else sample, upper))
    if hi <= lo:  # only with a negative minimum (else lo is the minimum, below every foreground value)
        lo = vmin
    return lo, hi


def _subsample(values: np.ndarray, most: int = 2_000_000) -> np.ndarray:
    """``values`` (1-D), or every n-th of them when there are more than ``most`` (percentiles of a sample)."""
    return values if values.size <= most else values[:: values.size // most + 1]


def robust_normalize(data: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Scale intensities to [0, 1] over :func:`intensity_window` (``lower``/``upper`` percentiles), clipped; a
    constant image maps to zeros."""
    data = np.asarray(data, dtype=np.float32)
    lo, hi = intensity_window(data, lower, upper)
    out = data - np.float32(lo)  # one new array, then in place (a 1 mm volume is 30 MB per temporary)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)
