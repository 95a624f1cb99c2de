"""Landmark metric: target registration error (TRE) in millimetres."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from svreg_core.conventions import point_rows
from svreg_core.errors import InputError

__all__ = ["tre", "tre_summary"]


def _points(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` as a float64 ``(N, 3)`` array (:func:`~svreg_core.conventions.point_rows`) of finite values."""
    pts = point_rows(arr, name)
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name} contains NaN or infinite values.")
    return pts


def tre(fixed_points: np.ndarray, moving_points: np.ndarray,
        mapping: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Target registration error of each landmark pair, in millimetres, shape ``(N,)``.

    ``TRE_n = || mapping(fixed_points)[n] - moving_points[n] ||_2``.

    Args:
        fixed_points: ``(N, 3)`` landmark positions in the fixed image's world, RAS mm.
        moving_points: ``(N, 3)`` corresponding positions in the moving image's world, RAS mm.
        mapping: the registration transform in the resampling (pull) direction: takes ``(N, 3)``
            fixed-world RAS mm points to ``(N, 3)`` moving-world RAS mm points.
    """
    fixed = _points(fixed_points, "fixed_points")
    moving = _points(moving_points, "moving_points")
    if fixed.shape != moving.shape:
        raise InputError(f"fixed_points {fixed.shape} and moving_points {moving.shape} differ in size.")
    mapped = np.asarray(mapping(fixed), dtype=np.float64)
    if mapped.shape != fixed.shape:
        raise InputError(f"mapping returned shape {mapped.shape}, expected {fixed.shape}.")
    return np.linalg.norm(mapped - moving, axis=1)


def tre_summary(errors: np.ndarray) -> dict[str, float]:
    """Summary of TRE values (mm): ``mean``, ``std`` (population, ddof=0), ``median``, ``max``."""
    err = np.asarray(errors, dtype=np.float64).ravel()
    if err.size == 0:
        raise InputError("No landmark errors to summarise.")
    return {"mean": float(err.mean()), "std": float(err.std()),
            "median": float(np.median(err)), "max": float(err.max())}
