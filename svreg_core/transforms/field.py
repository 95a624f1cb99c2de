"""Velocity → displacement → warped image: the SPR model's spatial half, shared by optimiser and networks.

A stationary velocity ``v`` lives on a *velocity grid* in voxel units of that grid (see
:mod:`svreg_core.conventions`). :func:`apply_velocity` integrates it by scaling and squaring on that
grid, optionally transfers the displacement to a finer *image grid* with a :class:`GridTransfer`, and
warps the moving image there. The pairwise optimiser (velocity on a control grid, images on a finer
grid) and the networks (velocity and images on one network grid) both call it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from svreg_core.image.grid import Grid
from svreg_core.image.resample import source_coordinates
from svreg_core.image.sampling import grid_sample
from svreg_core.transforms.svf import integrate_velocity
from svreg_core.transforms.warp import warp


class GridTransfer:
    """Trilinear transfer of a displacement from a velocity grid to an image grid with the same axes.

    The vectors are rescaled from source voxels to target voxels per axis. When both grids are the
    same, the transfer is the identity.
    """

    def __init__(self, source: Grid, target: Grid, device: torch.device | str = "cpu") -> None:
        self.coords: torch.Tensor | None = None
        if source.same_as(target):
            return
        self.coords = source_coordinates(target, source, device=device, dtype=torch.float64).float()
        self.scale = torch.as_tensor(source.spacing / target.spacing, dtype=torch.float32,
                                     device=device).view(1, 3, 1, 1, 1)

    def __call__(self, displacement: torch.Tensor) -> torch.Tensor:
        if self.coords is None:
            return displacement
        return grid_sample(displacement, self.coords, padding_mode="border") * self.scale


@dataclass
class WarpedFields:
    """What one velocity produces.

    Attributes:
        displacement: ``(N, 3, I, J, K)`` ``u = exp(v)`` on the velocity grid, its voxel units.
        image_displacement: ``u`` on the image grid, its voxel units (``displacement`` itself when the
            grids coincide).
        warped: the moving image sampled at ``x + u(x)`` on the image grid.
        warped_mask: the moving mask warped alike, or ``None``.
    """

    displacement: torch.Tensor
    image_displacement: torch.Tensor
    warped: torch.Tensor
    warped_mask: torch.Tensor | None = None


def apply_velocity(moving: torch.Tensor, velocity: torch.Tensor, integration_steps: int, *,
                   transfer: GridTransfer | None = None, moving_mask: torch.Tensor | None = None) -> WarpedFields:
    """Integrate ``velocity`` (``exp(v)``, ``integration_steps`` squarings), then warp ``moving``.

    Args:
        moving: ``(N, C, *image grid)`` moving image already resampled onto the image grid.
        velocity: ``(N, 3, *velocity grid)`` in voxels of the velocity grid.
        transfer: velocity grid → image grid (``None``: the grids coincide).
        moving_mask: optional ``(N, 1, *image grid)`` mask warped like the image.
    """
    disp = integrate_velocity(velocity, integration_steps)
    disp_image = disp if transfer is None else transfer(disp)
    warped = warp(moving, disp_image)
    warped_mask = None if moving_mask is None else warp(moving_mask, disp_image)
    return WarpedFields(disp, disp_image, warped, warped_mask)
