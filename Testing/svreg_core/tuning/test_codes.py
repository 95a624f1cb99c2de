"""``svreg tune VALIDATION --model M``: a code search of a learned model, inference only. A tiny real HyperSPR
U-Net checkpoint (random weights, codes strongly modulating its output; untrained, so it says nothing about
the quality of a search: only that the search is the one asked for), the nilearn validation pairs, real
Optuna on SQLite."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna.trial import TrialState

from svreg_core import load_image, register
from svreg_core.cli import main
from svreg_core.errors import InputError
from svreg_core.metrics import dice
from svreg_core.optim.parameters import load_parameters
from svreg_core.tuning.cli import run_tune
from svreg_core.tuning.codes import CODES, ModelCodeDice, code_search_space
from svreg_core.tuning.objective import trial_function
from svreg_core.tuning.pairs import discover_pairs
from svreg_core.tuning.study import create_or_join, load_study, make_sampler, open_storage, quiet_optuna, run_worker


@pytest.fixture(scope="module")
def models(tiny_checkpoints) -> dict[str, Path]:
    return {"hyper": tiny_checkpoints.hyper, "plain": tiny_checkpoints.plain}


def _mean_dice(pair: Path, model: Path, codes: tuple[float, float]) -> float:
    """pair's mean Dice registered by the public API at ``codes`` (what a trial should have recorded)."""
    images = {r: load_image(pair / f"{r}.nii.gz") for r in ("fixed", "moving", "fixed_labels", "moving_labels")}
    result = register(images["fixed"], images["moving"], load_parameters("brain-mri", affine=False, device="cpu"),
                      model=model, codes=codes)
    scores = dice(images["fixed_labels"].data, result.warp_image(images["moving_labels"], labels=True).data)
    return sum(scores.values()) / len(scores)


def test_code_search_runs_the_model_inside_its_ranges_and_writes_its_best_codes(
        models: dict[str, Path], demo_pairs: Path, tmp_path: Path, helpers: Any, capsys: Any) -> None:
    db, report, best_file = tmp_path / "codes.db", tmp_path / "report", tmp_path / "codes.json"
    argv = [demo_pairs, "--model", models["hyper"], "--storage", db, "--study-name", "c", "--n-trials", 5,
            "--seed", 0, "--startup-trials", 3, "--no-affine", "--device", "cpu", "--no-pruning",
            "--progress", "none", "--report", report, "--apply-best", best_file]
    assert run_tune(helpers.parse_args(*argv)) == 0
    study = helpers.load(db, "c")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert trials[0].params == {"alpha_prime": 0.175, "lambda_max": 1.0}  # the model's own codes first
    for t in trials:  # never outside the trained ranges; the value is the mean of the pairs' Dice
        assert 0.05 <= t.params["alpha_prime"] <= 0.5 and 0.5 <= t.params["lambda_max"] <= 10.0
        assert len(t.user_attrs["step_values"]) == 2 and "folding_percent" in t.user_attrs
        assert t.value == pytest.approx(np.mean(t.user_attrs["step_values"]))
    assert len({round(t.value, 6) for t in trials}) > 1  # the codes changed the prediction
    top = max(trials, key=lambda t: t.value)
    assert study.best_trial.number == top.number
    codes = (top.params["alpha_prime"], top.params["lambda_max"])
    assert top.user_attrs["step_values"][0] == pytest.approx(_mean_dice(demo_pairs / "pair01", models["hyper"], codes))

    summary = json.loads((report / "summary.json").read_text())
    assert (summary["objective"], summary["model"], summary["refine"]) == ("model-code-dice",
                                                                           str(models["hyper"].resolve()), 0)
    assert summary["best"]["number"] == top.number
    assert [(r["name"], r["low"], r["high"]) for r in summary["searched"]] == [("alpha_prime", 0.05, 0.5),
                                                                               ("lambda_max", 0.5, 10.0)]
    assert summary["study_settings"]["similarity"] == "lncc" and summary["study_settings"]["affine"] is False
    assert "Code search of model" in (report / "summary.md").read_text()

    doc = json.loads(best_file.read_text())
    assert (doc["model"], doc["alpha_prime"], doc["lambda_max"], doc["refine"]) == (str(models["hyper"].resolve()),
                                                                                    *codes, 0)
    assert doc["tuning"]["trial"] == top.number and doc["tuning"]["mean_dice"] == pytest.approx(top.value)
    assert f"register with it: {doc['command']}" in capsys.readouterr().out
    # the command registers with those codes as it stands (inputs and output folder filled in)
    out, pair = tmp_path / "registered", demo_pairs / "pair01"
    words = [{"FIXED": str(pair / "fixed.nii.gz"), "MOVING": str(pair / "moving.nii.gz"), "OUT": str(out)}.get(w, w)
             for w in shlex.split(doc["command"])]
    assert words[:2] == ["svreg", "register"]
    assert main([*words[1:], "--no-affine", "--device", "cpu", "--progress", "none", "--outputs", "warped"]) == 0
    registered = json.loads((out / "report.json").read_text())["codes"]
    assert registered == {"alpha_prime": pytest.approx(codes[0], rel=1e-5),
                          "lambda_max": pytest.approx(codes[1], rel=1e-5), "conditioned": True}


