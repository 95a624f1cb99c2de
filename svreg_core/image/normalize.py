"""Intensity normalisation robust to scale and outliers."""
from __future__ import annotations

import numpy as np


def robust_normalize(data: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Scale intensities to [0, 1] between percentiles ``lower`` and ``upper`` of the foreground, clipped.

    The foreground is every voxel above the image minimum (so zero-padded backgrounds do not pull
    the lower percentile); a constant image maps to zeros.
    """
    data = np.asarray(data, dtype=np.float32)
    vmin = float(data.min())
    fg = data[data > vmin]
    if fg.size == 0:
        return np.zeros_like(data)
    sample = fg if fg.size <= 2_000_000 else fg[:: fg.size // 2_000_000 + 1]
    lo, hi = np.percentile(sample, [lower, upper])
    lo = min(lo, vmin) if vmin >= 0 and lower <= 1.0 else lo
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
