"""The step objective of ``svreg tune`` with a cheap analytic objective shaped like a training run:
epoch-granularity pruning, the folding constraint, failures, stopped default trials, workers sharing a
journal file; the labels pairwise Dice scores."""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from svreg_core.image import Image
from svreg_core.tuning.objective import PairwiseDice, StepReporter, trial_function
from svreg_core.tuning.pairs import LoadedPair
from svreg_core.tuning.progress import TuneEvent, TuneProgress
from svreg_core.tuning.study import (
    BASE_PRESET,
    create_or_join,
    load_study,
    make_sampler,
    open_storage,
    quiet_optuna,
    run_worker,
)

# ----------------------------------------------------------------------------------------- objective


class Training:
    """Shaped like a training run: 3 epochs, each reporting a validation score that grows towards
    ``1 - (x - 0.3)²`` (NaN for x < ``nan_below``); folding = 10·x %. Epoch 2 raises for x < ``fail_below``,
    and is stopped as by Ctrl-C / SIGTERM (KeyboardInterrupt, what the stop signal raises) for x < ``stop_below``."""

    name = "quadratic-training"
    aggregate = "max"  # the trial's value is its best epoch

    def __init__(self, fail_below: float = -1.0, nan_below: float = -1.0, seconds: float = 0.0,
                 stop_below: float = -1.0) -> None:
        self.fail_below = fail_below
        self.nan_below = nan_below
        self.seconds = seconds
        self.stop_below = stop_below
        self.epochs_run = 0

    def step_labels(self) -> list[str]:
        return ["epoch 1", "epoch 2", "epoch 3"]

    def evaluate(self, config: dict[str, float], steps: StepReporter) -> None:
        x = config["x"]
        for k in range(1, 4):
            time.sleep(self.seconds)
            self.epochs_run += 1
            if k == 2 and x < self.fail_below:
                raise MemoryError("out of memory")
            if k == 2 and x < self.stop_below:
                raise KeyboardInterrupt
            steps.report(math.nan if x < self.nan_below else 1 - (x - 0.3) ** 2 - 0.1 / k, folding=10 * x)


class XSpace:
    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _study(storage: Any, name: str, pruner: optuna.pruners.BasePruner, xs: tuple[float, ...] = ()) -> optuna.Study:
    study, created = create_or_join(storage, name, {"objective": "quadratic"}, default_params=None)
    for x in xs:
        study.enqueue_trial({"x": x})
    return load_study(storage, name, sampler=make_sampler(0, created), pruner=pruner)


def test_training_shaped_objective_prunes_per_epoch(tmp_path: Path) -> None:
    """A training objective plugs in unchanged: steps are epochs, pruning at epoch granularity."""
    storage = open_storage(tmp_path / "q.db")
    study = _study(storage, "q", optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
                   (0.3, 0.35, 0.95, 0.28, 0.9))
    objective = Training()
    events: list[TuneEvent] = []
    progress = TuneProgress(study, 5, events.append)
    with quiet_optuna():
        reason, _ = run_worker(study, trial_function(XSpace(), objective, progress=progress), 5, callbacks=[progress])
    assert reason == "done"
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                    TrialState.COMPLETE, TrialState.PRUNED]
    assert t[0].value == pytest.approx(1 - 0.1 / 3)  # the best epoch
    for pruned in (t[2], t[4]):  # not during warm-up (epoch 1), at epoch 2 — never after the last epoch
        assert pruned.user_attrs["pruned_reason"] == "below the median of other trials after epoch 2"
        assert len(pruned.user_attrs["step_values"]) == 2 and max(pruned.intermediate_values) == 1
    assert objective.epochs_run == 3 + 3 + 2 + 3 + 2
    steps = [e for e in events if e.event == "step"]
    assert steps[0].step_label == "epoch 1" and steps[0].n_steps == 3 and steps[0].folding == pytest.approx(3.0)
    assert [e.state for e in events if e.event == "trial"] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    assert [e.finished for e in events if e.event == "trial"] == [1, 2, 3, 4, 5]
    # why a trial was pruned (the median, or --max-folding) reaches the progress lines: they said only "pruned"
    assert [e.message for e in events if e.event == "trial"] == [None, None, pruned.user_attrs["pruned_reason"],
                                                                 None, pruned.user_attrs["pruned_reason"]]


