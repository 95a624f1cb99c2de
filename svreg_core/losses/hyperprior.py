"""Hyperpriors on the spatially varying regularisation weight λ(x) (METHOD.md §1–2).

``weight`` is the λ map ``(N, 1, I, J, K)`` (any shape works: the priors are means over all its
elements). λ is dimensionless; so are the returned negative log-priors (up to additive constants).
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["beta_neg_log_prior", "gaussian_neg_log_prior", "neg_log_prior", "PRIOR_NAMES"]

#: Names accepted by :func:`neg_log_prior`.
PRIOR_NAMES = ("beta", "gaussian")


def beta_neg_log_prior(weight: Tensor, alpha_prime: float) -> Tensor:
    """Beta(1 + α′, 1) prior: ``−α′ · mean(log clamp(λ, 1e-6, 1))``.

    Pulls λ towards 1. With ``alpha_prime = 0`` it is identically 0 and nothing stops λ collapsing
    to 0 under the weighted diffusion term. The clamp passes no gradient outside [1e-6, 1].
    """
    return -float(alpha_prime) * weight.clamp(1e-6, 1.0).log().mean()


def gaussian_neg_log_prior(weight: Tensor, w: float) -> Tensor:
    """Gaussian N(1, σ²) prior: ``w · mean((clamp(λ, 1e-6, 5) − 1)²)``."""
    return float(w) * (weight.clamp(1e-6, 5.0) - 1.0).square().mean()


def neg_log_prior(name: str, weight: Tensor, strength: float) -> Tensor:
    """Negative log hyperprior by name.

    ``"beta"``: :func:`beta_neg_log_prior` with ``strength`` = α′; ``"gaussian"``:
    :func:`gaussian_neg_log_prior` with ``strength`` = w.
    """
    key = name.lower()
    if key == "beta":
        return beta_neg_log_prior(weight, strength)
    if key == "gaussian":
        return gaussian_neg_log_prior(weight, strength)
    raise ValueError(f"unknown prior {name!r}; choose one of {', '.join(PRIOR_NAMES)}.")
