"""``svreg tune`` with the training objective: every trial trains a tiny real network (16³ voxels of 4 mm,
2 epochs of 2 steps, SynthMorph-style pairs from two sphere label maps written here), real Optuna, real SQLite."""
from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from svreg_core.errors import InputError
from svreg_core.training.config import DataSource, TrainingConfig, load_config, save_config
from svreg_core.tuning.cli import run_tune
from svreg_core.tuning.objective import trial_function
from svreg_core.tuning.search_space import build_search_space
from svreg_core.tuning.study import create_or_join, load_study, make_sampler, open_storage, quiet_optuna, run_worker
from svreg_core.tuning.training import TrainingDice


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, geo: Any) -> dict[str, Path]:
    """Two label maps (nested spheres, labels 2 and 3) and a configuration of 5 epochs of 2 steps."""
    root = tmp_path_factory.mktemp("tiny-training")
    labels = root / "labels"
    labels.mkdir()
    for i, radius in enumerate((6.0, 5.0)):
        ijk = np.indices((16, 16, 16)).transpose(1, 2, 3, 0) - 7.5
        seg = np.where((ijk ** 2).sum(-1) < radius ** 2, 2, 0).astype(np.int16)
        seg[(ijk ** 2).sum(-1) < (radius / 2) ** 2] = 3
        geo.save_nifti(seg, np.diag([4.0, 4.0, 4.0, 1.0]), labels / f"s{i}_seg.nii.gz")
    config = TrainingConfig(model={"encoder_features": [4], "decoder_features": [4, 4], "lambda_features": []},
                            network_spacing_mm=4.0, grid_shape=(16, 16, 16), epochs=5, steps_per_epoch=2,
                            num_workers=0, device="cpu", validation={"pairs": 1})
    return {"root": root, "labels": labels, "config": save_config(config, root / "train.yaml")}


def _val_dice(run_dir: Path) -> list[float]:
    """The validation Dice of every finished epoch, as the trainer wrote it (metrics.csv)."""
    with (run_dir / "metrics.csv").open() as f:
        return [float(row["val_dice"]) for row in csv.DictReader(f)]