def test_folding_constraint_prunes_the_trial(tmp_path: Path) -> None:
    study = _study(open_storage(tmp_path / "c.db"), "c", optuna.pruners.NopPruner(), (0.3, 0.5))
    with quiet_optuna():
        run_worker(study, trial_function(XSpace(), Training(), max_folding=4.0), 2)
    ok, bad = study.get_trials()
    assert ok.state == TrialState.COMPLETE and ok.user_attrs["folding_percent_max"] == pytest.approx(3.0)
    assert bad.state == TrialState.PRUNED and len(bad.user_attrs["step_values"]) == 1
    assert bad.user_attrs["pruned_reason"] == "folding 5% > 4% on epoch 1"


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    study = _study(open_storage(tmp_path / "n.db"), "n", optuna.pruners.NopPruner(), (0.01, 0.2, 0.6))
    with quiet_optuna():
        reason, error = run_worker(study, trial_function(XSpace(), Training(fail_below=0.4, nan_below=0.05)), 1)
    assert reason == "done" and error == "epoch 2: MemoryError: out of memory"
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert t[0].user_attrs["error"] == "epoch 1: ValueError: the objective value is nan"
    assert t[1].user_attrs["error"] == "epoch 2: MemoryError: out of memory"
    assert t[1].user_attrs["step_values"] == [pytest.approx(1 - 0.01 - 0.1)]  # epoch 1 was recorded

    stop = _study(open_storage(tmp_path / "m.db"), "m", optuna.pruners.NopPruner(), (0.2, 0.2, 0.2, 0.6))
    with quiet_optuna():
        reason, error = run_worker(stop, trial_function(XSpace(), Training(fail_below=0.4)), 2, max_failures=3)
    assert reason == "max_failures"
    assert [x.state for x in stop.get_trials()] == [TrialState.FAIL] * 3 + [TrialState.WAITING]


def test_stopped_default_trial_is_queued_again(tmp_path: Path) -> None:
    """The base preset's trial (trial 0) stopped by Ctrl-C / SIGTERM is queued again when the study is
    joined and then run, even by a run that finds the study already finished; once only, and never a
    default that failed by itself. (Real signals and a killed worker: test_cli.py.)"""
    storage = open_storage(tmp_path / "d.db")
    meta, default = {"objective": "quadratic"}, {"x": 0.25}

    def join(expect_created: bool = False) -> optuna.Study:
        study, created = create_or_join(storage, "d", meta, default_params=default)
        assert created == expect_created
        return load_study(storage, "d", sampler=make_sampler(0, created))

    def defaults(study: optuna.Study) -> list[Any]:
        return [t for t in study.get_trials() if t.user_attrs.get("enqueued") == BASE_PRESET]

    study = join(expect_created=True)
    with quiet_optuna(), pytest.raises(KeyboardInterrupt):
        run_worker(study, trial_function(XSpace(), Training(stop_below=0.3)), 3)
    (stopped,) = study.get_trials()
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    # other workers finish the study meanwhile (3 complete trials), without the default
    for x in (0.5, 0.6, 0.7):
        study.add_trial(optuna.create_trial(params={"x": x}, distributions=stopped.distributions, value=0.5))
    study = join()
    assert [t.state for t in defaults(study)] == [TrialState.FAIL, TrialState.WAITING]
    assert [t.state for t in defaults(join())] == [TrialState.FAIL, TrialState.WAITING]  # queued once only
    with quiet_optuna():
        assert run_worker(study, trial_function(XSpace(), Training()), 3)[0] == "done"
    last = defaults(study)[-1]
    assert last.state == TrialState.COMPLETE and last.params == default and last.number == 4
    assert last.value == pytest.approx(1 - 0.05 ** 2 - 0.1 / 3)
    assert len(study.get_trials()) == 5  # the default ran though 3 trials were already finished

    # a default that fails by itself (an error, not a stop) is not run again
    failing = open_storage(tmp_path / "f.db")
    study, _ = create_or_join(failing, "f", meta, default_params=default)
    with quiet_optuna():
        run_worker(study, trial_function(XSpace(), Training(fail_below=0.3)), 1, max_failures=1)
    study, created = create_or_join(failing, "f", meta, default_params=default)
    assert not created and [t.state for t in study.get_trials()] == [TrialState.FAIL]
    assert "out of memory" in study.get_trials()[0].user_attrs["error"]


