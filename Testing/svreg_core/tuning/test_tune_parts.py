"""The parts of ``svreg tune`` that need no registration: pairs, search space, storage, heartbeats,
the step objective (pruning, folding constraint) with a cheap analytic evaluator, progress output."""
from __future__ import annotations

import io
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from optuna.trial import TrialState

from svreg_core.errors import InputError, OutputError
from svreg_core.optim.parameters import PRESETS, RegistrationParameters
from svreg_core.tuning.cli import main, run_tune
from svreg_core.tuning.objective import Objective, StepOutcome
from svreg_core.tuning.pairs import discover_pairs
from svreg_core.tuning.progress import JsonLinesReporter, TqdmReporter, TuneEvent, make_reporter
from svreg_core.tuning.runner import TuningRunner
from svreg_core.tuning.search_space import SearchSpace, build_search_space
from svreg_core.tuning.study import (StudyLock, fail_stale_trials, open_storage, prepare_study,
                                     quiet_optuna, storage_url)

ROLES = ("fixed", "moving", "fixed_labels", "moving_labels")

# ----------------------------------------------------------------------------------------- pairs


def _fake_pair(folder: Path, stems: tuple[str, ...] = ROLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in stems:
        (folder / f"{s}.nii.gz").write_bytes(b"x")
    return folder


def test_pairs_from_folder_list_files_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "val"
    _fake_pair(root / "b")
    _fake_pair(root / "a", ("fixed_image", "moving_image", "fixed_seg", "moving_seg"))
    (root / ".hidden").mkdir()
    (root / "notes").mkdir()
    pairs = discover_pairs(root)
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].fixed_labels.name == "fixed_seg.nii.gz"
    assert [p.name for p in discover_pairs(root / "b")] == ["b"]  # a folder that is itself one pair

    csv = tmp_path / "list.csv"
    csv.write_text("fixed,moving,fixed_labels,moving_labels\n"
                   "val/a/fixed_image.nii.gz,val/a/moving_image.nii.gz,val/a/fixed_seg.nii.gz,val/a/moving_seg.nii.gz\n")
    (listed,) = discover_pairs(csv)
    assert listed.name == "pair001" and listed.moving == tmp_path / "val/a/moving_image.nii.gz"
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"pairs": [{"name": "x", **{r: str(root / "b" / f"{r}.nii.gz") for r in ROLES}}]}))
    assert [p.name for p in discover_pairs(js)] == ["x"]

    with pytest.raises(InputError, match="not found"):
        discover_pairs(tmp_path / "nowhere")
    _fake_pair(root / "c", ("fixed", "moving", "fixed_labels"))
    with pytest.raises(InputError, match=r"pair folder .*c lacks moving_labels"):
        discover_pairs(root)
    shutil.rmtree(root / "c")
    (root / "b" / "moving.nii.gz").unlink()
    with pytest.raises(InputError, match=r"pair 'x': moving file not found"):
        discover_pairs(js)
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,moving\na,b\n")
    with pytest.raises(InputError, match="missing: fixed_labels, moving_labels"):
        discover_pairs(bad)
    with pytest.raises(InputError, match="holds no pairs"):
        discover_pairs(tmp_path / "val" / "notes")


# ----------------------------------------------------------------------------------------- search space


def test_search_space_ranges_per_preset() -> None:
    brain = {r.name: r for r in build_search_space("brain-mri").ranges}
    assert (brain["alpha_prime"].low, brain["alpha_prime"].high, brain["alpha_prime"].log) == (0.01, 0.2, True)
    assert (brain["lambda_max"].low, brain["lambda_max"].high) == (0.5, 5.0)
    ct = {r.name: r for r in build_search_space("ct").ranges}
    assert (ct["alpha_prime"].low, ct["alpha_prime"].high) == (0.001, 0.1)
    assert (ct["lambda_max"].low, ct["lambda_max"].high) == (0.8, 3.0)
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
        assert 0.001 <= params.alpha_prime <= 0.1 and 0.8 <= params.lambda_max <= 3.0
        assert 10 <= params.iterations[0] <= 40 and 5 <= params.iterations[1] <= 20
        assert params.learning_rate == pytest.approx(trial.params["learning_rate"])
        assert space.parameters(trial.params) == params
        study.tell(trial, 0.0)
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space


