"""HyperSPR conditioning: code ranges, FiLM, hyper networks' dependence on the codes, hyper checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from svreg_core.errors import InputError
from svreg_core.models import (
    CodeRanges,
    ModelInfo,
    build_model,
    count_parameters,
    load_checkpoint,
    model_summary,
    save_checkpoint,
)
from svreg_core.models.zoo import DEFAULT_MODEL, SHIPPED_DIR, describe, shipped_models

ARCHITECTURES = ("unet-spr", "transmorph-tvf-spr")


def _config(nets, architecture: str, hyper: dict | None = None) -> dict:
    base = nets.SMALL_UNET if architecture == "unet-spr" else nets.TINY_TRANSMORPH
    return {**base, **({} if hyper is None else {"hyper": hyper})}


def _shape(architecture: str) -> tuple[int, int, int]:
    return (16, 16, 16) if architecture == "unet-spr" else (32, 32, 32)


@pytest.mark.parametrize("value, message", [
    ([0.1, 0.2], "must be a mapping"),
    ({"alpha_prime": [0.1, 0.2]}, "must be a mapping"),
    ({"alpha_prime": [0.1, 0.2], "lambda_max": [1, 2], "w": [1, 2]}, "must be a mapping"),
    ({"alpha_prime": [0.2, 0.1], "lambda_max": [1, 2]}, "alpha_prime range must be two numbers"),
    ({"alpha_prime": [0.0, 0.1], "lambda_max": [1, 2]}, "0 < low <= high"),
    ({"alpha_prime": [0.1, 0.2], "lambda_max": [1, float("inf")]}, "lambda_max range"),
    ({"alpha_prime": [0.1, 0.2], "lambda_max": [1, 2, 3]}, "lambda_max range"),
    ({"alpha_prime": [0.1, 0.2], "lambda_max": "1-2"}, "lambda_max range"),
    ({"alpha_prime": [True, 0.2], "lambda_max": [1, 2]}, "alpha_prime range"),
])
def test_malformed_code_ranges_are_refused_with_one_line(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodeRanges.from_value(value)
    with pytest.raises(InputError, match=message) as err:
        build_model("unet-spr", {"hyper": value})
    assert "\n" not in str(err.value)


def test_normalisation_maps_each_range_onto_0_1_on_a_log_scale(nets) -> None:
    ranges = CodeRanges.from_value(nets.HYPER)
    codes = torch.tensor([[0.05, 0.5], [0.5, 10.0], [math.sqrt(0.05 * 0.5), math.sqrt(5.0)]])
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    torch.testing.assert_close(ranges.normalise(codes), expected)
    fixed = CodeRanges.from_value({"alpha_prime": [0.175, 0.175], "lambda_max": [1.0, 4.0]})  # α′ held fixed
    torch.testing.assert_close(fixed.normalise(torch.tensor([[0.175, 2.0]])), torch.tensor([[0.0, 0.5]]))


def test_sampling_is_log_uniform_inside_the_ranges_and_leaves_the_global_rng_alone(nets) -> None:
    ranges = CodeRanges.from_value(nets.HYPER)
    state = torch.get_rng_state()
    draws = torch.tensor([ranges.sample(torch.Generator().manual_seed(0)) for _ in range(2)])
    assert torch.equal(draws[0], draws[1])  # the generator alone decides
    gen = torch.Generator().manual_seed(1)
    draws = torch.tensor([ranges.sample(gen) for _ in range(4000)], dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(ranges.contains(a, lam) for a, lam in draws.tolist())
    unit = ranges.normalise(draws)  # log-uniform draws are uniform after normalisation
    assert unit.mean(0).sub(0.5).abs().max() < 0.02
    assert unit.std(0).sub(1 / math.sqrt(12)).abs().max() < 0.02


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_codes_change_the_outputs_of_a_hyper_network(nets, architecture: str) -> None:
    model = nets.build(architecture, _config(nets, architecture, nets.HYPER)).eval()
    fixed, moving = nets.pair(_shape(architecture), batch=2)
    low, high = torch.tensor([[0.05, 0.5]]), torch.tensor([[0.5, 10.0]])
    with torch.no_grad():
        v_low, w_low = model(fixed, moving, low)
        v_high, w_high = model(fixed, moving, high)
        v_again, w_again = model(fixed, moving, low)
        v_mixed, w_mixed = model(fixed, moving, torch.cat((low, high)))  # one code per pair
    assert torch.equal(v_low, v_again) and torch.equal(w_low, w_again)
    assert (v_low - v_high).abs().max() > 1e-3 * v_low.abs().max()
    assert (w_low - w_high).abs().max() > 1e-7
    torch.testing.assert_close(v_mixed[:1], v_low[:1], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(v_mixed[1:], v_high[1:], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(w_mixed[1:], w_high[1:], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_hyper_network_with_zero_modulation_is_the_plain_network(nets, architecture: str) -> None:
    """Same seed, same weights: FiLM is built last, and scale 1, shift 0 leave the features as they are."""
    plain = nets.build(architecture, _config(nets, architecture)).eval()
    hyper = nets.build(architecture, _config(nets, architecture, nets.HYPER)).eval()
    assert "hyper" not in plain.config and plain.code_ranges is None and plain.film is None
    assert not [name for name in plain.state_dict() if "film" in name]
    extra = sorted(set(hyper.state_dict()) - set(plain.state_dict()))
    assert extra and all(name.startswith("film.") for name in extra)
    with torch.no_grad():
        hyper.film.mlp[-1].weight.zero_()
        fixed, moving = nets.pair(_shape(architecture))
        expected = plain(fixed, moving)
        found = hyper(fixed, moving, torch.tensor([[0.1, 3.0]]))
    assert torch.equal(found[0], expected[0]) and torch.equal(found[1], expected[1])


def test_film_of_the_default_unet_has_a_few_thousand_parameters(nets) -> None:
    """2→16→16→2·160 (the six decoder convolutions' 160 channels): 48 + 272 + 5,440 = 5,760 parameters."""
    plain, hyper = build_model("unet-spr"), build_model("unet-spr", {"hyper": nets.HYPER})
    assert count_parameters(hyper) - count_parameters(plain) == count_parameters(hyper.film) == 5760


def test_codes_are_required_by_hyper_networks_and_refused_by_plain_ones(nets) -> None:
    hyper = nets.build("unet-spr", _config(nets, "unet-spr", nets.HYPER))
    plain = nets.build("unet-spr", _config(nets, "unet-spr"))
    fixed, moving = nets.pair((16, 16, 16), batch=2)
    with pytest.raises(ValueError, match="needs the regularisation codes"):
        hyper(fixed, moving)
    with pytest.raises(ValueError, match="not a hyper network"):
        plain(fixed, moving, torch.tensor([[0.1, 1.0]]))
    for bad in (torch.tensor([0.1, 1.0]), torch.ones(3, 2), torch.ones(2, 3)):
        with pytest.raises(ValueError, match=r"\(N, 2\) tensor"):
            hyper(fixed, moving, bad)
    for bad in (torch.tensor([[0.1, -1.0]]), torch.tensor([[float("nan"), 1.0]])):
        with pytest.raises(ValueError, match="finite and positive"):
            hyper(fixed, moving, bad)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_film_parameter_gets_a_gradient(nets, architecture: str) -> None:
    """(At 32³ TransMorph's last stage holds one token, whose attention bias gets none: not FiLM's business.)"""
    model = nets.build(architecture, _config(nets, architecture, nets.HYPER))
    fixed, moving = nets.pair(_shape(architecture))
    missing = nets.parameters_without_gradient(model, fixed, moving, torch.tensor([[0.2, 2.0]]))
    assert [name for name in missing if name.startswith("film.")] == []
    assert architecture != "unet-spr" or missing == []


def _info(model, **changes) -> ModelInfo:
    values = dict(architecture=model.architecture, config=model.config, network_spacing_mm=2.0,
                  size_multiple=model.size_multiple, normalization="robust_normalize", similarity="lncc",
                  lncc_window=5, prior="beta", alpha_prime=0.175, lambda_max=3.35, spr=True, integration_steps=7,
                  svreg_version="test", training={"data": "none"}, name="hyper-test")
    values.update(changes)
    return ModelInfo(**values)


def _rewrite(folder: Path, edit) -> None:
    meta = json.loads((folder / "model.json").read_text())
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta))


