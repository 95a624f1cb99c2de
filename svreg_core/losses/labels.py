"""Label overlap as a training loss (SynthMorph's objective), for pairs that carry label maps.

SynthMorph (Hoffmann et al., IEEE TMI 2022) trains on synthetic images whose contrast is random, so an
image similarity says little about the alignment; its loss is the soft Dice of the label maps instead:
every label's indicator of the moving map is warped trilinearly by the predicted displacement and
compared with the fixed map's, ``1 − mean_k 2|F_k · M_k∘φ| / (|F_k| + |M_k∘φ|)`` over the labels ``k``
present in either map, background (0) excluded. Dimensionless, in [0, 1].

Both maps' indicators are first smoothed by a Gaussian of :data:`LABEL_SIGMA` voxels. Hard indicators
warped trilinearly have one-sided gradients at ``u = 0``: a boundary that must move towards lower
indices gets no gradient at all until ``u`` is already negative (the interpolation cell is the one
above), so a network starting at the identity hardly moves — measured: one synthetic pair, label term
plus regulariser, 60 Adam steps, Dice 0.624 → 0.624 with hard indicators, 0.624 → 0.741 smoothed. With
smoothing the loss is not 0 at perfect alignment (smoothed maps overlap less than 1), but it is still
smallest there.
"""
from __future__ import annotations

import torch
from torch import Tensor

from svreg_core.image.resample import gaussian_smooth
from svreg_core.transforms.warp import warp

__all__ = ["LABEL_SIGMA", "label_dice_loss"]

#: Gaussian sigma (voxels) smoothing the label indicators before they are warped and compared.
LABEL_SIGMA = 1.0


def label_dice_loss(fixed_labels: Tensor, moving_labels: Tensor, displacement: Tensor, *,
                    sigma: float = LABEL_SIGMA, eps: float = 1e-6) -> Tensor:
    """Soft Dice loss of ``moving_labels`` warped by ``displacement`` against ``fixed_labels``.

    Args:
        fixed_labels, moving_labels: ``(N, I, J, K)`` integer label maps on the displacement's grid.
        displacement: ``(N, 3, I, J, K)`` in voxels of that grid (the moving map is sampled at
            ``x + u(x)``, zero outside the grid).
        sigma: Gaussian sigma (voxels) smoothing both maps' indicators first; 0: hard indicators.
        eps: added to numerator and denominator (a label absent from both contributes Dice 1).

    Returns:
        0-d tensor, the mean over pairs of ``1 − mean Dice`` over the non-zero labels of the pair.
    """
    losses = []
    for index in range(displacement.shape[0]):
        fixed, moving = fixed_labels[index].long(), moving_labels[index].long()
        values = torch.unique(torch.cat((fixed.reshape(-1), moving.reshape(-1))))
        values = values[values != 0]
        if values.numel() == 0:
            losses.append(displacement.new_zeros(()))
            continue
        shape = (values.numel(), 1, 1, 1)
        fixed_hot = (fixed[None] == values.view(shape)).to(displacement.dtype)
        moving_hot = (moving[None] == values.view(shape)).to(displacement.dtype)
        if sigma > 0:
            fixed_hot = gaussian_smooth(fixed_hot[None], (sigma,) * 3)[0]
            moving_hot = gaussian_smooth(moving_hot[None], (sigma,) * 3)[0]
        warped = warp(moving_hot[None], displacement[index:index + 1], padding_mode="zeros")[0]
        overlap = (fixed_hot * warped).sum((1, 2, 3))
        total = fixed_hot.sum((1, 2, 3)) + warped.sum((1, 2, 3))
        losses.append(1.0 - ((2.0 * overlap + eps) / (total + eps)).mean())
    return torch.stack(losses).mean()