def test_an_epoch_below_the_median_prunes_the_training(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A real training trial after a finished trial that scored Dice 1 (0) at every epoch: pruned after its
    first epoch (runs to the end); the values Optuna got are the trainer's own."""
    config = load_config(tiny["config"]).replace(data={"sources": [DataSource("synthetic", str(tiny["labels"]))]})
    space = build_search_space(config)
    for other, expected in ((1.0, TrialState.PRUNED), (0.0, TrialState.COMPLETE)):
        storage = open_storage(tmp_path / f"{other}.db")
        study, created = create_or_join(storage, "s", {"objective": "training-dice"}, default_params=None)
        study = load_study(storage, "s", sampler=make_sampler(0, created),
                           pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
        dists = {r.name: optuna.distributions.FloatDistribution(r.low, r.high, log=r.log) for r in space.ranges}
        study.add_trial(optuna.trial.create_trial(params=space.default_values(), distributions=dists, value=other,
                                                  intermediate_values={0: other, 1: other}))
        objective = TrainingDice(tmp_path / f"runs{other}", epochs=2)
        with quiet_optuna():
            assert run_worker(study, trial_function(space, objective), 2)[0] == "done"
        trial = study.get_trials()[1]
        run_dir = Path(trial.user_attrs["run_dir"])
        assert trial.state == expected and run_dir == tmp_path / f"runs{other}" / "trial-0001"
        dice = _val_dice(run_dir)
        assert trial.intermediate_values == dict(enumerate(dice))  # one report per epoch: the trainer's Dice
        assert load_config(run_dir / "config.yaml").alpha_prime == pytest.approx(trial.params["alpha_prime"])
        if expected == TrialState.PRUNED:
            assert len(dice) == 1 and trial.user_attrs["pruned_reason"] == "below the median of other trials " \
                                                                           "after epoch 1"
        else:
            assert len(dice) == 2 and trial.value == pytest.approx(max(dice))  # the best epoch


def test_training_study_resumes_after_a_kill_and_reports(tiny: dict[str, Path], tmp_path: Path,
                                                         helpers: Any) -> None:
    """3 trials of 3 epochs with pruning on (from epoch 2): killed in the second epoch of its second trial,
    the same command finishes the study (the killed trial failed and retried in a fresh run folder, its
    own left as it was); report and best configuration written."""
    db = tmp_path / "train.db"
    argv = ["--train-config", tiny["config"], "--synthetic", tiny["labels"], "--epochs-per-trial", 3,
            "--storage", db, "--study-name", "t", "--n-trials", 3, "--seed", 0, "--progress", "json",
            "--pruner-startup-trials", 1, "--pruner-warmup-steps", 1]
    proc = helpers.start_cli(*argv, cwd=tmp_path)
    events = helpers.kill_mid_trial(proc, db, lambda e: e["event"] == "step" and e["finished"] == 1)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step_label"] for e in steps] == ["epoch 1", "epoch 2", "epoch 3", "epoch 1"]
    assert steps[0]["n_steps"] == 3 and all(isinstance(e["step_value"], float) for e in steps)
    # resumed at once: the killed worker, a process of this host, no longer runs (no wait for its heartbeat to go stale)

    report, best = tmp_path / "report", tmp_path / "best.yaml"
    rerun = subprocess.run(helpers.cli_command(*argv, "--report", report, "--apply-best", best), cwd=tmp_path,
                           env=helpers.child_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    trials = helpers.load(db, "t").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    (killed,) = [t for t in trials if t.state == TrialState.FAIL]
    with quiet_optuna():
        (retry,) = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert retry.params == killed.params and retry.user_attrs["run_dir"] != killed.user_attrs["run_dir"]
    assert len(_val_dice(Path(killed.user_attrs["run_dir"]))) in (1, 2)  # epochs finished before the kill
    runs = tmp_path / "t-runs"  # next to the study file
    for t in finished:  # each trial trained in its own folder, from epoch 1, with the trial's values
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == runs / f"trial-{t.number:04d}"
        assert t.intermediate_values == dict(enumerate(_val_dice(run_dir)))
        saved = load_config(run_dir / "config.yaml")
        assert (saved.epochs, saved.lambda_max) == (3, pytest.approx(t.params["lambda_max"]))
    assert trials[0].params == {"alpha_prime": 0.175, "lambda_max": 3.35}  # the configuration's own values first

    doc = json.loads((report / "summary.json").read_text())
    assert doc["objective"] == "training-dice" and doc["steps"] == ["epoch 1", "epoch 2", "epoch 3"]
    assert doc["counts"]["COMPLETE"] + doc["counts"]["PRUNED"] == 3 and doc["counts"]["FAIL"] == 1
    assert [t["run_dir"] for t in doc["trials"]] == [t.user_attrs.get("run_dir") for t in trials]
    assert doc["study_settings"]["epochs"] == 5 and "alpha_prime" not in doc["study_settings"]
    assert "best validation Dice" in (report / "summary.md").read_text()
    study = helpers.load(db, "t")
    tuned = load_config(best)  # svreg train --config best.yaml: the best values, the full schedule
    assert (tuned.alpha_prime, tuned.lambda_max) == (pytest.approx(study.best_params["alpha_prime"]),
                                                     pytest.approx(study.best_params["lambda_max"]))
    assert tuned.epochs == 5 and tuned.data.sources == (DataSource("synthetic", str(tiny["labels"])),)


def test_training_objective_user_mistakes(tiny: dict[str, Path], tmp_path: Path, helpers: Any) -> None:
    """One plain line each, before any trial runs."""
    base = ["--train-config", tiny["config"], "--storage", tmp_path / "s.db", "--progress", "none"]
    with pytest.raises(InputError, match="either validation pairs .* or training settings"):
        run_tune(helpers.parse_args(tmp_path, *base))
    with pytest.raises(InputError, match="apply to pairwise tuning only"):
        run_tune(helpers.parse_args(*base, "--synthetic", tiny["labels"], "--iterations", 5))
    with pytest.raises(InputError, match="cannot search iterations"):
        run_tune(helpers.parse_args(*base, "--synthetic", tiny["labels"], "--search", "iterations"))
    with pytest.raises(InputError, match="no validation pairs"):
        run_tune(helpers.parse_args(*base, "--synthetic", tiny["labels"], "--val-fraction", 0))
    with pytest.raises(InputError, match="no training data"):
        run_tune(helpers.parse_args(*base))
    (tmp_path / "s-runs" / "trial-0000").mkdir(parents=True)
    with pytest.raises(InputError, match="holds the trial runs of another study"):
        run_tune(helpers.parse_args(*base, "--synthetic", tiny["labels"], "--study-name", "s"))
    assert not (tmp_path / "s.db").exists() or not optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}")


def test_the_trials_runs_go_next_to_the_storage_file(tiny: dict[str, Path], tmp_path: Path, helpers: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``--storage=~/s.db`` (a ~ the shell leaves as it is) kept the study in the home folder but put the trials'
    runs into a folder named ``~`` in the current folder, and those of an SQLite URL into the current folder;
    ``--runs-dir ~/runs`` too was taken literally. Found here by the refusal of a runs folder of another study."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    base = ["--train-config", tiny["config"], "--synthetic", tiny["labels"], "--study-name", "s", "--n-trials", 1,
            "--progress", "none"]
    for argv, runs in ((["--storage", "~/s.db"], tmp_path / "home" / "s-runs"),
                       (["--storage", f"sqlite:///{tmp_path / 'db' / 's.db'}"], tmp_path / "db" / "s-runs"),
                       (["--storage", tmp_path / "u.db", "--runs-dir", "~/runs"], tmp_path / "home" / "runs")):
        (runs / "trial-0000").mkdir(parents=True)
        with pytest.raises(InputError, match=f"{re.escape(str(runs))} holds the trial runs of another study"):
            run_tune(helpers.parse_args(*base, *argv))
    assert not (tmp_path / "~").exists()


def test_the_summary_line_names_the_best_validation_dice_once(tiny: dict[str, Path], tmp_path: Path, helpers: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The line after a training study read "best best validation Dice 0.7649"."""
    assert run_tune(helpers.parse_args("--train-config", tiny["config"], "--synthetic", tiny["labels"],
                                       "--epochs-per-trial", 1, "--storage", tmp_path / "s.db", "--n-trials", 1,
                                       "--progress", "none")) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("study svreg-tune: 1 complete, 0 pruned, 0 failed trials; best validation Dice 0.")


def test_label_choices_reach_the_trials_validation(tiny: dict[str, Path], helpers: Any) -> None:
    """--labels and --label-interpolation were stored with a training study but never reached its trials."""
    from svreg_core.tuning.training import training_config

    base = ["--train-config", tiny["config"], "--synthetic", tiny["labels"]]
    config = training_config(helpers.parse_args(*base, "--labels", 3, "--label-interpolation", "nearest"))
    assert config.validation.labels == (3,) and config.validation.label_interpolation == "nearest"
    assert training_config(helpers.parse_args(*base)).validation.labels is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_the_study(tiny: dict[str, Path], tmp_path: Path, helpers: Any) -> None:
    """--device cuda on a machine without CUDA failed every trial of a training study (five in a row, then the
    study stopped); refused in one line before the study storage is created, as for pairwise tuning."""
    with pytest.raises(InputError, match="no CUDA GPU is available"):
        run_tune(helpers.parse_args("--train-config", tiny["config"], "--synthetic", tiny["labels"], "--device",
                                    "cuda", "--storage", tmp_path / "s.db", "--n-trials", 1, "--progress", "none"))
    assert not (tmp_path / "s.db").exists()
