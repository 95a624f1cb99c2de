"""One batch through a network and THE SPR loss: the training step's forward pass, also used by validation.

The network predicts ``(v, λ)`` on the network grid; :meth:`svreg_core.losses.spr.SPRLoss.evaluate`
(the object the pairwise optimiser evaluates) integrates ``u = exp(v)`` and gives the SPR terms; with
``label_weight > 0`` the label soft Dice of SynthMorph (:func:`svreg_core.losses.labels.label_dice_loss`)
is added to the total. A hyper network gets the batch's codes ``(α′, λ_max)`` and the SPR loss of the
step is evaluated at the same codes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from svreg_core.errors import InputError
from svreg_core.losses.labels import label_dice_loss
from svreg_core.losses.spr import SPRLoss
from svreg_core.transforms.field import WarpedFields

#: Loss terms of a step (``"total"`` is the sum of the others, ``labels`` weighted by ``label_weight``).
TERMS = ("total", "similarity", "regularization", "prior", "labels")


def training_step(model: nn.Module, loss: SPRLoss, batch: dict[str, Any], integration_steps: int,
                  label_weight: float = 0.0, codes: tuple[float, float] | None = None,
                  ) -> tuple[dict[str, torch.Tensor], WarpedFields]:
    """Forward pass and loss of one batch: ``model(fixed, moving[, codes]) → (v, λ) → loss.evaluate`` (+ labels).

    Args:
        model: an SPR network (or its DDP wrapper) returning ``(velocity, weight)`` on the input grid.
        loss: the SPR loss (:meth:`TrainingConfig.spr_loss`); with ``codes`` its ``alpha_prime`` and
            ``lambda_max`` are replaced by them.
        batch: ``{"fixed", "moving"}`` ``(N, 1, I, J, K)`` on the network grid (moved to the model's
            device), with ``{"fixed_labels", "moving_labels"}`` ``(N, I, J, K)`` when ``label_weight > 0``.
        integration_steps: scaling-and-squaring steps.
        label_weight: weight of :func:`~svreg_core.losses.labels.label_dice_loss` in ``total``.
        codes: ``(α′, λ_max)`` of every pair of the batch, for a hyper network (which needs them);
            ``None`` for a plain network (which refuses them).

    Returns:
        The terms :data:`TERMS` (0-d tensors with graph; ``labels`` is 0 when ``label_weight`` is 0)
        and the fields the velocity produced.

    Raises:
        InputError: ``label_weight > 0`` and the batch has no label maps.
    """
    device = next(model.parameters()).device
    fixed = batch["fixed"].to(device, non_blocking=True)
    moving = batch["moving"].to(device, non_blocking=True)
    if codes is None:
        velocity, weight = model(fixed, moving)
    else:
        loss = dataclasses.replace(loss, alpha_prime=float(codes[0]), lambda_max=float(codes[1]))
        code_rows = torch.tensor([codes], dtype=fixed.dtype, device=device).expand(fixed.shape[0], 2)
        velocity, weight = model(fixed, moving, code_rows)
    terms, fields = loss.evaluate(fixed, moving, velocity, weight, integration_steps=integration_steps)
    terms["labels"] = torch.zeros((), device=device)
    if label_weight > 0:
        if "fixed_labels" not in batch or "moving_labels" not in batch:
            raise InputError("label_weight > 0 needs label maps with every training and validation pair "
                             f"(pair {batch.get('name', '?')} has none); set label_weight: 0 or give labels.")
        terms["labels"] = label_dice_loss(batch["fixed_labels"].to(device), batch["moving_labels"].to(device),
                                          fields.image_displacement)
        terms["total"] = terms["total"] + label_weight * terms["labels"]
    return terms, fields
