"""The shared SPR loss: its terms by hand, the velocity → warp path, the closed-form λ."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svreg_core.losses import lncc_loss, weighted_diffusion
from svreg_core.losses.spr import SPRLoss, closed_form_weight, gradient_energy
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.transforms import integrate_velocity, warp


def _tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fixed = torch.rand(1, 1, 12, 10, 9, generator=g)
    moving = torch.rand(1, 1, 12, 10, 9, generator=g)
    velocity = 0.5 * torch.randn(1, 3, 12, 10, 9, generator=g, dtype=torch.float32)
    weight = torch.rand(1, 1, 12, 10, 9, generator=g).clamp(0.05, 1.0)
    return fixed, moving, velocity, weight


def test_terms_are_the_three_method_terms() -> None:
    fixed, moving, velocity, weight = _tensors()
    disp = integrate_velocity(velocity, 4)
    warped = warp(moving, disp)
    loss = SPRLoss(similarity="lncc", lncc_window=5, alpha_prime=0.2, lambda_max=3.0)
    terms = loss.terms(fixed, warped, disp, weight)
    torch.testing.assert_close(terms["similarity"], lncc_loss(fixed, warped, window=5))
    torch.testing.assert_close(terms["regularization"], 3.0 * weighted_diffusion(disp, weight))
    torch.testing.assert_close(terms["prior"], -0.2 * weight.log().mean())
    torch.testing.assert_close(terms["total"], terms["similarity"] + terms["regularization"] + terms["prior"])


def test_uniform_regulariser_ignores_the_weight_and_has_no_prior() -> None:
    fixed, moving, velocity, weight = _tensors(1)
    disp = integrate_velocity(velocity, 3)
    warped = warp(moving, disp)
    uniform = SPRLoss(alpha_prime=0.2, lambda_max=2.0, spr=False).terms(fixed, warped, disp, None)
    assert float(uniform["prior"]) == 0.0
    torch.testing.assert_close(uniform["regularization"], 2.0 * weighted_diffusion(disp, torch.ones_like(weight)))


def test_evaluate_is_integrate_warp_then_terms() -> None:
    fixed, moving, velocity, weight = _tensors(2)
    loss = RegistrationParameters(alpha_prime=0.1, lambda_max=1.5).spr_loss()
    terms, fields = loss.evaluate(fixed, moving, velocity, weight, integration_steps=5)
    disp = integrate_velocity(velocity, 5)
    torch.testing.assert_close(fields.displacement, disp)
    torch.testing.assert_close(fields.warped, warp(moving, disp))
    expected = loss.terms(fixed, warp(moving, disp), disp, weight)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value)


def test_gradients_reach_velocity_and_weight() -> None:
    fixed, moving, velocity, weight = _tensors(3)
    velocity.requires_grad_(True)
    weight.requires_grad_(True)
    terms, _ = SPRLoss().evaluate(fixed, moving, velocity, weight, integration_steps=3)
    terms["total"].backward()
    assert velocity.grad is not None and velocity.grad.abs().sum() > 0
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_closed_form_weight_by_hand() -> None:
    g = torch.tensor([0.0, 0.01, 0.1, 1.0, 1e9])
    lam = closed_form_weight(g, alpha_prime=0.2, lambda_max=2.0)
    # α′/(λ_max g) = 0.1/g: ∞ → 1, 10 → 1, 1 → 1, 0.1, 1e-10 → clamped 1e-6
    np.testing.assert_allclose(lam.numpy(), [1.0, 1.0, 1.0, 0.1, 1e-6], rtol=1e-6)


def test_closed_form_weight_minimises_the_per_voxel_objective() -> None:
    g, a, lm = 0.37, 0.05, 1.3
    grid = torch.linspace(1e-4, 1.0, 200001, dtype=torch.float64)
    objective = -a * grid.log() + lm * grid * g
    best = float(grid[objective.argmin()])
    assert abs(float(closed_form_weight(torch.tensor(g, dtype=torch.float64), a, lm)) - best) < 1e-4


def test_gradient_energy_of_a_linear_field_by_hand() -> None:
    """u_0 = s·i on a 4×5×6 grid: along i every difference is s, so g = (1/9)·(V/V_i)·s² = (1/9)·(4/3)·s²
    except at i = 0 (no lower neighbour), and the other axes add nothing."""
    s = 0.3
    u = torch.zeros(1, 3, 4, 5, 6, dtype=torch.float64)
    u[0, 0] = s * torch.arange(4, dtype=torch.float64)[:, None, None]
    g = gradient_energy(u)
    assert g.shape == (1, 1, 4, 5, 6)
    torch.testing.assert_close(g[0, 0, 1:], torch.full((3, 5, 6), (4 / 3) * s * s / 9, dtype=torch.float64))
    assert torch.count_nonzero(g[0, 0, 0]) == 0


def test_weighted_diffusion_is_the_mean_of_weight_times_gradient_energy() -> None:
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 3, 5, 6, 7, generator=gen, dtype=torch.float64)
    lam = torch.rand(2, 1, 5, 6, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(weighted_diffusion(u, lam), (lam * gradient_energy(u)).mean())


@pytest.mark.parametrize("prior, strength", [("beta", 0.05), ("gaussian", 0.4)])
def test_optimal_weight_is_where_gradient_descent_on_the_loss_ends(prior: str, strength: float) -> None:
    """For a fixed field with large strain in one half, minimising regularisation + prior over a free
    per-voxel λ (Adam on log λ ≤ 0, no closed form used) ends at ``optimal_weight``, and λ drops
    only where the field strains."""
    u = torch.zeros(1, 3, 8, 8, 8, dtype=torch.float64)
    ramp = torch.linspace(0, 1, 8, dtype=torch.float64)
    u[0, 1, 4:] = 6.0 * ramp[:, None].expand(8, 8)[None].expand(4, 8, 8)  # strain along j in i >= 4
    loss = SPRLoss(prior=prior, alpha_prime=strength, lambda_max=2.0)
    log_lam = torch.full((1, 1, 8, 8, 8), -0.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_lam], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        lam = log_lam.exp()
        terms = loss.terms(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2), u, lam)
        (terms["regularization"] + terms["prior"]).backward()
        opt.step()
        with torch.no_grad():
            log_lam.clamp_(max=0.0)  # λ ∈ (0, 1]
    lam = log_lam.detach().exp()
    expected = loss.optimal_weight(u)
    torch.testing.assert_close(lam, expected, atol=2e-3, rtol=0)
    assert float(expected[0, 0, :4].min()) == 1.0 and float(expected[0, 0, 5:, 1:].max()) < 0.9
