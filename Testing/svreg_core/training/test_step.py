"""The training step and the pairwise optimiser compute the identical SPR loss on the same tensors; the label term."""
from __future__ import annotations

import pytest
import torch

from svreg_core.errors import InputError
from svreg_core.losses.labels import label_dice_loss
from svreg_core.models import build_model
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.training.config import TrainingConfig
from svreg_core.training.step import training_step

TINY = {"encoder_features": [4, 8], "decoder_features": [8, 8, 4], "lambda_features": [4]}


def _pair(shape=(16, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    fixed = torch.rand(1, 1, *shape, generator=g)
    moving = torch.roll(fixed, 1, dims=2) * 0.8 + 0.1 * torch.rand(1, 1, *shape, generator=g)
    return fixed, moving


def _network(uniform: bool = False):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("unet-spr", {**TINY, "uniform": uniform})
    # a velocity of a few voxels, so that every loss term is far from zero
    with torch.no_grad():
        model.velocity_head.weight.mul_(2e4)
    return model


def _optimiser_terms(params: RegistrationParameters, fixed, moving, velocity, weight):
    # the exact call svreg_core.optim.spr.optimize_spr makes each iteration
    terms, _ = params.spr_loss().evaluate(fixed, moving, velocity, weight,
                                          integration_steps=params.integration_steps)
    return terms


def test_training_step_equals_the_pairwise_optimisers_loss() -> None:
    fixed, moving = _pair()
    model = _network()
    config = TrainingConfig(alpha_prime=0.1, lambda_max=2.0, lncc_window=5, integration_steps=7)
    params = RegistrationParameters(alpha_prime=0.1, lambda_max=2.0, lncc_window=5, integration_steps=7)
    step, _ = training_step(model, config.spr_loss(), {"fixed": fixed, "moving": moving}, config.integration_steps)
    velocity, weight = model(fixed, moving)
    reference = _optimiser_terms(params, fixed, moving, velocity, weight)
    for name in ("similarity", "regularization", "prior", "total"):
        assert torch.equal(step[name], reference[name]), name
    assert all(abs(step[n].item()) > 1e-4 for n in ("similarity", "regularization", "prior"))
    # and the gradients reaching the network are the same
    grads = torch.autograd.grad(step["total"], list(model.parameters()))
    model.zero_grad()
    velocity, weight = model(fixed, moving)
    reference = _optimiser_terms(params, fixed, moving, velocity, weight)
    for a, b in zip(grads, torch.autograd.grad(reference["total"], list(model.parameters()))):
        assert torch.equal(a, b)


def test_uniform_training_step_equals_the_optimisers_uniform_loss() -> None:
    fixed, moving = _pair()
    model = _network(uniform=True)
    config = TrainingConfig(spr=False, lambda_max=1.5, integration_steps=5, similarity="mse")
    params = RegistrationParameters(spr=False, lambda_max=1.5, integration_steps=5, similarity="mse")
    step, _ = training_step(model, config.spr_loss(), {"fixed": fixed, "moving": moving}, config.integration_steps)
    velocity, _ = model(fixed, moving)
    reference = _optimiser_terms(params, fixed, moving, velocity, None)  # the optimiser passes no λ without SPR
    for name in ("similarity", "regularization", "prior", "total"):
        assert torch.equal(step[name], reference[name]), name
    assert step["prior"].item() == 0.0 and step["regularization"].item() > 0


def test_label_term_is_added_with_its_weight() -> None:
    """``label_weight`` adds the labels' soft Dice (SynthMorph) to the SPR total; missing labels are refused."""
    fixed, moving = _pair()
    model = _network()
    loss = TrainingConfig().spr_loss()
    labels = (fixed[:, 0] > fixed.mean()).long() + (fixed[:, 0] > fixed.quantile(0.8)).long()
    batch = {"fixed": fixed, "moving": moving, "fixed_labels": labels, "moving_labels": labels.roll(1, 1)}
    plain, _ = training_step(model, loss, batch, 7)
    weighted, fields = training_step(model, loss, batch, 7, label_weight=2.0)
    assert plain["labels"].item() == 0.0
    expected = label_dice_loss(batch["fixed_labels"], batch["moving_labels"], fields.image_displacement)
    assert weighted["labels"].item() == pytest.approx(expected.item()) and 0.05 < expected.item() < 1.0
    assert weighted["total"].item() == pytest.approx(plain["total"].item() + 2.0 * expected.item(), abs=1e-6)
    with pytest.raises(InputError, match="label maps"):
        training_step(model, loss, {"fixed": fixed, "moving": moving}, 7, label_weight=1.0)
