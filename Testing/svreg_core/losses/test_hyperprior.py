"""Tests of svreg_core.losses.hyperprior, and of the SPR closed form λ* = min(1, α′ / (λ_max·g))."""
from __future__ import annotations

import math

import pytest
import torch

from svreg_core.losses import beta_neg_log_prior, gaussian_neg_log_prior, neg_log_prior, weighted_diffusion


def test_beta_prior_hand_value() -> None:
    w = torch.tensor([0.5, 1.0, 2.0, 0.0]).view(1, 1, 4, 1, 1)  # 2 -> 1, 0 -> 1e-6 by the clamp
    expected = -0.2 * (math.log(0.5) + 0.0 + 0.0 + math.log(1e-6)) / 4
    assert beta_neg_log_prior(w, 0.2).item() == pytest.approx(expected, rel=1e-6)
    assert neg_log_prior("beta", w, 0.2).item() == pytest.approx(expected, rel=1e-6)
    assert beta_neg_log_prior(w, 0.0).item() == 0.0


def test_gaussian_prior_hand_value() -> None:
    w = torch.tensor([0.0, 1.0, 3.0, 7.0]).view(1, 1, 4, 1, 1)  # 0 -> 1e-6, 7 -> 5
    expected = 0.5 * ((1e-6 - 1) ** 2 + 0.0 + 4.0 + 16.0) / 4
    assert gaussian_neg_log_prior(w, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert neg_log_prior("gaussian", w, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_neg_log_prior_rejects_unknown_name() -> None:
    with pytest.raises(ValueError):
        neg_log_prior("laplace", torch.ones(1, 1, 2, 2, 2), 1.0)


def test_beta_prior_gradcheck() -> None:
    w = (0.1 + 0.8 * torch.rand(1, 1, 3, 3, 2, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(0))).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: beta_neg_log_prior(x, 0.3), (w,))


# ------------------------------------------------------------------------------ SPR closed form

SHAPE = (3, 4, 3)
LAMBDA_MAX = 2.0


def _field(scale: float) -> torch.Tensor:
    return scale * torch.randn(1, 3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _per_voxel_energy(u: torch.Tensor) -> torch.Tensor:
    """g(x): the coefficient of λ(x) in weighted_diffusion(u, λ), derived from its normalisation.

    weighted_diffusion = (1/3) Σ_a (1/M_a) Σ_{x: x_a ≥ 1} λ(x) Σ_c (u_c(x) − u_c(x − e_a))², with
    M_a = N · 3 · (n_a − 1) · Π_{b≠a} n_b the number of elements of the axis-a difference tensor.
    """
    n = u.shape[0]
    g = torch.zeros(n, 1, *u.shape[2:], dtype=u.dtype)
    for a in range(3):
        diff = u.diff(dim=2 + a).square().sum(dim=1, keepdim=True)
        m_a = diff.numel() * 3
        idx = [slice(None)] * 5
        idx[2 + a] = slice(1, None)
        g[tuple(idx)] += diff / m_a / 3
    return g


def _closed_form(u: torch.Tensor, alpha_prime: float) -> torch.Tensor:
    # per voxel: −(α′ / (N·V)) log λ + λ_max · g · λ
    #   ->  λ* = min(1, α′ / (N·V · λ_max · g))
    n_vox = u.shape[0] * math.prod(u.shape[2:])
    g = _per_voxel_energy(u)
    return torch.clamp(alpha_prime / (n_vox * LAMBDA_MAX * g), max=1.0)


def _objective(u: torch.Tensor, logits: torch.Tensor, alpha_prime: float) -> torch.Tensor:
    lam = torch.sigmoid(logits)
    return LAMBDA_MAX * weighted_diffusion(u, lam) + beta_neg_log_prior(lam, alpha_prime)


def test_per_voxel_energy_matches_weighted_diffusion() -> None:
    # the derived constants are exact: weighted_diffusion is linear in λ with coefficients g
    u = _field(1.0)
    lam = torch.rand(1, 1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert weighted_diffusion(u, lam).item() == pytest.approx((_per_voxel_energy(u) * lam).sum().item(),
                                                              rel=1e-12)


def test_optimum_matches_closed_form() -> None:
    alpha_prime = 0.1
    u = _field(1.5)
    expected = _closed_form(u, alpha_prime)
    interior = expected < 0.9
    assert interior.sum() > 20 and (expected == 1.0).any()  # both regimes present
    logits = torch.zeros(1, 1, *SHAPE, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], lr=1.0, max_iter=500, tolerance_grad=1e-14,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _objective(u, logits, alpha_prime)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    lam = torch.sigmoid(logits.detach())
    torch.testing.assert_close(lam[interior], expected[interior], rtol=1e-4, atol=1e-6)
    # where the unconstrained optimum exceeds 1, λ is pushed towards the bound
    assert torch.all(lam[expected == 1.0] > 0.9)


def _adam(u: torch.Tensor, alpha_prime: float, steps: int = 600) -> torch.Tensor:
    logits = torch.full((1, 1, *SHAPE), 3.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    for _ in range(steps):
        opt.zero_grad()
        _objective(u, logits, alpha_prime).backward()
        opt.step()
        sched.step()
    return torch.sigmoid(logits.detach())


def test_alpha_prime_zero_lets_lambda_collapse() -> None:
    u = _field(1.5)
    g = _per_voxel_energy(u)
    seen = g > 0  # the corner voxel (0, 0, 0) is the upper voxel of no pair: it gets no gradient
    assert seen.sum() == math.prod(SHAPE) - 1
    collapsed = _adam(u, 0.0)
    assert torch.all(collapsed[seen] < 0.05)
    # with α′ > 0 the same descent stops at the closed form instead
    alpha_prime = 0.1
    kept = _adam(u, alpha_prime)
    expected = _closed_form(u, alpha_prime)
    interior = expected < 0.9
    torch.testing.assert_close(kept[interior], expected[interior], rtol=2e-2, atol=1e-3)
    assert kept[seen].mean() > 10 * collapsed[seen].mean()
