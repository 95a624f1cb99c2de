"""Progress of a tuning run: a tqdm bar on a terminal, plain lines in a pipe, or one JSON object per line
(:class:`TuneEvent`)."""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from svreg_core.progress import terminal_size
from svreg_core.tuning.study import best_trial, count_finished


@dataclass
class TuneEvent:
    """One progress event. Every JSON line carries every field (``null`` when not applicable), so a reader
    (the Slicer panel) can rely on them."""

    event: str  # start | trial_start | step | trial | end (tuning), then report / apply_best
    study: str  # study name
    trial: int | None = None  # trial number
    state: str | None = None  # RUNNING / COMPLETE / PRUNED / FAIL
    value: float | None = None  # the trial's value (so far, for "step"; the last reported one if pruned)
    params: dict[str, Any] | None = None  # the trial's searched values
    best_value: float | None = None  # best COMPLETE trial of the whole study so far: value, params, number
    best_params: dict[str, Any] | None = None
    best_trial: int | None = None
    elapsed_s: float = 0.0  # seconds since this process started tuning
    folding: float | None = None  # mean folding percent (|J| <= 0) over the evaluated steps
    folding_max: float | None = None  # the worst step's
    finished: int = 0  # COMPLETE + PRUNED trials in the study (all workers)
    n_trials: int = 0  # the target
    step: int | None = None  # step (pair or epoch) index, count, label and value
    n_steps: int | None = None
    step_label: str | None = None
    step_value: float | None = None
    duration_s: float | None = None  # the trial's duration
    error: str | None = None  # why the trial failed
    message: str | None = None  # free text: why a trial was pruned, the end reason, the folder or file written

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; NaN/inf become ``None``."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def json_lines(stream: IO[str] | None = None) -> Callable[[TuneEvent], None]:
    """A sink writing one JSON object per event to ``stream`` (stdout by default), flushed."""
    def write(event: TuneEvent) -> None:
        out = stream or sys.stdout
        out.write(json.dumps(event.to_dict(), allow_nan=False) + "\n")
        out.flush()

    return write


class TqdmBar:
    """A tqdm bar (stderr) of finished trials out of ``n_trials``, with the best value and current step."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Any = None

    def __call__(self, event: TuneEvent) -> None:
        if self.bar is None:
            from tqdm import tqdm

            columns, lines = terminal_size(self.stream)
            self.bar = tqdm(total=event.n_trials, initial=event.finished, desc=f"tuning {event.study}", unit="trial",
                            file=self.stream, disable=False, ncols=columns, nrows=lines)
        self.bar.n = min(event.finished, self.bar.total)
        post = {"best": "-" if event.best_value is None else f"{event.best_value:.4f}"}
        if event.event == "step":
            post.update(trial=str(event.trial), step=f"{(event.step or 0) + 1}/{event.n_steps}")
        elif event.event == "trial" and event.state == "FAIL":
            self.bar.write(f"trial {event.trial} failed: {event.error}", file=self.stream)
        self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plain_lines(stream: IO[str] | None = None) -> Callable[[TuneEvent], None]:
    """A sink writing one plain line when tuning starts (a trial on real pairs can take many minutes: the log said
    nothing until then) and one per finished trial to ``stream`` (stderr by default; a failed or pruned trial with
    why), for logs and batch jobs: ``svreg tune: study brain: 3 of 20 trials already finished``, ``svreg tune:
    trial 3 complete, 0.7712; best 0.7730 (trial 0); 4/20 finished, 123 s``."""
    def write(event: TuneEvent) -> None:
        if event.event == "start":
            out = stream or sys.stderr
            out.write(f"svreg tune: study {event.study}: {event.message}\n")
            out.flush()
        if event.event != "trial":
            return
        value = "" if event.value is None or not math.isfinite(event.value) else f", {event.value:.4f}"
        why = f" ({event.error or event.message})" if event.error or event.message else ""
        best = "none yet" if event.best_value is None else f"{event.best_value:.4f} (trial {event.best_trial})"
        out = stream or sys.stderr
        out.write(f"svreg tune: trial {event.trial} {(event.state or '').lower()}{why}{value}; best {best}; "
                  f"{event.finished}/{event.n_trials} finished, {event.elapsed_s:.0f} s\n")
        out.flush()

    return write


def make_sink(mode: str = "auto", *, stdout: IO[str] | None = None,
              stderr: IO[str] | None = None) -> Callable[[TuneEvent], None]:
    """``json`` (lines on stdout), ``bar`` (tqdm on stderr), ``lines`` (:func:`plain_lines` on stderr), ``auto``
    (the bar on a terminal, else the lines, as ``svreg register``) or ``none``."""
    err = stderr or sys.stderr
    if mode == "json":
        return json_lines(stdout)
    if mode == "bar" or (mode == "auto" and getattr(err, "isatty", lambda: False)()):
        return TqdmBar(err)
    if mode in ("auto", "lines"):
        return plain_lines(err)
    if mode == "none":
        return lambda event: None
    raise ValueError(f"unknown progress mode {mode!r}")


class TuneProgress:
    """Turns trial starts, steps (:func:`~svreg_core.tuning.objective.trial_function`'s ``progress``) and
    finished trials (a ``Study.optimize`` callback) into :class:`TuneEvent` s for ``sink``."""

    def __init__(self, study: optuna.Study, n_trials: int, sink: Callable[[TuneEvent], None]) -> None:
        self.study, self.n_trials, self.sink, self.t0 = study, n_trials, sink, time.monotonic()

    def emit(self, kind: str, trial: optuna.Trial | FrozenTrial | None = None, **fields: Any) -> None:
        """Send a ``kind`` event, with the study's best trial and, given ``trial``, its number, params, folding."""
        best = best_trial(self.study)
        if trial is not None:
            fields = dict(trial=trial.number, params=dict(trial.params),
                          folding=trial.user_attrs.get("folding_percent"),
                          folding_max=trial.user_attrs.get("folding_percent_max"), **fields)
        self.sink(TuneEvent(kind, self.study.study_name, elapsed_s=round(time.monotonic() - self.t0, 3),
                            finished=count_finished(self.study), n_trials=self.n_trials,
                            best_value=None if best is None else best.value,
                            best_params=None if best is None else dict(best.params),
                            best_trial=None if best is None else best.number, **fields))

    def trial_started(self, trial: optuna.Trial) -> None:
        self.emit("trial_start", trial, state="RUNNING")

    def step_finished(self, trial: optuna.Trial, step: int, label: str, value: float, running: float) -> None:
        self.emit("step", trial, state="RUNNING", value=running, step=step, step_label=label, step_value=value,
                  n_steps=len(trial.user_attrs["step_labels"]))  # set by the StepReporter before it calls this

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.emit("trial", trial, state=trial.state.name, value=trial.value, error=trial.user_attrs.get("error"),
                  message=trial.user_attrs.get("pruned_reason") if trial.state == TrialState.PRUNED else None,
                  duration_s=None if trial.duration is None else round(trial.duration.total_seconds(), 3))
