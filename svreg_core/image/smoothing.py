"""Spatial smoothing of fields on their voxel grid (the optimiser's velocity, the SPR energy).

The kernel is ``passes`` passes of a 3-voxel box filter along each axis (three passes: the SPR
authors' three 3³ average pools), in voxels of the field's own grid; borders replicate.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch


@functools.lru_cache(maxsize=8)
def box_kernel(passes: int) -> tuple[float, ...]:
    """Taps of ``passes`` 3-voxel box filters in a row (``2·passes + 1`` taps summing to 1; ``(1.0,)`` for 0).

    Three passes: ``[1, 3, 6, 7, 6, 3, 1] / 27``.
    """
    taps = np.ones(1)
    for _ in range(passes):
        taps = np.convolve(taps, np.ones(3) / 3.0)
    return tuple(float(t) for t in taps)


@functools.lru_cache(maxsize=64)
def _band_matrix(length: int, taps: tuple[float, ...], step: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """``(ceil(length / step), length)`` matrix applying the centred ``taps`` along one axis, replicate
    border folded in, keeping every ``step``-th output voxel."""
    radius = len(taps) // 2
    kernel = torch.tensor(taps, dtype=dtype, device=device)
    rows = torch.arange(0, length, step, device=device)
    columns = (rows[:, None] + torch.arange(-radius, radius + 1, device=device)).clamp(0, length - 1)
    return torch.zeros(len(rows), length, dtype=dtype, device=device).scatter_add_(
        1, columns, kernel.expand(len(rows), -1))


def filter_separable(tensor: torch.Tensor, taps: Sequence[tuple[float, ...] | None],
                     steps: Sequence[int] = (1, 1, 1)) -> torch.Tensor:
    """Filter ``(N, C, I, J, K)`` along each axis with centred ``taps`` (``None``: axis left alone),
    replicate border, keeping every ``steps[a]``-th voxel along axis ``a`` (output ``n`` is input
    ``n * step``). Each axis is one product with a banded matrix (cheaper on CPU, forward and backward,
    than a depthwise ``conv3d``; bitwise the same for any thread count)."""
    for axis, (axis_taps, step) in enumerate(zip(taps, steps)):
        if axis_taps is None:
            continue
        matrix = _band_matrix(tensor.shape[2 + axis], tuple(axis_taps), int(step), tensor.dtype, tensor.device)
        tensor = torch.movedim(torch.movedim(tensor, 2 + axis, -1) @ matrix.T, -1, 2 + axis)
    return tensor


def smooth_field(tensor: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Smooth a field ``(N, C, I, J, K)`` on its grid with ``passes`` 3-voxel box filters per axis.

    Replicate border (:func:`filter_separable`). ``passes = 0`` returns ``tensor`` itself.
    """
    if passes == 0:
        return tensor
    return filter_separable(tensor, (box_kernel(passes),) * 3)
