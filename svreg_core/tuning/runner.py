"""The worker loop of ``svreg tune``: run trials until the study holds ``n_trials`` finished trials.

"Finished" means COMPLETE or PRUNED, counted in the database over all workers and all earlier runs, so
re-running a killed command resumes the study and two workers share the work. Each trial is asked
under the study lock only while ``finished + running < n_trials``; when the remaining trials are all
running elsewhere the worker waits, and takes over if one of them fails or goes stale. A trial that
raises is told FAIL with its error message in the ``error`` user attribute, and the loop continues
(up to ``max_failures`` failures in a row).
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from svreg_core.tuning.objective import StepFailed, StepOutcome
from svreg_core.tuning.progress import NullReporter, TuneEvent, TuneReporter
from svreg_core.tuning.study import (WORKER_ATTR, Heartbeat, StudyLock, best_trial, count_finished,
                                     fail_stale_trials, quiet_optuna, worker_identity)


@dataclass
class RunSummary:
    """What one worker run did.

    Attributes:
        reason: ``"done"`` (target reached), ``"timeout"``, ``"max_failures"`` or ``"interrupted"``.
        finished: COMPLETE + PRUNED trials in the study at the end.
        trials: numbers of the trials this worker ran, with their final state names.
        last_error: message of the last failed trial of this worker.
    """

    reason: str
    finished: int
    n_trials: int
    trials: dict[int, str] = field(default_factory=dict)
    last_error: str | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_trial: int | None = None


def error_message(exc: BaseException, limit: int = 1000) -> str:
    """One line describing ``exc`` (type name unless it is already a user-facing message)."""
    from svreg_core.errors import SvregError

    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(exc, (StepFailed, SvregError)):
        line = f"{exc.__class__.__name__}: {line}" if line else exc.__class__.__name__
    return line[:limit]


class TuningRunner:
    """Runs trials of ``objective`` on ``study`` (see module docstring).

    Args:
        study: the loaded study (its sampler and pruner are used).
        objective: a callable ``trial -> float`` (an :class:`~svreg_core.tuning.objective.Objective`,
            whose ``listener`` is set to this runner for per-step progress).
        n_trials: target number of COMPLETE + PRUNED trials in the study.
        lock: the study's :class:`StudyLock`.
        reporter: progress reporter.
        timeout: stop starting new trials after this many seconds.
        max_failures: stop after this many failed trials in a row (0: never).
        poll_s: seconds between checks while waiting for other workers.
        grace_period: seconds after which a RUNNING trial without any worker record is failed.
    """

    def __init__(self, study: optuna.Study, objective: Any, *, n_trials: int, lock: StudyLock,
                 reporter: TuneReporter | None = None, timeout: float | None = None, max_failures: int = 5,
                 poll_s: float = 1.0, grace_period: float = 60.0) -> None:
        self.study = study
        self.objective = objective
        if hasattr(objective, "listener"):
            objective.listener = self
        self.n_trials = int(n_trials)
        self.lock = lock
        self.reporter = reporter or NullReporter()
        self.timeout = timeout
        self.max_failures = max_failures
        self.poll_s = poll_s
        self.grace_period = grace_period
        self._t0 = time.monotonic()
        self._finished = 0
        self._best: tuple[float | None, dict[str, Any] | None, int | None] = (None, None, None)
        self._folding: list[float] = []
        self._own: set[int] = set()

    # ---------------------------------------------------------------- events

    def _refresh(self) -> None:
        self._finished = count_finished(self.study)
        best = best_trial(self.study)
        self._best = (None, None, None) if best is None else (best.value, dict(best.params), best.number)

    def _emit(self, kind: str, **fields: Any) -> None:
        best_value, best_params, best_number = self._best
        event = TuneEvent(event=kind, study=self.study.study_name, best_value=best_value, best_params=best_params,
                          best_trial=best_number, elapsed_s=round(time.monotonic() - self._t0, 3),
                          finished=self._finished, n_trials=self.n_trials, **fields)
        self.reporter(event)

    def _fold(self) -> tuple[float | None, float | None]:
        if not self._folding:
            return None, None
        return sum(self._folding) / len(self._folding), max(self._folding)

    def trial_started(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        """Objective listener: the trial's parameters are known."""
        self._emit("trial_start", trial=trial.number, state="RUNNING", params=params)

    def step_finished(self, trial: optuna.Trial, step: int, label: str, outcome: StepOutcome,
                      running_value: float) -> None:
        """Objective listener: one pair (step) is done."""
        if outcome.folding_percent is not None:
            self._folding.append(float(outcome.folding_percent))
        mean, worst = self._fold()
        n_steps = len(getattr(getattr(self.objective, "evaluator", None), "step_labels", lambda: [])()) or None
        self._emit("step", trial=trial.number, state="RUNNING", value=running_value, params=dict(trial.params),
                   folding=mean, folding_max=worst, step=step, n_steps=n_steps, step_label=label,
                   step_value=float(outcome.value))

    # ---------------------------------------------------------------- loop

    def _ask(self) -> tuple[optuna.Trial | None, Heartbeat | None, bool]:
        """Under the lock: fail stale trials, count, ask. Returns (trial, heartbeat, target reached)."""
        with self.lock:
            fail_stale_trials(self.study, own_trial_ids=self._own, grace_period=self.grace_period)
            trials = self.study.get_trials(deepcopy=False)
            finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            self._finished = finished
            if finished >= self.n_trials:
                return None, None, True
            if finished + running >= self.n_trials:
                return None, None, False
            with quiet_optuna():
                trial = self.study.ask()
            self._own.add(trial._trial_id)
            trial.set_user_attr(WORKER_ATTR, worker_identity())
            heartbeat = Heartbeat(self.study._storage, trial._trial_id).start()
            return trial, heartbeat, False

    def _run_one(self, trial: optuna.Trial, heartbeat: Heartbeat) -> tuple[str, float | None, str | None]:
        t0 = time.monotonic()
        self._folding = []
        value: float | None = None
        error: str | None = None
        try:
            value = float(self.objective(trial))
            state = TrialState.COMPLETE
            if not math.isfinite(value):
                state, error = TrialState.FAIL, f"the objective value is {value}"
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            heartbeat.stop()
            self._tell(trial, TrialState.FAIL, None, "interrupted (the tuning process was stopped)")
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded, the study goes on
            state, error = TrialState.FAIL, error_message(exc)
        finally:
            heartbeat.stop()
        state, value = self._tell(trial, state, value, error)
        if state == TrialState.FAIL:
            _free_memory()
        self._refresh()
        mean, worst = self._fold()
        self._emit("trial", trial=trial.number, state=state.name, value=value, params=dict(trial.params),
                   folding=mean, folding_max=worst, duration_s=round(time.monotonic() - t0, 3), error=error)
        return state.name, value, error

    def _tell(self, trial: optuna.Trial, state: TrialState, value: float | None,
              error: str | None) -> tuple[TrialState, float | None]:
        storage = self.study._storage
        try:
            if error is not None:
                trial.set_user_attr("error", error)
            with quiet_optuna():
                if state == TrialState.COMPLETE:
                    self.study.tell(trial, value, skip_if_finished=True)
                else:
                    self.study.tell(trial, state=state, skip_if_finished=True)
        except Exception:  # noqa: BLE001 - e.g. the trial was failed by another worker meanwhile
            pass
        frozen = storage.get_trial(trial._trial_id)
        return frozen.state, frozen.value

    def run(self) -> RunSummary:
        """Run until the target is reached (or timeout / failures / Ctrl-C); never raises for a failed trial."""
        self._t0 = time.monotonic()
        summary = RunSummary("done", 0, self.n_trials)
        consecutive = 0
        waiting = False
        with self.lock:
            self._refresh()
        self._emit("start", message=f"{self._finished} of {self.n_trials} trials already finished")
        try:
            while True:
                if self.timeout is not None and time.monotonic() - self._t0 >= self.timeout:
                    summary.reason = "timeout"
                    break
                trial, heartbeat, reached = self._ask()
                if reached:
                    break
                if trial is None or heartbeat is None:
                    if not waiting:
                        self._emit("waiting", message="the remaining trials are running in other workers")
                        waiting = True
                    time.sleep(self.poll_s)
                    continue
                waiting = False
                state, _, error = self._run_one(trial, heartbeat)
                summary.trials[trial.number] = state
                if state == "FAIL":
                    consecutive += 1
                    summary.last_error = error
                    if self.max_failures and consecutive >= self.max_failures:
                        summary.reason = "max_failures"
                        break
                else:
                    consecutive = 0
        except KeyboardInterrupt:
            summary.reason = "interrupted"
        finally:
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - the database may be gone while interrupted
                pass
            summary.finished = self._finished
            summary.best_value, summary.best_params, summary.best_trial = self._best
            self._emit("end", message=summary.reason, error=summary.last_error if summary.reason == "max_failures" else None)
        return summary


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
