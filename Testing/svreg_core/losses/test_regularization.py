"""Tests of svreg_core.losses.regularization against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from svreg_core.losses import bending_energy, diffusion, weighted_diffusion


def _grid(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    return torch.meshgrid(*axes, indexing="ij")


def _ramp(a: float, shape=(6, 5, 4), component: int = 0, axis: int = 0) -> torch.Tensor:
    """u_component = a · x_axis, other components 0."""
    u = torch.zeros(1, 3, *shape, dtype=torch.float64)
    u[0, component] = a * _grid(shape)[axis]
    return u


@pytest.mark.parametrize("component, axis", [(0, 0), (2, 1), (1, 2)])
def test_diffusion_of_a_ramp(component: int, axis: int) -> None:
    # one component has forward difference a along one axis, everything else 0:
    # that axis' mean = a² · (1/3 of the elements), the others 0, then / 3  ->  a² / 9
    a = 1.7
    assert diffusion(_ramp(a, component=component, axis=axis)).item() == pytest.approx(a * a / 9)


def test_diffusion_of_constant_field_is_zero() -> None:
    assert diffusion(torch.full((2, 3, 4, 4, 4), 2.5)).item() == 0.0


def test_weighted_diffusion_with_unit_weight_is_diffusion() -> None:
    u = torch.randn(2, 3, 5, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.ones(2, 1, 5, 4, 6, dtype=torch.float64)
    assert weighted_diffusion(u, w).item() == pytest.approx(diffusion(u).item(), rel=1e-12)
    # a batch-shared weight (1, 1, ...) is accepted
    assert weighted_diffusion(u, w[:1]).item() == pytest.approx(diffusion(u).item(), rel=1e-12)


def test_weighted_diffusion_ramp_with_weight_zero_on_upper_half() -> None:
    # I = 6, ramp u_0 = a·i; pairs (i-1, i) take λ at their upper voxel i = 1..5.
    # λ = 1 for i < 3, 0 for i >= 3  ->  2 of the 5 pairs count: a² · (2/5) · (1/3) / 3 = 2a²/45
    a = 2.0
    u = _ramp(a)
    w = torch.ones(1, 1, 6, 5, 4, dtype=torch.float64)
    w[:, :, 3:] = 0.0
    assert weighted_diffusion(u, w).item() == pytest.approx(2 * a * a / 45)


def test_weighted_diffusion_uses_the_upper_voxel_of_each_pair() -> None:
    a = 1.0
    u = _ramp(a)
    only_first = torch.zeros(1, 1, 6, 5, 4, dtype=torch.float64)
    only_first[:, :, 0] = 1.0  # i = 0 is the upper voxel of no pair along i
    assert weighted_diffusion(u, only_first).item() == 0.0
    only_last = torch.zeros(1, 1, 6, 5, 4, dtype=torch.float64)
    only_last[:, :, 5] = 1.0  # upper voxel of the pair (4, 5) only
    assert weighted_diffusion(u, only_last).item() == pytest.approx(a * a / 5 / 3 / 3)


@pytest.mark.parametrize("shape", [(1, 1, 5, 5, 4), (1, 1, 6, 5), (1, 3, 6, 5, 4), (3, 1, 6, 5, 4)])
def test_weighted_diffusion_rejects_weight_on_another_grid(shape: tuple[int, ...]) -> None:
    u = torch.zeros(2, 3, 6, 5, 4)
    with pytest.raises(ValueError):
        weighted_diffusion(u, torch.ones(shape))


def test_weighted_diffusion_gradcheck_wrt_u_and_weight() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(1, 3, 3, 4, 3, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.rand(1, 1, 3, 4, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(weighted_diffusion, (u, w))


def test_bending_energy_of_linear_field_is_zero() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(3, dtype=torch.float64, generator=g)
    x = torch.stack(_grid((5, 6, 4)))  # (3, I, J, K)
    u = (torch.einsum("ca,aijk->cijk", a, x) + b.view(3, 1, 1, 1)).unsqueeze(0)
    assert bending_energy(u).item() == pytest.approx(0.0, abs=1e-20)


def test_bending_energy_of_quadratic_fields() -> None:
    shape = (5, 6, 4)
    i, j, _ = _grid(shape)
    a, b = 0.7, 1.3
    u = torch.zeros(1, 3, *shape, dtype=torch.float64)
    u[0, 0] = a * i * i   # ∂²_ii u_0 = 2a, nothing else
    u[0, 1] = b * i * j   # ∂²_ij u_1 = b, counted twice
    # mean over 3 components of the per-component sums: ((2a)² + 2b² + 0) / 3
    expected = (4 * a * a + 2 * b * b) / 3
    assert bending_energy(u).item() == pytest.approx(expected, rel=1e-12)
    # spacing in mm: second derivatives of a mm-displacement over mm scale by 1/spacing
    assert bending_energy(u, spacing=2.0).item() == pytest.approx(expected / 4, rel=1e-12)


def test_bending_energy_needs_three_voxels() -> None:
    with pytest.raises(ValueError):
        bending_energy(torch.zeros(1, 3, 2, 5, 5))