def test_base_trial_queued_by_two_workers_at_once_runs_once(tmp_path: Path) -> None:
    """Two workers resuming at once can both find the stopped base trial failed and both queue it (reading
    and queueing are separate transactions): the later queued copy is failed before it runs, and does not
    count as an attempt of the base (which is queued again after its next stop)."""
    storage = open_storage(tmp_path / "d.db")
    meta, default = {"objective": "quadratic"}, {"x": 0.25}
    study, _ = create_or_join(storage, "d", meta, default_params=default)
    with quiet_optuna(), pytest.raises(KeyboardInterrupt):
        run_worker(study, trial_function(XSpace(), Training(stop_below=0.3)), 3)
    for _ in range(2):  # what the two workers' requeue_default did, each after reading the stopped attempt
        study.enqueue_trial(default, user_attrs={"enqueued": BASE_PRESET})
    study, created = create_or_join(storage, "d", meta, default_params=default)  # either worker, after queueing
    trials = study.get_trials()
    assert not created and [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.FAIL]
    assert trials[2].user_attrs["duplicate_of"] == 1 and "queued twice" in trials[2].user_attrs["error"]
    with quiet_optuna(), pytest.raises(KeyboardInterrupt):  # the base's next attempt is stopped too
        run_worker(study, trial_function(XSpace(), Training(stop_below=0.3)), 3)
    study, _ = create_or_join(storage, "d", meta, default_params=default)
    with quiet_optuna():
        assert run_worker(study, trial_function(XSpace(), Training()), 2)[0] == "done"
    ran = [t for t in study.get_trials() if t.params == default and "duplicate_of" not in t.user_attrs]
    assert [t.state for t in ran] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]


