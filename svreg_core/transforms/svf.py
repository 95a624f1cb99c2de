"""Stationary velocity fields: exponentiation by scaling and squaring, and the inverse."""
from __future__ import annotations

import torch

from svreg_core.transforms.warp import compose


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement of ``exp(v)`` by scaling and squaring.

    Args:
        velocity: ``(N, 3, I, J, K)`` stationary velocity in voxel units of its grid.
        steps: number of squarings (0 or more); ``v`` is first divided by ``2**steps``.

    Returns:
        The displacement ``u`` of ``φ = exp(v)``, same shape and units.
    """
    if steps < 0:
        raise ValueError(f"integrate_velocity: steps must be 0 or more, not {steps}")
    disp = velocity / (2.0 ** steps)
    for _ in range(steps):
        disp = compose(disp, disp)
    return disp


def inverse_displacement(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement of ``φ⁻¹ = exp(−v)``."""
    return integrate_velocity(-velocity, steps)
