"""Progress of a tuning run: a tqdm bar on a terminal, or one JSON object per line.

Every JSON line carries the same keys (``null`` when not applicable), so a reader (the Slicer
settings panel) can rely on them:

``event``        ``start`` | ``trial_start`` | ``step`` | ``trial`` | ``waiting`` | ``end`` (tuning), then
                 ``report`` / ``apply_best`` (``message`` = the folder / file written)
``study``        study name
``trial``        trial number (``null`` for ``start``/``waiting``/``end``)
``state``        ``RUNNING`` / ``COMPLETE`` / ``PRUNED`` / ``FAIL`` (trial events)
``value``        trial value (mean Dice; running mean for ``step``, last reported value if pruned)
``params``       the trial's searched values
``best_value``, ``best_params``, ``best_trial``   best complete trial of the whole study so far
``elapsed_s``    seconds since this process started tuning
``folding``      mean folding percent (``|J| <= 0``) over the evaluated pairs; ``folding_max`` the worst pair
``finished``     COMPLETE + PRUNED trials in the study, all workers; ``n_trials`` the target
``step``, ``n_steps``, ``step_label``, ``step_value``   pair index/count/name and that pair's Dice
``duration_s``   trial duration; ``error`` the failure message; ``message`` free text (end reason)
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import IO, Any, Callable, Protocol

EVENTS = ("start", "trial_start", "step", "trial", "waiting", "end", "report", "apply_best")


@dataclass
class TuneEvent:
    """One progress event; see the module docstring for the fields."""

    event: str
    study: str
    trial: int | None = None
    state: str | None = None
    value: float | None = None
    params: dict[str, Any] | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_trial: int | None = None
    elapsed_s: float = 0.0
    folding: float | None = None
    folding_max: float | None = None
    finished: int = 0
    n_trials: int = 0
    step: int | None = None
    n_steps: int | None = None
    step_label: str | None = None
    step_value: float | None = None
    duration_s: float | None = None
    error: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; NaN/inf become ``None``."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class TuneReporter(Protocol):
    """Receives :class:`TuneEvent` objects; ``close`` is called once at the end."""

    def __call__(self, event: TuneEvent) -> None:
        ...

    def close(self) -> None:
        ...


class NullReporter:
    """Ignores every event."""

    def __call__(self, event: TuneEvent) -> None:
        pass

    def close(self) -> None:
        pass


class CallbackReporter:
    """Forwards every event to a plain callable (for embedding, e.g. a GUI thread)."""

    def __init__(self, callback: Callable[[TuneEvent], None]) -> None:
        self.callback = callback

    def __call__(self, event: TuneEvent) -> None:
        self.callback(event)

    def close(self) -> None:
        pass


class JsonLinesReporter:
    """Writes one JSON object per event and line to ``stream`` (stdout by default), flushed."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def __call__(self, event: TuneEvent) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(event.to_dict(), allow_nan=False) + "\n")
        stream.flush()

    def close(self) -> None:
        pass


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class TqdmReporter:
    """A tqdm bar (stderr) of finished trials out of ``n_trials``, with the best value and current pair."""

    def __init__(self, stream: IO[str] | None = None, *, force: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.force = force
        self.bar: Any = None

    def _ensure(self, event: TuneEvent) -> None:
        if self.bar is None:
            from tqdm import tqdm

            disable = False if self.force else None  # None: off when the stream is not a terminal
            self.bar = tqdm(total=event.n_trials, initial=event.finished, desc=f"tuning {event.study}",
                            unit="trial", file=self.stream, disable=disable, dynamic_ncols=True)

    def __call__(self, event: TuneEvent) -> None:
        self._ensure(event)
        bar = self.bar
        if event.event in ("trial", "start", "waiting", "end") and event.finished != bar.n:
            bar.n = min(event.finished, bar.total or event.finished)
        post = {"best": _fmt(event.best_value)}
        if event.event == "step":
            post["trial"] = str(event.trial)
            post["pair"] = f"{(event.step or 0) + 1}/{event.n_steps}"
        elif event.event == "trial":
            post["last"] = f"{event.state} {_fmt(event.value)}"
            if event.state == "FAIL" and event.error:
                bar.write(f"trial {event.trial} failed: {event.error}", file=self.stream)
        elif event.event == "waiting":
            post["waiting"] = "other workers"
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def make_reporter(mode: str = "auto", *, stdout: IO[str] | None = None,
                  stderr: IO[str] | None = None) -> TuneReporter:
    """``json`` (lines on stdout), ``bar`` (tqdm on stderr, always), ``auto`` (bar only on a terminal) or ``none``."""
    if mode == "json":
        return JsonLinesReporter(stdout)
    if mode == "bar":
        return TqdmReporter(stderr, force=True)
    if mode == "auto":
        err = stderr or sys.stderr
        return TqdmReporter(err) if getattr(err, "isatty", lambda: False)() else NullReporter()
    if mode == "none":
        return NullReporter()
    raise ValueError(f"unknown progress mode {mode!r}")
