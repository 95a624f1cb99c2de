"""The SPR loss (METHOD.md §2), one definition for the pairwise optimiser and the networks.

``L = L_sim(fixed, moving∘φ) + λ_max · L_wgrad(u, λ) + L_prior(λ)``, returned as named terms so
callers can log them. The displacement ``u`` is in voxel units of its (isotropic) grid and λ lives on
the same grid (:func:`svreg_core.losses.regularization.weighted_diffusion`). With ``spr=False`` the
regulariser is uniform diffusion of the same strength (λ ≡ 1) and the prior term is 0.

For a given ``u`` the loss is minimised over λ voxel by voxel in closed form
(:meth:`SPRLoss.optimal_weight`): a network predicts λ, the pairwise optimiser uses this optimum, which
turns the quadratic penalty into a robust (logarithmic, for the Beta prior) one where ``u`` strains a lot.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from svreg_core.losses.hyperprior import neg_log_prior
from svreg_core.losses.regularization import weighted_diffusion
from svreg_core.losses.similarity import SimilarityFn, get_similarity
from svreg_core.transforms.field import GridTransfer, WarpedFields, apply_velocity


@dataclass(frozen=True)
class SPRLoss:
    """The SPR objective.

    Attributes:
        similarity: ``"lncc"``, ``"mse"`` or ``"mind"``.
        lncc_window: LNCC window width (voxels); ignored by the other similarities.
        prior: ``"beta"`` (α′ of Beta(1 + α′, 1)) or ``"gaussian"`` (w of N(1, σ²)).
        alpha_prime: hyperprior strength (dimensionless).
        lambda_max: weight of the λ-weighted diffusion (dimensionless).
        spr: spatially varying λ; ``False`` uses λ ≡ 1 and no prior.
    """

    similarity: str = "lncc"
    lncc_window: int = 5
    prior: str = "beta"
    alpha_prime: float = 0.175
    lambda_max: float = 1.0
    spr: bool = True
    _similarity: SimilarityFn = field(init=False, repr=False, compare=False)  # set from ``similarity``

    def __post_init__(self) -> None:
        kwargs = {"window": self.lncc_window} if self.similarity == "lncc" else {}
        object.__setattr__(self, "_similarity", get_similarity(self.similarity, **kwargs))

    def terms(self, fixed: Tensor, warped: Tensor, displacement: Tensor, weight: Tensor | None,
              mask: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms for a warped image and the displacement/λ that produced it.

        Args:
            fixed, warped: ``(N, C, *image grid)``.
            displacement: ``(N, 3, *velocity grid)`` voxels of that grid.
            weight: λ ``(N or 1, 1, *velocity grid)`` in (0, 1]; ignored (may be ``None``) when ``spr`` is off.
            mask: optional ``(N, 1, *image grid)`` restricting the similarity.

        Returns:
            ``{"similarity", "regularization", "prior", "total"}`` as 0-d tensors.
        """
        sim = self._similarity(fixed, warped, mask)
        if self.spr:
            if weight is None:
                raise ValueError("SPRLoss with spr=True needs a weight map.")
            reg = self.lambda_max * weighted_diffusion(displacement, weight)
            prior = neg_log_prior(self.prior, weight, self.alpha_prime)
        else:
            ones = torch.ones_like(displacement[:, :1])
            reg = self.lambda_max * weighted_diffusion(displacement, ones)
            prior = torch.zeros((), device=displacement.device, dtype=displacement.dtype)
        return {"similarity": sim, "regularization": reg, "prior": prior, "total": sim + reg + prior}

    def optimal_weight(self, displacement: Tensor) -> Tensor:
        """λ minimising this loss for a fixed ``displacement`` ``(N, 3, I, J, K)``, voxel by voxel.

        Beta: ``min(1, α′ / (λ_max g))``; Gaussian: ``1 − λ_max g / (2 w)``; both clamped like their prior
        (``g`` = :func:`gradient_energy`). Returns ``(N, 1, I, J, K)``, detached from ``displacement``.
        """
        g = gradient_energy(displacement.detach())
        if self.prior == "beta":
            return closed_form_weight(g, self.alpha_prime, self.lambda_max)
        lam = 1.0 - self.lambda_max * g / (2.0 * self.alpha_prime) if self.alpha_prime > 0 \
            else torch.where(g > 0, torch.zeros_like(g), torch.ones_like(g))
        return lam.clamp(1e-6, 1.0)

    def evaluate(self, fixed: Tensor, moving: Tensor, velocity: Tensor, weight: Tensor | None, *,
                 integration_steps: int, transfer: GridTransfer | None = None,
                 fixed_mask: Tensor | None = None, moving_mask: Tensor | None = None,
                 ) -> tuple[dict[str, Tensor], WarpedFields]:
        """Velocity and λ → displacement → warped moving → loss terms (one forward pass of the model).

        ``fixed``/``moving`` are on the image grid, ``velocity``/``weight`` on the velocity grid
        (``transfer`` maps between them). The similarity is restricted to ``fixed_mask`` times the
        warped ``moving_mask`` when given.
        """
        fields = apply_velocity(moving, velocity, integration_steps, transfer=transfer, moving_mask=moving_mask)
        mask = fixed_mask
        if fields.warped_mask is not None:
            mask = fields.warped_mask if mask is None else mask * fields.warped_mask
        return self.terms(fixed, fields.warped, fields.displacement, weight, mask), fields


def gradient_energy(displacement: Tensor) -> Tensor:
    """Per-voxel squared-gradient energy ``g`` in the loss's normalisation, ``(N, 1, I, J, K)``, dimensionless.

    Defined so that ``weighted_diffusion(u, λ) == mean(λ · g)`` for every λ of ``u``'s shape:
    ``g(x) = (1/9) Σ_a (V / V_a) Σ_c (u_c(x) − u_c(x − e_a))²`` with ``V`` the voxel count and ``V_a``
    that of the forward differences along axis ``a`` (the term is 0 where ``x`` is the first voxel
    along ``a``), matching λ taken at the upper voxel of each pair.
    """
    shape = displacement.shape[2:]
    energy = torch.zeros_like(displacement[:, :1])
    for axis, n in enumerate(shape):
        if n < 2:
            continue
        upper = [slice(None)] * 5
        upper[2 + axis] = slice(1, None)
        lower = [slice(None)] * 5
        lower[2 + axis] = slice(None, -1)
        diff = (displacement[tuple(upper)] - displacement[tuple(lower)]).square().sum(1, keepdim=True)
        energy[tuple(upper)] += diff * (n / (n - 1)) / 9.0  # V / V_a = n / (n - 1)
    return energy


def closed_form_weight(gradient_energy: Tensor, alpha_prime: float, lambda_max: float) -> Tensor:
    """Per-voxel minimiser of ``−α′ log λ + λ_max · λ · g`` over λ ∈ (0, 1]: ``min(1, α′ / (λ_max g))``.

    ``gradient_energy`` ``g`` ≥ 0 is the voxel's squared-gradient energy in the loss's normalisation
    (:func:`gradient_energy`); where ``g = 0`` the minimiser is 1. The result is clamped to [1e-6, 1]
    like the prior.
    """
    g = gradient_energy.clamp_min(0)
    lam = torch.where(g > 0, alpha_prime / (lambda_max * g).clamp_min(1e-30), torch.ones_like(g))
    return lam.clamp(1e-6, 1.0)
