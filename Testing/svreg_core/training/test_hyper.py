"""HyperSPR training: code ranges in the configuration, the step's codes, a resumable hyper run, and a
tiny trained hyper network whose smoothness follows λ_max."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from svreg_core.errors import InputError
from svreg_core.losses.spr import SPRLoss, gradient_energy
from svreg_core.models import CodeRanges, build_model, load_checkpoint
from svreg_core.progress import ProgressEvent
from svreg_core.training.cli import add_train_arguments, resolve_config
from svreg_core.training.config import TrainingConfig
from svreg_core.training.step import training_step
from svreg_core.training.trainer import train
from svreg_core.transforms import integrate_velocity

TINY = {"encoder_features": [4, 8], "decoder_features": [8, 8, 4], "lambda_features": [4]}
HYPER = {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 10.0]}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_configuration_validates_the_ranges_and_the_validation_codes() -> None:
    config = TrainingConfig(hyper={"alpha_prime": (0.05, 0.5), "lambda_max": [1, 10]})
    assert config.hyper == {"alpha_prime": [0.05, 0.5], "lambda_max": [1.0, 10.0]}
    assert config.code_ranges == CodeRanges((0.05, 0.5), (1.0, 10.0))
    assert TrainingConfig.from_dict(config.to_dict()) == config and TrainingConfig().code_ranges is None
    for values, message in (({"hyper": {"alpha_prime": [0.5, 0.05], "lambda_max": [1, 10]}},
                              "hyper alpha_prime range must be two numbers"),
                            ({"hyper": HYPER, "lambda_max": 20.0}, "must lie in the hyper ranges"),
                            ({"model": {"hyper": HYPER}}, "top-level 'hyper' setting")):
        with pytest.raises(InputError, match=message) as err:
            TrainingConfig(**values)
        assert "\n" not in str(err.value)


def test_training_flags_set_the_ranges_and_hold_a_code_without_a_range_fixed() -> None:
    config = resolve_config(_args("-o", "run", "--lambda-max", "2", "--hyper-lambda-max", "0.5", "10"))
    assert config.hyper == {"alpha_prime": [0.175, 0.175], "lambda_max": [0.5, 10.0]}
    config = resolve_config(_args("-o", "run", "--hyper-alpha-prime", "0.1", "0.3", "--hyper-lambda-max", "1", "5"))
    assert config.hyper == {"alpha_prime": [0.1, 0.3], "lambda_max": [1.0, 5.0]}
    # the default λ_max 3.35 is outside: the line says which settings move it
    with pytest.raises(InputError, match=r"must lie in the hyper ranges \(.*\); set them inside \(alpha_prime, "
                                         r"lambda_max; --alpha-prime, --lambda-max\)\.$"):
        resolve_config(_args("-o", "run", "--hyper-lambda-max", "5", "10"))


def test_the_step_conditions_the_network_and_the_loss_on_the_same_codes() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("unet-spr", {**TINY, "hyper": HYPER})
        plain = build_model("unet-spr", TINY)
    gen = torch.Generator().manual_seed(3)
    fixed, moving = torch.rand(2, 1, 1, 16, 16, 16, generator=gen)
    with torch.no_grad():
        model.velocity_head.weight.normal_(0.0, 0.05, generator=gen)  # a visible deformation
    loss = SPRLoss(alpha_prime=0.175, lambda_max=3.35)
    terms, _ = training_step(model, loss, {"fixed": fixed, "moving": moving}, 5, codes=(0.3, 8.0))
    velocity, weight = model(fixed, moving, torch.tensor([[0.3, 8.0]]))
    expected, _ = SPRLoss(alpha_prime=0.3, lambda_max=8.0).evaluate(fixed, moving, velocity, weight,
                                                                    integration_steps=5)
    for name in ("similarity", "regularization", "prior", "total"):
        torch.testing.assert_close(terms[name], expected[name])
    other, _ = training_step(model, loss, {"fixed": fixed, "moving": moving}, 5, codes=(0.05, 0.5))
    assert other["regularization"] < terms["regularization"] and other["prior"] < terms["prior"]
    with pytest.raises(ValueError, match="needs the regularisation codes"):
        training_step(model, loss, {"fixed": fixed, "moving": moving}, 5)
    with pytest.raises(ValueError, match="not a hyper network"):
        training_step(plain, loss, {"fixed": fixed, "moving": moving}, 5, codes=(0.3, 8.0))


@pytest.fixture()
def hyper_config(geo, make_labels, tmp_path) -> TrainingConfig:
    folder = tmp_path / "labels"
    folder.mkdir()
    affine = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0])).numpy()
    for seed in (0, 1):
        geo.save_nifti(make_labels((16, 16, 16), seed), affine, folder / f"s{seed}_seg.nii.gz")
    return TrainingConfig(model=TINY, grid_shape=(16, 16, 16), network_spacing_mm=4.0, learning_rate=2e-3,
                          hyper=HYPER, epochs=2, steps_per_epoch=3, num_workers=0, seed=5, validation={"pairs": 1},
                          data={"sources": [{"kind": "synthetic", "path": str(folder), "length": 6}]})


def _interrupt_after_first_epoch(event: ProgressEvent) -> None:
    if event.stage == "epoch" and event.step == 1:
        raise KeyboardInterrupt


def test_a_tiny_hyper_run_trains_records_its_ranges_and_resumes_identically(hyper_config, tmp_path) -> None:
    straight = train(hyper_config, tmp_path / "straight")
    assert straight.epochs == 2 and straight.steps == 6
    with pytest.raises(KeyboardInterrupt):
        train(hyper_config, tmp_path / "resumed", progress=_interrupt_after_first_epoch)
    resumed = train(hyper_config, tmp_path / "resumed")
    assert resumed.resumed_from == 1 and resumed.epochs == 2
    for name in ("last/model.safetensors", "state/model.safetensors", "state/optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [list(csv.DictReader((tmp_path / run / "metrics.csv").open())) for run in ("straight", "resumed")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows[1]]
    assert all(row["val_total"] for row in rows[0])  # validated (at the configuration's own codes)
    meta = json.loads((tmp_path / "straight" / "last" / "model.json").read_text())
    assert meta["config"]["hyper"] == HYPER and (meta["alpha_prime"], meta["lambda_max"]) == (0.175, 3.35)
    model, info = load_checkpoint(tmp_path / "straight" / "best")
    assert info.code_ranges == model.code_ranges == CodeRanges.from_value(HYPER)
    assert any(name.startswith("film.") for name in load_file(str(tmp_path / "straight" / "last" /
                                                                   "model.safetensors")))


def test_a_trained_hyper_network_gives_smoother_fields_at_larger_lambda_max() -> None:
    """Trained for 100 steps on one pair (a sphere of radius 3.5 voxels to one of 6) with λ_max drawn from
    [1, 1000] (α′ fixed), the network predicts fields whose gradient energy falls as λ_max rises.

    Measured with seeds 0-5 (1 thread): the energy at λ_max = 1 is 5-12× that at 1000, monotone at
    every seed. About 3-7 s on one CPU thread.
    """
    ranges = {"alpha_prime": [0.175, 0.175], "lambda_max": [1.0, 1000.0]}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("unet-spr", {"encoder_features": [8, 8], "decoder_features": [8, 8, 8],
                                         "lambda_features": [4], "hyper": ranges})
    ijk = torch.stack(torch.meshgrid(*[torch.arange(16, dtype=torch.float32)] * 3, indexing="ij")) - 7.5
    radius = ijk.square().sum(0).sqrt()
    batch = {"fixed": torch.sigmoid(3.0 * (6.0 - radius))[None, None],
             "moving": torch.sigmoid(3.0 * (3.5 - radius))[None, None]}
    code_ranges = CodeRanges.from_value(ranges)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss = SPRLoss()
    for _ in range(100):
        optimizer.zero_grad()
        terms, _ = training_step(model, loss, batch, 5, codes=code_ranges.sample(gen))
        terms["total"].backward()
        optimizer.step()
    model.eval()
    energies = []
    with torch.no_grad():
        for lambda_max in (1.0, 31.6, 1000.0):
            velocity, _ = model(batch["fixed"], batch["moving"], torch.tensor([[0.175, lambda_max]]))
            energies.append(gradient_energy(integrate_velocity(velocity, 5)).mean().item())
    assert energies[0] > energies[1] > energies[2] and energies[0] > 2.0 * energies[2], energies
