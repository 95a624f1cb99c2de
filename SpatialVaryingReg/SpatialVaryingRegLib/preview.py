"""Live preview of a HyperSPR model's regularisation: log-scale sliders and debounced re-runs.

A hyper model registers at any codes (α′, λ_max) inside the ranges it was trained over, in one network
pass. The panel shows one slider per code; releasing a slider re-runs the network alone (no refinement)
on the same inputs, updating the output nodes in place. The runs are requests to one long-lived engine
(:class:`~.logic.PreviewEngine`: volumes read and affine stage run once). Both pieces here are Qt-free
(tested outside Slicer):

* :func:`slider_position` / :func:`slider_code`: integer slider positions ``0..SLIDER_STEPS`` mapped
  log-uniformly onto a code's range (the codes act multiplicatively on the loss, and the network was
  trained with codes drawn log-uniformly);
* :class:`PreviewScheduler`: requests are debounced (a burst of them starts one run, for the last one),
  a new request asks the running run to stop at once (without waiting for it: a child process is ended,
  an engine request's result is dropped), and at most one run is alive: the next (the latest request;
  newer requests replace the waiting one) starts once the stopped one has ended. The widget calls
  :meth:`PreviewScheduler.poll` from a timer; nothing blocks the caller.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

#: Positions of a code slider: ``0..SLIDER_STEPS``.
SLIDER_STEPS = 100
#: Quiet time after the last request before a preview starts (s): a burst of key presses runs once.
DEBOUNCE_S = 0.3


def slider_position(value: float, low: float, high: float, steps: int = SLIDER_STEPS) -> int:
    """The slider position ``0..steps`` showing ``value`` on a log scale over ``[low, high]`` (clamped)."""
    if high <= low:
        return 0
    value = min(max(float(value), low), high)
    return int(round(steps * math.log(value / low) / math.log(high / low)))


def slider_code(position: int, low: float, high: float, default: float | None = None,
                steps: int = SLIDER_STEPS) -> float:
    """The code at slider ``position``: ``low * (high / low) ** (position / steps)``, exactly ``low`` and
    ``high`` at the ends, and exactly ``default`` at the position showing it (so it can be found again)."""
    position = min(max(int(position), 0), steps)
    if default is not None and position == slider_position(default, low, high, steps):
        return float(default)
    if high <= low or position == 0:
        return float(low)
    if position == steps:
        return float(high)
    return float(low * (high / low) ** (position / steps))


class Job(Protocol):
    """What the scheduler runs: a started :class:`~.logic.RegistrationJob` (or a :class:`~.runner.ChildProcess`,
    a :class:`~.runner.PreviewCall`)."""

    def poll(self) -> bool: ...

    def request_stop(self) -> None: ...


class PreviewScheduler:
    """Debounced, one-at-a-time runs where the latest request wins.

    Args:
        start: starts a run for a request and returns it (a :class:`Job`); exceptions reach the caller of
            :meth:`poll`, with the request dropped.
        on_finished: called with each run once it has ended (succeeded, failed or stopped), from :meth:`poll`.
        delay_s: quiet time after the last request before its run starts.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, start: Callable[[Any], Job], on_finished: Callable[[Job], None] | None = None,
                 delay_s: float = DEBOUNCE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._start, self._on_finished = start, on_finished
        self.delay_s, self._clock = delay_s, clock
        self.job: Job | None = None
        self.pending: Any = None
        self._due = 0.0

    @property
    def busy(self) -> bool:
        """Whether a run is alive or waiting to start (the caller keeps polling while so)."""
        return self.job is not None or self.pending is not None

    def request(self, what: Any) -> None:
        """Ask for a run for ``what`` after :attr:`delay_s` of quiet; a running run is asked to stop now."""
        self.pending = what
        self._due = self._clock() + self.delay_s
        if self.job is not None:
            self.job.request_stop()

    def cancel(self) -> None:
        """Drop the waiting request and ask the running run to stop (it is polled until it has ended)."""
        self.pending = None
        if self.job is not None:
            self.job.request_stop()

    def poll(self) -> bool:
        """Follow the running run and start the waiting one when due; ``True`` while :attr:`busy`."""
        if self.job is not None:
            if self.job.poll():
                return True
            job, self.job = self.job, None
            if self._on_finished is not None:
                self._on_finished(job)
        if self.pending is not None and self._clock() >= self._due:
            what, self.pending = self.pending, None
            self.job = self._start(what)
        return self.busy
