"""The search space of ``svreg tune``: ranges per preset, suggestions, whole-number passes."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from svreg_core.errors import InputError
from svreg_core.optim.parameters import PRESETS, RegistrationParameters
from svreg_core.training.config import TrainingConfig
from svreg_core.tuning.search_space import SearchSpace, build_search_space

# ----------------------------------------------------------------------------------------- search space


def test_search_space_ranges_per_preset() -> None:
    brain = {r.name: r for r in build_search_space("brain-mri").ranges}
    assert (brain["alpha_prime"].low, brain["alpha_prime"].high, brain["alpha_prime"].log) == (0.01, 0.2, True)
    assert (brain["lambda_max"].low, brain["lambda_max"].high) == (0.5, 5.0)
    ct = {r.name: r for r in build_search_space("ct").ranges}
    assert (ct["alpha_prime"].low, ct["alpha_prime"].high) == (0.001, 0.3)
    assert (ct["lambda_max"].low, ct["lambda_max"].high) == (0.1, 4.0)
    cardiac = build_search_space("cardiac-mri")  # its tuned α′ 0.493 lies above the brain range: widened
    assert {r.name: r.high for r in cardiac.ranges}["alpha_prime"] == pytest.approx(0.493)
    assert cardiac.default_values() == {"alpha_prime": 0.493, "lambda_max": PRESETS["cardiac-mri"].lambda_max}
    custom = build_search_space("brain-mri", alpha_prime_range=(0.05, 0.1), lambda_max_range=(1, 2))
    assert [(r.low, r.high) for r in custom.ranges] == [(0.05, 0.1), (1.0, 2.0)]
    with pytest.raises(InputError, match="empty"):
        build_search_space("brain-mri", lambda_max_range=(2, 1))


def test_search_space_suggests_parameters_and_round_trips(tmp_path: Path) -> None:
    preset = tmp_path / "fast.json"
    preset.write_text(json.dumps({"base": "ct", "parameters": {"iterations": [20, 10], "level_spacings": [8, 4]}}))
    space = build_search_space(preset, search=["alpha_prime", "lambda_max", "iterations", "learning_rate"],
                               overrides={"affine": False})
    assert space.base_preset == "ct" and space.base.similarity == "mind" and space.base.affine is False
    names = [r.name for r in space.ranges]
    assert names == ["alpha_prime", "lambda_max", "iterations_0", "iterations_1", "learning_rate"]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial)
        assert isinstance(params, RegistrationParameters)
        assert 0.001 <= params.alpha_prime <= 0.3 and 0.1 <= params.lambda_max <= 4.0
        assert 10 <= params.iterations[0] <= 40 and 5 <= params.iterations[1] <= 20
        assert params.learning_rate == pytest.approx(trial.params["learning_rate"])
        # the trial's values, the base preset's everywhere else
        chosen = {"alpha_prime": trial.params["alpha_prime"], "lambda_max": trial.params["lambda_max"],
                  "iterations": (trial.params["iterations_0"], trial.params["iterations_1"]),
                  "learning_rate": params.learning_rate}
        assert params == space.base.replace(**chosen)
        assert space.parameters(trial.params) == params
        study.tell(trial, 0.0)
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space


def test_search_space_smoothing_passes_are_whole_numbers() -> None:
    space = build_search_space("brain-mri", search=["alpha_prime", "smoothing_passes"])
    passes = {r.name: r for r in space.ranges}["smoothing_passes"]
    assert (passes.low, passes.high, passes.integer) == (1, 4, True)
    assert space.default_values()["smoothing_passes"] == PRESETS["brain-mri"].smoothing_passes == 3
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        params = space.suggest(trial)
        assert isinstance(params.smoothing_passes, int) and params.smoothing_passes == trial.params["smoothing_passes"]
        seen.add(params.smoothing_passes)
        assert space.parameters(trial.params) == params
        study.tell(trial, 0.0)
    assert seen <= {1, 2, 3, 4} and len(seen) > 1
    wide = build_search_space("brain-mri", search=["smoothing_passes"], overrides={"smoothing_passes": 6})
    assert (wide.ranges[0].low, wide.ranges[0].high) == (1, 6)  # widened to contain the base's own value
    with pytest.raises(InputError, match="cannot search smoothing_passes"):
        build_search_space(TrainingConfig(), search=["smoothing_passes"])
