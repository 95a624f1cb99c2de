"""Regularisers of a displacement field.

``u`` is a displacement ``(N, 3, I, J, K)`` in **voxel units of an isotropic working grid**, channel
order ``(i, j, k)`` (see :mod:`svreg_core.conventions`). First derivatives of a displacement are
dimensionless (``u`` in voxels per voxel equals ``u`` in mm per mm on an isotropic grid), so
:func:`diffusion` and :func:`weighted_diffusion` need no spacing. :func:`bending_energy` has units of
1/length²; it accepts the grid ``spacing`` (mm) to return 1/mm² (default 1: 1/voxel²).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["diffusion", "weighted_diffusion", "bending_energy"]


def _check_field(u: Tensor) -> None:
    if u.ndim != 5 or u.shape[1] != 3:
        raise ValueError(f"displacement must be (N, 3, I, J, K); got {tuple(u.shape)}.")


def _forward_diffs(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Forward differences along i, j, k: ``u[x + e_a] − u[x]`` (one voxel shorter along axis ``a``)."""
    return (u[:, :, 1:] - u[:, :, :-1],
            u[:, :, :, 1:] - u[:, :, :, :-1],
            u[:, :, :, :, 1:] - u[:, :, :, :, :-1])


def diffusion(u: Tensor) -> Tensor:
    """Diffusion energy ``(1/3) Σ_axes mean(∂_a u)²`` (dimensionless).

    For each axis ``a`` the squared forward differences are averaged over the whole difference tensor
    (batch × 3 components × voxels of that difference); the three means are summed and divided by 3.
    Equals :func:`weighted_diffusion` with a weight ≡ 1.
    """
    _check_field(u)
    di, dj, dk = (d.square().mean() for d in _forward_diffs(u))
    return (di + dj + dk) / 3.0


def weighted_diffusion(u: Tensor, weight: Tensor) -> Tensor:
    """λ-weighted diffusion energy, the SPR ``L_wgrad`` (METHOD.md §2), dimensionless.

    ``(1/3) Σ_a mean(λ(x + e_a) · (u(x + e_a) − u(x))²)``: each squared forward difference along axis
    ``a`` is multiplied by λ at the *upper* voxel of the pair (index ``x + e_a``), averaged over the
    whole difference tensor (batch × 3 components × voxels of that difference), summed over the three
    axes and divided by 3. Nothing is detached: gradients flow into both ``u`` and ``weight``.

    Args:
        u: displacement ``(N, 3, I, J, K)``, voxels.
        weight: λ map ``(N, 1, I, J, K)`` (or ``(1, 1, I, J, K)``, shared by the batch) on the same
            grid as ``u``.

    Raises:
        ValueError: ``weight`` is not on ``u``'s grid.
    """
    _check_field(u)
    if (weight.ndim != 5 or weight.shape[1] != 1 or weight.shape[2:] != u.shape[2:]
            or weight.shape[0] not in (1, u.shape[0])):
        raise ValueError(f"weight must be (N, 1, I, J, K) on the displacement's grid; got "
                         f"{tuple(weight.shape)} for a displacement {tuple(u.shape)}.")
    di, dj, dk = _forward_diffs(u)
    total = ((di.square() * weight[:, :, 1:]).mean()
             + (dj.square() * weight[:, :, :, 1:]).mean()
             + (dk.square() * weight[:, :, :, :, 1:]).mean())
    return total / 3.0


def bending_energy(u: Tensor, spacing: float = 1.0) -> Tensor:
    """Bending energy ``mean(Σ_a ∂²_aa u² + 2 Σ_{a<b} ∂²_ab u²)`` with central differences.

    The second derivatives are evaluated at the interior voxels (one voxel away from every border;
    each axis needs at least 3 voxels) and the mean runs over batch × 3 components × interior voxels.
    Units: 1/voxel² for ``spacing = 1``; with the isotropic grid ``spacing`` in mm the result is in
    1/mm² (divided by ``spacing²``).

    Stencils: ``∂²_aa u = u(x+e_a) − 2u(x) + u(x−e_a)`` and
    ``∂²_ab u = (u(x+e_a+e_b) − u(x+e_a−e_b) − u(x−e_a+e_b) + u(x−e_a−e_b)) / 4``.
    """
    _check_field(u)
    if min(u.shape[2:]) < 3:
        raise ValueError(f"bending_energy needs at least 3 voxels along each axis; got {tuple(u.shape[2:])}.")

    shape = u.shape[2:]

    def at(shift: tuple[int, int, int]) -> Tensor:
        """``u(x + shift)`` at the interior voxels ``x``."""
        return u[(slice(None), slice(None))
                 + tuple(slice(1 + s, n - 1 + s) for s, n in zip(shift, shape))]

    def unit(*pairs: tuple[int, int]) -> tuple[int, int, int]:
        v = [0, 0, 0]
        for axis, step in pairs:
            v[axis] += step
        return (v[0], v[1], v[2])

    centre = at((0, 0, 0))
    energy = torch.zeros_like(centre)
    for a in range(3):
        d2 = at(unit((a, 1))) - 2.0 * centre + at(unit((a, -1)))
        energy = energy + d2.square()
    for a in range(3):
        for b in range(a + 1, 3):
            dab = (at(unit((a, 1), (b, 1))) - at(unit((a, 1), (b, -1)))
                   - at(unit((a, -1), (b, 1))) + at(unit((a, -1), (b, -1)))) / 4.0
            energy = energy + 2.0 * dab.square()
    return energy.mean() / (spacing * spacing)
