"""Warping tensors by displacement fields given in voxel units of their own grid."""
from __future__ import annotations

import torch

from svreg_core.conventions import add_identity_, voxel_displacement_to_normalized
from svreg_core.image.sampling import grid_sample

#: Rows (along ``i``) sampled at once by :func:`warp` when no gradient is needed: the sampling coordinates
#: of a whole 1 mm field are 87 MB per copy, a slab's a few MB.
SLAB_ROWS = 16


def displaced_coordinates(displacement: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """grid_sample coordinates ``(N, rows, J, K, 3)`` of ``x + displacement(x)`` for rows ``start:stop`` (along
    ``i``) of the displacement's grid; ``displacement`` ``(N, 3, I, J, K)`` in voxels of that grid."""
    shape = tuple(displacement.shape[2:])
    # in place on a fresh tensor whose values no backward pass needs: one field-sized copy less
    return add_identity_(voxel_displacement_to_normalized(displacement[:, :, start:stop], shape), shape, start)


def warp(image: torch.Tensor, displacement: torch.Tensor, *, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Sample ``image`` at ``x + displacement(x)`` for every voxel ``x`` of the same grid.

    Without a gradient to record, the rows are sampled in slabs of :data:`SLAB_ROWS` (the same values:
    every point is sampled on its own).

    Args:
        image: ``(N, C, I, J, K)``.
        displacement: ``(N, 3, I, J, K)`` in voxel units of that grid, channels ``(i, j, k)``.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
        padding_mode: grid_sample padding outside the grid.
    """
    if image.shape[2:] != displacement.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} and displacement grid "
                         f"{tuple(displacement.shape[2:])} differ")
    rows = image.shape[2]
    if rows <= SLAB_ROWS or (torch.is_grad_enabled() and (image.requires_grad or displacement.requires_grad)):
        return grid_sample(image, displaced_coordinates(displacement), mode=mode, padding_mode=padding_mode)
    out = image.new_empty((*image.shape[:2], *displacement.shape[2:]))
    for start in range(0, rows, SLAB_ROWS):
        coords = displaced_coordinates(displacement, start, start + SLAB_ROWS)
        out[:, :, start:start + SLAB_ROWS] = grid_sample(image, coords, mode=mode, padding_mode=padding_mode)
    return out


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``T_outer ∘ T_inner``: ``x -> x + inner(x) + outer(x + inner(x))`` (voxel units)."""
    return warp(outer, inner).add_(inner)  # grid_sample's backward needs its inputs, not its output