def test_second_worker_dropping_the_same_duplicate_does_not_crash(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both workers that queued the base trial drop the later copy; the slower one read the queued copies
    just before the faster one failed it: its claim of a finished trial is skipped, not an
    UpdateFinishedTrialError traceback ending that worker."""
    from svreg_core.tuning import study as study_module

    storage = open_storage(tmp_path / "r.db")
    meta, default = {"objective": "quadratic"}, {"x": 0.25}
    study, _ = create_or_join(storage, "r", meta, default_params=default)
    with quiet_optuna(), pytest.raises(KeyboardInterrupt):
        run_worker(study, trial_function(XSpace(), Training(stop_below=0.3)), 3)
    for _ in range(2):
        study.enqueue_trial(default, user_attrs={"enqueued": BASE_PRESET})
    stale = study_module._default_trials(study, (TrialState.WAITING,))  # the slower worker's reading
    study_id = storage.get_study_id_from_name("r")
    study_module._drop_duplicates(study, storage, study_id)  # the faster worker fails the copy
    monkeypatch.setattr(study_module, "_default_trials", lambda *args, **kwargs: stale)
    study_module._drop_duplicates(study, storage, study_id)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.FAIL]
    assert trials[2].user_attrs["duplicate_of"] == 1


def test_two_workers_failing_the_same_dead_base_trial_do_not_crash(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The base trial of a killed worker (still RUNNING) is failed by each worker joining; the slower one read it
    as RUNNING just before the faster one failed it: its own failing is skipped, not an UpdateFinishedTrialError."""
    import socket
    import subprocess
    import sys

    from svreg_core.tuning import study as study_module

    storage = open_storage(tmp_path / "k.db")
    meta, default = {"objective": "quadratic"}, {"x": 0.25}
    study, _ = create_or_join(storage, "k", meta, default_params=default)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask()  # the killed worker's base trial, left RUNNING
    trial.set_user_attr("worker", f"{socket.gethostname()}:{int(dead.stdout)}")
    read = study_module._lost_trials(study)  # the slower worker's reading
    assert not study_module.requeue_default(study, default, storage)  # the faster worker: failed, retried
    monkeypatch.setattr(study_module, "_lost_trials", lambda s: read)
    assert not study_module.requeue_default(study, default, storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    with quiet_optuna():  # the storage's retry of a lost trial (--max-retry) re-runs the base: nothing more queued
        assert RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0


def test_journal_file_storage_resumes_and_shares_trials(tmp_path: Path) -> None:
    """JournalStorage on a file: two workers (threads, each with its own storage) then a resumed run."""
    path = tmp_path / "study.log"
    studies = [_study(open_storage(path), "j", optuna.pruners.NopPruner()) for _ in range(2)]
    with quiet_optuna():
        workers = [threading.Thread(target=run_worker, args=(s, trial_function(XSpace(), Training(seconds=0.05)), 4))
                   for s in studies]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        trials = studies[0].get_trials()
        assert len({t.number for t in trials}) == len(trials)
        assert 4 <= sum(t.state == TrialState.COMPLETE for t in trials) <= 5  # one extra if both were running
        resumed = _study(open_storage(path), "j", optuna.pruners.NopPruner())
        assert run_worker(resumed, trial_function(XSpace(), Training()), len(trials) + 2)[0] == "done"
    assert [t.state for t in resumed.get_trials()] == [TrialState.COMPLETE] * (len(trials) + 2)
    assert not list(tmp_path.glob("*.lock"))


class _Warped:
    """A registration result reduced to what :meth:`PairwiseDice.score` asks of it: the moving labels warped
    onto the fixed grid (here given outright)."""

    def __init__(self, labels: Image) -> None:
        self.labels = labels

    def warp_image(self, image: Image, labels: bool, label_mode: str) -> Image:
        return self.labels


def test_a_warp_that_erases_a_label_does_not_score_higher() -> None:
    """Pairwise tuning's Dice scores the labels of both input maps: erasing a small structure scores it 0,
    below a warp that keeps it, slightly shifted (the labels of the fixed and warped maps alone would drop it
    and give the erasing warp the higher mean)."""
    affine = np.eye(4)
    fixed = np.zeros((12, 12, 12), np.int16)
    fixed[1:9, 1:9, 1:9], fixed[10:12, 10:12, 10:12] = 1, 2
    pair = LoadedPair("p", Image(fixed.astype(np.float32), affine), Image(fixed.astype(np.float32), affine),
                      Image(fixed, affine), Image(fixed, affine))
    shifted = np.zeros_like(fixed)
    shifted[1:9, 1:9, 1:9], shifted[10:12, 10:12, 9:11] = 1, 2
    erased = np.where(fixed == 2, 0, fixed)
    objective = PairwiseDice([])
    kept = objective.score(pair, _Warped(Image(shifted, affine)))
    lost = objective.score(pair, _Warped(Image(erased, affine)))
    assert kept == pytest.approx((1.0 + 0.5) / 2) and lost == pytest.approx((1.0 + 0.0) / 2)


def test_a_stop_request_while_the_study_is_created_leaves_a_complete_study(tmp_path: Path, monkeypatch) -> None:
    """A SIGTERM right after Optuna created the study, before svreg stored its settings, left a study every later
    run refused ("exists but was not created by svreg tune", after waiting 30 s); the request is now held back until
    the settings and the base preset's trial are stored, then stops the run, which the same command resumes."""
    import os
    import signal

    from svreg_core.interrupts import sigterm_as_interrupt

    storage = open_storage(tmp_path / "s.db")
    create = optuna.create_study

    def create_then_stop(**kwargs: Any) -> optuna.Study:  # the stop request arrives right after Optuna's transaction
        study = create(**kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return study

    monkeypatch.setattr(optuna, "create_study", create_then_stop)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        create_or_join(storage, "s", {"objective": "quadratic"}, default_params={"x": 0.25})
    monkeypatch.setattr(optuna, "create_study", create)
    study, created = create_or_join(storage, "s", {"objective": "quadratic"}, default_params={"x": 0.25}, wait_s=0)
    assert not created and [(t.state, t.user_attrs["enqueued"], t.system_attrs["fixed_params"])
                            for t in study.get_trials()] == [(TrialState.WAITING, BASE_PRESET, {"x": 0.25})]
