"""Spatial smoothing of fields on their voxel grid (the optimiser's velocity, the SPR energy).

The kernel is ``passes`` passes of a 3-voxel box filter along each axis (three passes: the SPR
authors' three 3³ average pools), in voxels of the field's own grid; borders replicate.
"""
from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=32)
def _smoothing_matrix(length: int, passes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(length, length)`` matrix applying :func:`box_kernel` along one axis, replicate border folded in."""
    taps = torch.tensor(box_kernel(passes), dtype=dtype, device=device)
    columns = (torch.arange(length, device=device)[:, None]
               + torch.arange(-passes, passes + 1, device=device)).clamp(0, length - 1)
    return torch.zeros(length, length, dtype=dtype, device=device).scatter_add_(1, columns, taps.expand(length, -1))


def smooth_field(tensor: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Smooth a field ``(N, C, I, J, K)`` on its grid with ``passes`` 3-voxel box filters per axis.

    Replicate border. Each axis is one matrix product with a banded matrix (cheaper on CPU, forward and
    backward, than a depthwise ``conv3d``). ``passes = 0`` returns ``tensor`` itself.
    """
    if passes == 0:
        return tensor
    for axis in (2, 3, 4):
        matrix = _smoothing_matrix(tensor.shape[axis], passes, tensor.dtype, tensor.device)
        tensor = torch.movedim(torch.movedim(tensor, axis, -1) @ matrix.T, -1, axis)
    return tensor
