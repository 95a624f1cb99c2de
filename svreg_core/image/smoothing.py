"""Spatial smoothing of fields on their voxel grid (the optimiser's velocity, the SPR energy).

The kernel is ``passes`` passes of a 3-voxel box filter along each axis (three passes: the SPR
authors' three 3³ average pools), in voxels of the field's own grid; borders replicate.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

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


def smooth_field_weighted(tensor: torch.Tensor, weight: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Smooth ``(N, C, I, J, K)`` like :func:`smooth_field`, the exchange between two neighbours scaled by
    their weights' minimum (``weight`` ``(N, 1, I, J, K)`` in (0, 1]).

    Each 3-voxel box pass along an axis is one explicit diffusion step,
    ``x_i ← x_i + (c_{i,i+1} (x_{i+1} − x_i) + c_{i,i−1} (x_{i−1} − x_i)) / 3`` with the conductance
    ``c = min(w_i, w_j)``: where the weight is low, little of the field is carried across. The border
    replicates in every pass (no exchange across it), so ``w ≡ 1`` gives :func:`smooth_field` exactly for
    one pass, and for more passes everywhere but within ``passes − 1`` voxels of the border. No gradient
    flows into ``weight``.
    """
    if passes == 0:
        return tensor
    weight = weight.detach()
    for _ in range(passes):
        for axis in range(3):
            dim = 2 + axis
            n = tensor.shape[dim]
            if n < 2:
                continue
            conductance = torch.minimum(weight.narrow(dim, 0, n - 1), weight.narrow(dim, 1, n - 1))
            flux = conductance * (tensor.narrow(dim, 1, n - 1) - tensor.narrow(dim, 0, n - 1)) / 3.0
            zero = torch.zeros_like(flux.narrow(dim, 0, 1))
            tensor = tensor + torch.cat([flux, zero], dim) - torch.cat([zero, flux], dim)
    return tensor