def test_code_search_on_landmarks_minimises_the_models_landmark_error(models: dict[str, Path], demo_pairs: Path,
                                                                       tmp_path: Path, helpers: Any) -> None:
    """``--objective tre`` with ``--model``: each trial's value is the mean landmark error of the model's
    registrations at its codes (as the public API computes it), minimised; the codes file records it."""
    from optuna.study import StudyDirection

    from svreg_core.apply import read_landmarks
    from svreg_core.metrics.landmarks import tre

    db, best_file = tmp_path / "tre.db", tmp_path / "codes.json"
    argv = [demo_pairs, "--model", models["hyper"], "--objective", "tre", "--storage", db, "--study-name", "t",
            "--n-trials", 3, "--seed", 0, "--no-affine", "--device", "cpu", "--no-pruning", "--progress", "none",
            "--apply-best", best_file]
    assert run_tune(helpers.parse_args(*argv)) == 0
    study = helpers.load(db, "t")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert study.direction == StudyDirection.MINIMIZE and len(complete) == 3
    assert complete[0].params == {"alpha_prime": 0.175, "lambda_max": 1.0}  # the model's own codes first
    assert len({round(t.value, 6) for t in complete}) > 1  # the codes changed the prediction
    top = study.best_trial
    assert top.value == min(t.value for t in complete)
    pair = demo_pairs / "pair01"
    fixed, moving = (load_image(pair / f"{role}.nii.gz") for role in ("fixed", "moving"))
    result = register(fixed, moving, load_parameters("brain-mri", affine=False, device="cpu"), model=models["hyper"],
                      codes=(top.params["alpha_prime"], top.params["lambda_max"]))
    fixed_points, moving_points = read_landmarks(pair / "fixed_landmarks.csv", pair / "moving_landmarks.csv")
    errors = tre(fixed_points, moving_points, result.transform_points)
    assert top.user_attrs["step_values"][0] == pytest.approx(float(errors.mean()), rel=1e-5)
    doc = json.loads(best_file.read_text())
    assert doc["tuning"]["mean_tre_mm"] == pytest.approx(top.value) and "mean_dice" not in doc["tuning"]


def test_the_model_is_read_once_per_worker(models: dict[str, Path], demo_pairs: Path, tmp_path: Path) -> None:
    """Two trials of two pairs run after the checkpoint is deleted: the objective read it once, when made."""
    checkpoint = Path(shutil.copytree(models["hyper"], tmp_path / "copy"))
    space = code_search_space(checkpoint, 0, "brain-mri", overrides={"affine": False, "device": "cpu"}, search=CODES,
                              alpha_prime_range=(0.1, 0.2), lambda_max_range=None)
    objective = ModelCodeDice(discover_pairs(demo_pairs), checkpoint, device="cpu")
    shutil.rmtree(checkpoint)
    storage = open_storage(tmp_path / "s.db")
    study, created = create_or_join(storage, "s", {"objective": objective.name}, default_params=None)
    study = load_study(storage, "s", sampler=make_sampler(0, created))
    with quiet_optuna():
        assert run_worker(study, trial_function(space, objective), 2)[0] == "done"
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert all(0.1 <= t.params["alpha_prime"] <= 0.2 and 0.5 <= t.params["lambda_max"] <= 10 for t in study.trials)