# ----------------------------------------------------------------------------------------- storage


def test_storage_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create the folder"):
        open_storage(blocker / "sub" / "s.db")
    with pytest.raises(InputError, match=r"cannot open the study storage postgresql(\+psycopg2)?://me:\*\*\*@127"):
        open_storage("postgresql://me:secret@127.0.0.1:1/x")  # connection refused; password not shown
    with pytest.raises(InputError, match="invalid storage URL"):
        storage_url("not a url://")
    with pytest.raises(InputError, match="no study database"):
        open_storage(tmp_path / "missing.db", create=False)
    with pytest.raises(InputError, match="no study named 'nope'"):
        run_tune(_args("--storage", _empty_storage(tmp_path), "--study-name", "nope", "--report", tmp_path / "r"))


def _empty_storage(tmp_path: Path) -> Path:
    path = tmp_path / "empty.db"
    open_storage(path)
    return path


def _args(*argv: Any) -> Any:
    from svreg_core.tuning.cli import build_parser

    return build_parser().parse_args([str(a) for a in argv])


def test_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="give a validation set"):
        run_tune(_args())
    with pytest.raises(InputError, match="grace-period must be longer"):
        run_tune(_args(tmp_path, "--heartbeat-interval", "10", "--grace-period", "5"))
    assert main([str(tmp_path / "missing"), "--storage", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svreg tune: error: validation set not found")


def test_stale_trial_without_heartbeat_is_failed_and_retried(tmp_path: Path) -> None:
    """A worker on another machine stops sending heartbeats: its trial is failed, its parameters re-queued."""
    url = storage_url(tmp_path / "hb.db")
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    lock = StudyLock(url, "hb")
    space = build_search_space("brain-mri")
    study, _ = prepare_study(storage, "hb", {"objective": "x", "search_space": space.to_dict()}, lock, seed=0,
                             pruner=optuna.pruners.NopPruner(), default_params=None, max_folding=None)
    with quiet_optuna():
        trial = study.ask()
    space.suggest(trial)
    trial.set_user_attr("worker", {"host": "elsewhere", "pid": 1})
    storage.record_heartbeat(trial._trial_id)
    assert fail_stale_trials(study) == []  # still fresh
    time.sleep(2.5)
    assert fail_stale_trials(study) == [trial.number]
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[1].state == TrialState.WAITING  # enqueued: the next ask() re-runs the same values
    assert trials[1].system_attrs["fixed_params"] == trials[0].params
    assert trials[1].user_attrs == {"retry_of": 0, "retry_count": 1}


# ----------------------------------------------------------------------------------------- objective


class Quadratic:
    """A cheap evaluator: 3 'epochs' whose value grows towards 1 - (x - 0.3)²; folding = 10·x %."""

    name = "quadratic"

    def __init__(self) -> None:
        self.closed = 0

    def step_labels(self) -> list[str]:
        return ["epoch 1", "epoch 2", "epoch 3"]

    def run(self, config: dict[str, float]) -> Iterator[StepOutcome]:
        x = config["x"]
        try:
            for k in range(1, 4):
                yield StepOutcome(1 - (x - 0.3) ** 2 - 0.1 / k, folding_percent=10 * x)
        finally:
            self.closed += 1


class XSpace:
    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _study(tmp_path: Path, name: str, pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, StudyLock]:
    url = storage_url(tmp_path / f"{name}.db")
    storage = open_storage(url)
    lock = StudyLock(url, name)
    study, _ = prepare_study(storage, name, {"objective": "quadratic"}, lock, seed=0, pruner=pruner,
                             default_params=None, max_folding=None)
    return study, lock


def test_objective_prunes_below_median_after_warmup(tmp_path: Path) -> None:
    """Steps are epochs here (aggregate "max" = best epoch): the shape a training objective will have."""
    study, lock = _study(tmp_path, "q", optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for x in (0.3, 0.35, 0.95, 0.28, 0.9):
        study.enqueue_trial({"x": x})
    evaluator = Quadratic()
    events: list[TuneEvent] = []
    objective = Objective(XSpace(), evaluator, aggregate="max")
    summary = TuningRunner(study, objective, n_trials=5, lock=lock, reporter=events.append).run()
    assert summary.reason == "done" and summary.finished == 5
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                    TrialState.COMPLETE, TrialState.PRUNED]
    assert t[0].value == pytest.approx(1 - 0.1 / 3)  # the best epoch
    for pruned in (t[2], t[4]):  # not during warm-up (step 0), at step 1 — never after the last step
        assert pruned.user_attrs["pruned_reason"] == "below the median of other trials after epoch 2"
        assert pruned.user_attrs["steps_done"] == 2 and max(pruned.intermediate_values) == 1
    assert evaluator.closed == 5  # pruned evaluations were closed (their resources released)
    steps = [e for e in events if e.event == "step"]
    assert steps[0].step_label == "epoch 1" and steps[0].n_steps == 3 and steps[0].folding == pytest.approx(3.0)
    assert [e.state for e in events if e.event == "trial"] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]


def test_folding_constraint_rejects_trial(tmp_path: Path) -> None:
    study, lock = _study(tmp_path, "c", optuna.pruners.NopPruner())
    study.enqueue_trial({"x": 0.3})
    study.enqueue_trial({"x": 0.5})
    objective = Objective(XSpace(), Quadratic(), aggregate="max", max_folding=4.0)
    TuningRunner(study, objective, n_trials=2, lock=lock).run()
    ok, bad = study.get_trials()
    assert ok.state == TrialState.COMPLETE and ok.user_attrs["folding_percent_max"] == pytest.approx(3.0)
    assert bad.state == TrialState.PRUNED and bad.user_attrs["steps_done"] == 1
    assert bad.user_attrs["pruned_reason"] == "folding 5% > 4% on epoch 1"


def test_objective_nan_and_exception_fail_the_trial_only(tmp_path: Path) -> None:
    class Flaky(Quadratic):
        def run(self, config: dict[str, float]) -> Iterator[StepOutcome]:
            if config["x"] < 0.2:
                yield StepOutcome(math.nan)
            if config["x"] < 0.4:
                raise MemoryError("out of memory")
            yield from super().run(config)

    study, lock = _study(tmp_path, "n", optuna.pruners.NopPruner())
    for x in (0.1, 0.3, 0.6):
        study.enqueue_trial({"x": x})
    summary = TuningRunner(study, Objective(XSpace(), Flaky()), n_trials=1, lock=lock).run()
    assert summary.reason == "done" and summary.trials == {0: "FAIL", 1: "FAIL", 2: "COMPLETE"}
    t = study.get_trials()
    assert t[0].user_attrs["error"] == "epoch 1: ValueError: the objective value is nan"
    assert t[1].user_attrs["error"] == "epoch 1: MemoryError: out of memory"


# ----------------------------------------------------------------------------------------- progress


def test_progress_reporters() -> None:
    out = io.StringIO()
    JsonLinesReporter(out)(TuneEvent("trial", "s", trial=3, state="COMPLETE", value=math.nan, params={"a": 1.0},
                                     folding=math.inf))
    doc = json.loads(out.getvalue())
    assert doc["value"] is None and doc["folding"] is None and doc["trial"] == 3 and doc["params"] == {"a": 1.0}
    bar_stream = io.StringIO()
    bar = TqdmReporter(bar_stream, force=True)
    bar(TuneEvent("start", "s", n_trials=4, finished=1))
    bar(TuneEvent("trial", "s", trial=1, state="FAIL", error="boom", finished=1, n_trials=4))
    bar(TuneEvent("trial", "s", trial=2, state="COMPLETE", value=0.8, best_value=0.8, finished=2, n_trials=4))
    bar.close()
    text = bar_stream.getvalue()
    assert "2/4" in text and "best=0.8000" in text and "trial 1 failed: boom" in text
    assert type(make_reporter("auto", stderr=io.StringIO())).__name__ == "NullReporter"  # quiet in pipes
    with pytest.raises(ValueError):
        make_reporter("loud")
