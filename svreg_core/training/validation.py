"""Per-epoch validation of a network on the network grid: SPR loss terms, Dice and folding.

For every validation pair the network predicts ``(v, λ)``; the shared SPR loss
(:meth:`svreg_core.losses.spr.SPRLoss.evaluate`) integrates ``u = exp(v)`` and gives the loss terms;
the moving label map is warped through ``u`` (one-hot trilinear + argmax, or nearest neighbour) and
scored against the fixed label map by mean Dice over the labels present in both
(:func:`svreg_core.metrics.dice`); folding is the share of voxels of the network grid with
``det J ≤ 0`` (:func:`svreg_core.metrics.jacobian_determinant`). The network grid is isotropic and
RAS-aligned, so the determinant of the voxel-unit field equals that of the world field.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from svreg_core.image.sampling import sample_labels
from svreg_core.losses.spr import SPRLoss
from svreg_core.metrics import dice, folding_percent, jacobian_determinant, scored_labels
from svreg_core.training.step import TERMS, training_step
from svreg_core.transforms import displaced_coordinates


def warp_labels(labels: torch.Tensor, displacement: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """Label map ``(I, J, K)`` sampled at ``x + u(x)``; ``u`` ``(1, 3, I, J, K)`` in voxels of the same grid.

    ``mode``: ``"linear"`` (one-hot trilinear + argmax) or ``"nearest"``, as
    :func:`svreg_core.image.sampling.sample_labels`. Outside the grid the label is 0.
    """
    return sample_labels(labels.to(displacement.device), displaced_coordinates(displacement), mode)


@dataclass
class ValidationSums:
    """Sums over the pairs one process evaluated (summed over ranks, then divided by the counts).

    Attributes:
        pairs: pairs evaluated.
        terms: sum of each loss term over the pairs.
        folding: sum of the pairs' folding percentages.
        dice_pairs: pairs with labels present in both maps.
        dice: sum of the pairs' mean Dice after registration.
        dice_identity: sum of the pairs' mean Dice before (identity transform).
    """

    pairs: int = 0
    terms: dict[str, float] = field(default_factory=lambda: {t: 0.0 for t in TERMS})
    folding: float = 0.0
    dice_pairs: int = 0
    dice: float = 0.0
    dice_identity: float = 0.0

    def to_list(self) -> list[float]:
        return [self.pairs, *(self.terms[t] for t in TERMS), self.folding, self.dice_pairs, self.dice,
                self.dice_identity]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> ValidationSums:
        pairs, *rest = values
        terms = dict(zip(TERMS, rest[:len(TERMS)]))
        folding, dice_pairs, dice_sum, dice_identity = rest[len(TERMS):]
        return cls(int(pairs), terms, folding, int(dice_pairs), dice_sum, dice_identity)

    def means(self) -> dict[str, float | None]:
        """``val_<term>``, ``val_folding_percent``, ``val_dice``, ``val_dice_identity`` (``None`` when undefined)."""
        out: dict[str, float | None] = {f"val_{t}": (self.terms[t] / self.pairs if self.pairs else None)
                                        for t in TERMS}
        out["val_folding_percent"] = self.folding / self.pairs if self.pairs else None
        out["val_dice"] = self.dice / self.dice_pairs if self.dice_pairs else None
        out["val_dice_identity"] = self.dice_identity / self.dice_pairs if self.dice_pairs else None
        return out


def _mean_dice(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[int] | None) -> float | None:
    scores = dice(fixed, warped, labels)
    return float(np.mean(list(scores.values()))) if scores else None


@torch.no_grad()
def validate(model: nn.Module, loss: SPRLoss, batches: Iterable[dict], *, integration_steps: int,
             label_weight: float = 0.0, labels: Sequence[int] | None = None,
             label_interpolation: str = "linear", codes: tuple[float, float] | None = None) -> ValidationSums:
    """Evaluate ``model`` (in eval mode, restored afterwards) on ``batches`` of single pairs.

    The loss terms are those of training (:func:`~svreg_core.training.step.training_step`, ``label_weight``
    as trained); a hyper network is evaluated at ``codes`` ``(α′, λ_max)``, the loss too.
    """
    was_training = model.training
    model.eval()
    sums = ValidationSums()
    try:
        for batch in batches:
            terms, fields = training_step(model, loss, batch, integration_steps, label_weight, codes)
            count = batch["fixed"].shape[0]
            sums.pairs += count
            for t in TERMS:  # each term is a mean over the batch's pairs
                sums.terms[t] += float(terms[t]) * count
            for index in range(count):
                disp = fields.displacement[index:index + 1]
                det = jacobian_determinant(disp[0].permute(1, 2, 3, 0).double().cpu().numpy(), np.eye(4))
                sums.folding += folding_percent(det)
                if "fixed_labels" not in batch or "moving_labels" not in batch:
                    continue
                fixed_labels = batch["fixed_labels"][index].cpu().numpy()
                moving_labels = batch["moving_labels"][index]
                warped = warp_labels(moving_labels, disp, label_interpolation).cpu().numpy()
                moving = moving_labels.cpu().numpy()
                scored = scored_labels(fixed_labels, moving, labels)  # a label the warp erased scores 0
                after = _mean_dice(fixed_labels, warped, scored)
                before = _mean_dice(fixed_labels, moving, scored)
                if after is not None and before is not None:
                    sums.dice_pairs += 1
                    sums.dice += after
                    sums.dice_identity += before
    finally:
        model.train(was_training)
    return sums