@pytest.mark.parametrize("which, argv, message", [
    ("hyper", ("--alpha-prime-range", 0.01, 0.3), "the alpha_prime range 0.01-0.3 reaches outside the range model "
                                                   r"hyper-test was trained on \[0.05, 0.5\]; search inside it"),
    ("hyper", ("--lambda-max-range", 1, 20), r"lambda_max range 1-20 reaches outside .* \[0.5, 10\]"),
    ("hyper", ("--search", "alpha_prime", "iterations"), "searches alpha_prime and lambda_max only"),
    ("plain", (), "model plain-test is not a hyper model: its prediction does not change with alpha_prime"),
    (None, ("--refine", 3), "it needs --model"),
    # the refinement runs --refine N iterations per level: --iterations was ignored, yet listed in the report
    ("hyper", ("--refine", 3, "--iterations", 5), "--iterations does not apply with --model: --refine N sets"),
    ("hyper", ("--level-spacings", 6), "--level-spacings only applies to a refinement"),
])
def test_what_a_code_search_cannot_do_is_refused_before_any_trial(models: dict[str, Path], demo_pairs: Path,
                                                                  tmp_path: Path, helpers: Any, which: str | None,
                                                                  argv: tuple, message: str) -> None:
    db = tmp_path / "s.db"
    model = ("--model", models[which]) if which else ()
    with pytest.raises(InputError, match=message) as err:
        run_tune(helpers.parse_args(demo_pairs, *model, *argv, "--storage", db, "--progress", "none"))
    assert "\n" not in str(err.value) and not db.exists()


def test_without_validation_pairs_there_is_nothing_to_score(models: dict[str, Path], tmp_path: Path,
                                                            helpers: Any) -> None:
    with pytest.raises(InputError, match="needs validation pairs to score the codes on"):
        run_tune(helpers.parse_args("--model", models["hyper"], "--synthetic", tmp_path,
                                    "--storage", tmp_path / "s.db"))
    assert not (tmp_path / "s.db").exists()


def test_a_plain_models_code_search_tunes_its_refinement(models: dict[str, Path], one_pair_list: Path,
                                                         tmp_path: Path, helpers: Any) -> None:
    """With --refine the codes set the refinement's loss: the preset's ranges, the command carries --refine."""
    best_file = tmp_path / "codes.json"
    argv = [one_pair_list, "--model", models["plain"], "--refine", 2, "--level-spacings", 6,
            "--storage", tmp_path / "p.db", "--n-trials", 2, "--seed", 0, "--no-affine", "--device", "cpu",
            "--progress", "none", "--apply-best", best_file]
    assert run_tune(helpers.parse_args(*argv)) == 0
    trials = helpers.load(tmp_path / "p.db", "svreg-tune").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(0.01 <= t.params["alpha_prime"] <= 0.2 and 0.5 <= t.params["lambda_max"] <= 5 for t in trials)
    assert trials[0].params == {"alpha_prime": 0.0303, "lambda_max": 2.93} and trials[0].value != trials[1].value
    doc = json.loads(best_file.read_text())
    assert doc["refine"] == 2 and " --refine 2 " in doc["command"]
    # the study's settings say what the trials ran: 2 refinement iterations on the 6 mm level
    study = doc["tuning"]["study_settings"]
    assert (study["level_spacings"], study["iterations"]) == ([6.0], [2]), study


def test_the_register_command_of_a_code_search_keeps_its_preset(models: dict[str, Path], demo_pairs: Path,
                                                                one_pair_list: Path, tmp_path: Path,
                                                                helpers: Any) -> None:
    """A refinement's codes searched over the ct preset (its 4 mm control grid) were printed as a command without
    ``--preset``: it refined on brain-mri's 2 mm grid, where the codes regularise differently."""
    best_file, out, pair = tmp_path / "codes.json", tmp_path / "registered", demo_pairs / "pair01"
    argv = [one_pair_list, "--model", models["plain"], "--refine", 1, "--preset", "ct", "--level-spacings", 6,
            "--storage", tmp_path / "p.db", "--n-trials", 1, "--no-affine", "--device", "cpu",
            "--progress", "none", "--apply-best", best_file]
    assert run_tune(helpers.parse_args(*argv)) == 0
    doc = json.loads(best_file.read_text())
    assert doc["tuning"]["study_settings"]["min_control_spacing"] == 4.0  # the grid the trials refined on
    words = [{"FIXED": str(pair / "fixed.nii.gz"), "MOVING": str(pair / "moving.nii.gz"), "OUT": str(out)}.get(w, w)
             for w in shlex.split(doc["command"])]
    assert main([*words[1:], "--level-spacings", "6", "--no-affine", "--device", "cpu", "--progress", "none",
                 "--outputs", "warped"]) == 0
    assert json.loads((out / "report.json").read_text())["parameters"]["min_control_spacing"] == 4.0
