"""Losses of the registration: image similarities, displacement regularisers, λ hyperpriors."""
from __future__ import annotations

from svreg_core.losses.hyperprior import PRIOR_NAMES, beta_neg_log_prior, gaussian_neg_log_prior, neg_log_prior
from svreg_core.losses.regularization import bending_energy, diffusion, weighted_diffusion
from svreg_core.losses.similarity import (
    SimilarityFn,
    get_similarity,
    lncc_loss,
    mind_loss,
    mind_ssc,
    mse_loss,
    ncc_loss,
)

__all__ = [
    "SimilarityFn", "get_similarity", "lncc_loss", "ncc_loss", "mse_loss", "mind_ssc", "mind_loss",
    "diffusion", "weighted_diffusion", "bending_energy",
    "PRIOR_NAMES", "beta_neg_log_prior", "gaussian_neg_log_prior", "neg_log_prior",
]
