"""Intensity normalisation robust to scale and outliers."""
from __future__ import annotations

import numpy as np

#: A voxel is foreground when its normalised intensity (:func:`robust_normalize`) exceeds this: 1 % of the way up
#: the :func:`intensity_window` (MR: above the background's noise; CT: above air).
FOREGROUND_LEVEL = 0.01


def intensity_window(data: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """The intensities ``(low, high)`` that :func:`robust_normalize` maps to 0 and 1 (``high > low`` always).

    The foreground is every voxel above the image minimum (so zero-padded backgrounds, or the padding outside a
    CT scanner's field of view, do not pull the percentiles). ``high`` is its ``upper`` percentile. ``low`` is
    the image minimum for non-negative images (MR: a zero background stays 0) and the ``lower`` percentile of the
    foreground otherwise (CT: air at about −1000 HU), unless the foreground's percentiles coincide (a two-level
    image, e.g. a phantom on a −1000 HU background): then the image minimum. A constant image gets
    ``(minimum, minimum + 1)``.
    """
    vmin = float(data.min())
    fg = data[data > vmin]
    if fg.size == 0:
        return vmin, vmin + 1.0
    sample = fg if fg.size <= 2_000_000 else fg[:: fg.size // 2_000_000 + 1]
    lo = vmin if vmin >= 0 else float(np.percentile(sample, lower))
    hi = float(np.percentile(sample, upper))
    if hi <= lo:  # only with a negative minimum (else lo is the minimum, below every foreground value)
        lo = vmin
    return lo, hi


def robust_normalize(data: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Scale intensities to [0, 1] over :func:`intensity_window` (``lower``/``upper`` percentiles), clipped; a
    constant image maps to zeros."""
    data = np.asarray(data, dtype=np.float32)
    lo, hi = intensity_window(data, lower, upper)
    out = data - np.float32(lo)  # one new array, then in place (a 1 mm volume is 30 MB per temporary)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)
