"""Progress reporting shared by the engine, the CLI (tqdm bar or JSON lines) and the Slicer module."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any


@dataclass
class ProgressEvent:
    """One progress update.

    Attributes:
        stage: short stage name (``"load"``, ``"affine"``, ``"deformable 4 mm"``, ``"outputs"``...).
        step: steps done in this stage.
        total: steps in this stage (0 when unknown).
        fraction: overall completion in [0, 1].
        message: optional human-readable line.
        values: optional numbers (e.g. ``{"loss": -0.41}``).
    """

    stage: str
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    message: str = ""
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]

#: The fraction of a registration's progress at which its outputs start (stage ``"registered"``): writing the files
#: and computing the report's metrics take the rest (about 15 % of a 1 mm brain registration on 2 CPU cores, most
#: of one on a GPU), so the bar and its time estimate keep moving while they are made.
REGISTERED_FRACTION = 0.85


def no_progress(event: ProgressEvent) -> None:
    """A progress callback that ignores every event."""


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float in it (in dicts, lists and tuples) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def emit_json(obj: dict) -> None:
    """Write ``obj`` as one line of strict JSON on stdout (the command line's ``--progress json`` events): a NaN
    or infinite number (a diverging loss) is written as ``null``, which every JSON parser reads."""
    sys.stdout.write(json.dumps(_finite(obj), allow_nan=False) + "\n")
    sys.stdout.flush()


#: The loss terms a terminal bar shows (an iteration's or a training step's ``values``), by short name, in this order
#: while they fit on the line.
BAR_TERMS = {"total": "loss", "loss": "loss", "similarity": "sim", "regularization": "reg", "prior": "prior",
             "labels": "labels"}
#: Columns of a bar line outside its description and loss terms: percentage, a bar of at least 10, counts and times.
_BAR_COLUMNS = 44


def bar_terms(values: dict[str, float], room: int) -> str:
    """``values``' loss terms (:data:`BAR_TERMS`) as ``loss=0.123, sim=-0.432, ...`` (3 significant digits), as many
    as fit in ``room`` characters; other values are left out."""
    shown = ""
    for key, short in BAR_TERMS.items():
        value = values.get(key)
        if isinstance(value, (int, float)):  # "total" (a training step) and "loss" (the affine stage): never both
            longer = f"{shown}, {short}={value:.3g}" if shown else f"{short}={value:.3g}"
            if len(longer) > room:
                break
            shown = longer
    return shown


def terminal_size(stream: IO[str] | None = None) -> tuple[int, int]:
    """``(columns, lines)`` of the terminal ``stream`` (default: stderr) writes to; where it reports 0 (a
    pseudo-terminal whose size was never set, as some container runtimes and job runners give) or the stream
    is not a terminal, ``$COLUMNS``/``$LINES``, else 80 × 24 (:func:`shutil.get_terminal_size`). tqdm bars
    are given this size: on a terminal of 0 lines they drew nothing."""
    try:
        size = os.get_terminal_size((stream or sys.stderr).fileno())
    except (AttributeError, ValueError, OSError):  # no file descriptor (a replaced stderr), or not a terminal
        size = os.terminal_size((0, 0))
    fallback = shutil.get_terminal_size()
    return size.columns or fallback.columns, size.lines or fallback.lines


class ProgressPrinter:
    """Turns :class:`ProgressEvent` into a tqdm bar (terminal), plain lines (``stage NN %`` on stderr, at
    most one per stage and 5 % step: ``auto`` when stderr is not a terminal), JSON lines on stdout, or nothing.
    ``json_fields`` are added to every JSON event (e.g. which pair of a batch it belongs to)."""

    def __init__(self, mode: str, json_fields: dict | None = None) -> None:
        self._json_fields = dict(json_fields or {})
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self._bar = None
        self._last: tuple[str, int] | None = None
        self._stage: str | None = None
        if mode == "bar":
            from tqdm import tqdm
            columns, lines = terminal_size()
            self._bar = tqdm(total=100, unit="%", file=sys.stderr, ncols=columns, nrows=lines,
                             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}{postfix}]")

    def __call__(self, event: ProgressEvent) -> None:
        if self.mode == "json":
            emit_json({"event": "progress", **event.to_dict(), **self._json_fields})
        elif self.mode == "lines":
            step = (event.stage, int(100 * event.fraction) // 5 * 5)
            if step != self._last:
                new_stage = self._last is None or self._last[0] != event.stage
                self._last = step
                message = f" ({event.message})" if event.message and (new_stage or event.stage == "epoch") else ""
                sys.stderr.write(f"svreg: {event.stage} {100 * event.fraction:.0f} %{message}\n")
                sys.stderr.flush()
        elif self._bar is not None:
            if event.stage != self._stage and 100 * event.fraction < self._bar.n:  # a stage counting from 0 again
                self._bar.reset(total=100)  # (svreg train's data checks and pre-alignment before its epochs)
            self._stage = event.stage
            self._bar.set_description(event.stage, refresh=False)
            room = terminal_size()[0] - len(event.stage) - _BAR_COLUMNS
            terms = bar_terms(event.values, room)
            if terms:  # an iteration's or a training step's loss terms
                self._bar.set_postfix_str(terms, refresh=False)
            if event.stage == "epoch" and event.message:  # a training epoch's summary line
                self._bar.write(event.message)
            self._bar.update(max(0.0, 100 * event.fraction - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