def test_hyper_checkpoint_round_trip_keeps_the_ranges_and_the_predictions(nets, tmp_path: Path) -> None:
    model = nets.build("unet-spr", _config(nets, "unet-spr", nets.HYPER)).eval()
    folder = save_checkpoint(tmp_path / "hyper", model, _info(model))
    assert json.loads((folder / "model.json").read_text())["config"]["hyper"] == nets.HYPER
    loaded, info = load_checkpoint(folder)
    assert info.code_ranges == CodeRanges.from_value(nets.HYPER) == loaded.code_ranges
    fixed, moving = nets.pair((16, 16, 16))
    codes = torch.tensor([[0.3, 7.0]])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(fixed, moving, codes), loaded(fixed, moving, codes)))
    assert "hyper: alpha_prime in [0.05, 0.5], lambda_max in [0.5, 10]" in model_summary(info)
    line = describe("hyper-test", json.loads((folder / "model.json").read_text()))
    assert "hyper alpha_prime=[0.05, 0.5]  hyper lambda_max=[0.5, 10.0]" in line and "\n" not in line


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"].update(hyper={"alpha_prime": [0.5, 0.05], "lambda_max": [0.5, 10.0]}),
     "malformed code ranges: hyper alpha_prime range must be two numbers"),
    (lambda m: m["config"].update(hyper={"lambda_max": [0.5, 10.0]}), "malformed code ranges: hyper must be a mapping"),
    (lambda m: m.update(lambda_max=20.0), "default codes alpha_prime 0.175, lambda_max 20 lie outside the trained"),
])
def test_malformed_ranges_in_a_checkpoint_are_refused_with_one_line(nets, tmp_path: Path, edit, message) -> None:
    model = nets.build("unet-spr", _config(nets, "unet-spr", nets.HYPER))
    folder = save_checkpoint(tmp_path / "hyper", model, _info(model))
    _rewrite(folder, edit)
    with pytest.raises(InputError, match=message) as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_the_shipped_model_still_loads_as_a_plain_network() -> None:
    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no shipped model in this checkout")
    model, info = load_checkpoint(SHIPPED_DIR / DEFAULT_MODEL)
    assert info.code_ranges is None and model.code_ranges is None and "hyper" not in model.config
