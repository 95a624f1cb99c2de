"""Warping tensors by displacement fields given in voxel units of their own grid."""
from __future__ import annotations

import torch

from svreg_core.conventions import add_identity_, voxel_displacement_to_normalized
from svreg_core.image.sampling import grid_sample


def warp(image: torch.Tensor, displacement: torch.Tensor, *, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Sample ``image`` at ``x + displacement(x)`` for every voxel ``x`` of the same grid.

    Args:
        image: ``(N, C, I, J, K)``.
        displacement: ``(N, 3, I, J, K)`` in voxel units of that grid, channels ``(i, j, k)``.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
        padding_mode: grid_sample padding outside the grid.
    """
    if image.shape[2:] != displacement.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} and displacement grid "
                         f"{tuple(displacement.shape[2:])} differ")
    # in place on fresh tensors whose values no backward pass needs: one field-sized copy less each
    grid = add_identity_(voxel_displacement_to_normalized(displacement))
    return grid_sample(image, grid, mode=mode, padding_mode=padding_mode)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``T_outer ∘ T_inner``: ``x -> x + inner(x) + outer(x + inner(x))`` (voxel units)."""
    return warp(outer, inner).add_(inner)  # grid_sample's backward needs its inputs, not its output
