"""The architecture registry: names, rebuilding from a config, errors, parameter counting."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from svreg_core.errors import InputError
from svreg_core.models import ARCHITECTURES, TransMorphTVFSPR, UNetSPR, build_model, count_parameters, registry
from svreg_core.models.base import SPRNetwork


def test_both_networks_are_registered() -> None:
    assert ARCHITECTURES["unet-spr"] is UNetSPR
    assert ARCHITECTURES["transmorph-tvf-spr"] is TransMorphTVFSPR


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as err:
        build_model("voxelmorph")
    message = str(err.value)
    assert "'voxelmorph'" in message and "transmorph-tvf-spr" in message and "unet-spr" in message
    assert "\n" not in message


@pytest.mark.parametrize("architecture, config", [
    ("unet-spr", {"encoder_features": (8, 8), "decoder_features": (8, 8, 4), "lambda_features": ()}),
    ("transmorph-tvf-spr", {"embed_dim": 12, "depths": (1, 1), "num_heads": (2, 3), "window_size": (2, 3, 4),
                            "time_steps": 2, "uniform": True}),
])
def test_config_is_complete_json_and_rebuilds_the_same_network(architecture: str, config: dict) -> None:
    model = build_model(architecture, config)
    assert json.loads(json.dumps(model.config)) == model.config  # JSON-able, tuples stored as lists
    assert set(model.config) >= set(config)  # every default recorded too
    rebuilt = build_model(architecture, json.loads(json.dumps(model.config)))
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("architecture, config, message", [
    ("unet-spr", {"encoder_width": [8]}, "encoder_width"),
    ("unet-spr", {"encoder_features": [0, 8]}, "encoder_features"),
    ("unet-spr", {"encoder_features": [8, 8], "decoder_features": [8, 8]}, "decoder_features"),
    ("unet-spr", {"uniform": "yes"}, "uniform"),
    ("transmorph-tvf-spr", {"time_steps": 0}, "time_steps"),
])
def test_bad_configurations_are_one_line_input_errors(architecture: str, config: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        build_model(architecture, config)
    assert "\n" not in str(err.value)


def test_count_parameters_counts_trainable_scalars() -> None:
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.Linear(4, 5))
    assert count_parameters(model) == (2 * 3 * 27 + 3) + (4 * 5 + 5)
    model[1].requires_grad_(False)
    assert count_parameters(model) == 2 * 3 * 27 + 3


class _Probe(SPRNetwork):
    architecture = "probe-net"

    def __init__(self, *, width: int = 2) -> None:
        super().__init__(width=width)
        self.conv = nn.Conv3d(2, 3, 1)

    @property
    def size_multiple(self) -> int:
        return 1

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, codes: torch.Tensor | None):
        return self.conv(torch.cat((moving, fixed), 1)), None


def test_register_architecture_adds_and_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ARCHITECTURES", dict(ARCHITECTURES))
    registry.register_architecture(_Probe)
    assert isinstance(registry.build_model("probe-net", {"width": 3}), _Probe)

    class Other(_Probe):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register_architecture(Other)
    assert registry.ARCHITECTURES["probe-net"] is _Probe
    assert "probe-net" not in ARCHITECTURES
    # the base class pads to the multiple and crops back; uniform networks give λ ≡ 1
    velocity, weight = _Probe()(torch.zeros(1, 1, 3, 4, 5), torch.zeros(1, 1, 3, 4, 5))
    assert velocity.shape == (1, 3, 3, 4, 5) and torch.equal(weight, torch.ones(1, 1, 3, 4, 5))
