"""Background tuning from the settings panel: the ``svreg tune`` child process and its SQLite study.

``svreg tune`` (``python -m svreg_core.cli tune``) runs Optuna trials on a validation set of labelled
pairs, prints one JSON object per line (``start``, ``trial_start``, ``step``, ``trial``, ``waiting``,
``end``, ``apply_best``) and stores the study in an SQLite file: running the same command again
resumes it. Here:

* :class:`TuneRequest` builds the command; :func:`start_tuning` starts it as a :class:`~.runner.ChildProcess`.
  *Stop* sends SIGTERM (the engine records the running trial as failed and keeps the finished ones)
  and kills the process tree after a grace period.
* :func:`read_study` reads the trials straight from the SQLite file with the standard library
  (read-only), so the panel shows a study even when no tuning process is running (after a restart,
  or one started from a terminal) and never needs Optuna in the Slicer process.
* :func:`apply_best` writes the best trial as a preset file (``svreg tune --apply-best``) that the
  Register button uses through the "custom file" preset.
* :func:`export_pair` adds the volumes of the scene to a validation folder.
"""
from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import geometry, runner

#: Grace period between SIGTERM and SIGKILL when stopping a tuning run (the running trial is recorded).
STOP_GRACE_S = 15.0


@dataclass
class TuneRequest:
    """Arguments of ``svreg tune`` (``None`` = the engine's default)."""

    validation: Path
    storage: Path
    study_name: str = "slicer"
    n_trials: int = 30
    preset: str = "brain-mri"
    device: str | None = None
    seed: int | None = None
    level_spacings: Sequence[float] | None = None
    iterations: Sequence[int] | None = None
    affine: bool = True
    max_folding: float | None = None
    labels: Sequence[int] | None = None

    def arguments(self) -> list[str]:
        args = ["-m", "svreg_core.cli", "tune", str(self.validation), "--storage", str(self.storage),
                "--study-name", self.study_name, "--n-trials", str(int(self.n_trials)), "--preset", str(self.preset)]
        if self.device:
            args += ["--device", self.device]
        if self.seed is not None:
            args += ["--seed", str(int(self.seed))]
        if self.level_spacings:
            args += ["--level-spacings", *[str(float(s)) for s in self.level_spacings]]
        if self.iterations:
            args += ["--iterations", *[str(int(n)) for n in self.iterations]]
        if not self.affine:
            args.append("--no-affine")
        if self.max_folding is not None:
            args += ["--max-folding", str(float(self.max_folding))]
        if self.labels:
            args += ["--labels", *[str(int(v)) for v in self.labels]]
        args += ["--progress", "json"]
        return args


def start_tuning(request: TuneRequest, **kwargs: Any) -> runner.ChildProcess:
    """Start ``svreg tune`` in the background; ``kwargs`` go to :class:`~.runner.ChildProcess`."""
    Path(request.storage).parent.mkdir(parents=True, exist_ok=True)
    return runner.ChildProcess(request.arguments(), **kwargs).start()


def stop_tuning(process: runner.ChildProcess, grace: float = STOP_GRACE_S, wait: bool = False) -> None:
    """Stop a tuning process: SIGTERM first (the running trial is recorded as failed, finished trials are
    kept and the study stays resumable), SIGKILL after ``grace`` seconds. Without ``wait`` it returns at
    once and the caller keeps calling ``process.poll()``.
    """
    if wait:
        process.cancel(grace)
    else:
        process.request_stop(grace)


def apply_best(storage: Path, study_name: str, path: Path, *, python: str | None = None,
               env: dict[str, str] | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Write the study's best parameters as a preset file; returns the engine's ``apply_best`` event.

    Raises ``RuntimeError`` with the engine's plain message when it fails (e.g. no complete trial yet).
    """
    args = ["-m", "svreg_core.cli", "tune", "--storage", str(storage), "--study-name", study_name,
            "--apply-best", str(path), "--progress", "json"]
    child = runner.ChildProcess(args, python=python, env=env).start()
    result = child.wait(timeout=timeout)
    if not result.succeeded:
        raise RuntimeError(result.message)
    for event in reversed(child.events):
        if event.get("event") == "apply_best":
            return event
    return {"event": "apply_best", "message": str(path)}


# --------------------------------------------------------------------------------------------------
# reading a study from its SQLite file


@dataclass
class TrialRow:
    """One trial as the panel shows it."""

    number: int
    state: str
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    folding: float | None = None


@dataclass
class StudySnapshot:
    """The trials of a study and its best complete trial."""

    name: str
    direction: str
    trials: list[TrialRow]

    @property
    def best(self) -> TrialRow | None:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        if not done:
            return None
        pick = min if self.direction == "MINIMIZE" else max
        return pick(done, key=lambda t: t.value)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def _param_value(raw: float, distribution_json: str) -> Any:
    try:
        dist = json.loads(distribution_json)
    except (TypeError, ValueError):
        return raw
    name = dist.get("name", "")
    attrs = dist.get("attributes", {})
    if "Categorical" in name:
        choices = attrs.get("choices", [])
        index = int(raw)
        return choices[index] if 0 <= index < len(choices) else raw
    if "Int" in name:
        return int(round(raw))
    return float(raw)


def read_study(db_path: str | Path, study_name: str) -> StudySnapshot | None:
    """Read a study from an Optuna SQLite file (read-only); ``None`` when the file or study is absent."""
    path = Path(db_path)
    if not path.is_file():
        return None
    uri = f"file:{path.resolve().as_posix()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=2.0)
    except sqlite3.Error:
        return None
    try:
        row = con.execute("SELECT study_id FROM studies WHERE study_name = ?", (study_name,)).fetchone()
        if row is None:
            return None
        study_id = row[0]
        d = con.execute("SELECT direction FROM study_directions WHERE study_id = ? ORDER BY objective",
                        (study_id,)).fetchone()
        direction = str(d[0]) if d else "MAXIMIZE"
        trials: dict[int, TrialRow] = {}
        for trial_id, number, state in con.execute(
                "SELECT trial_id, number, state FROM trials WHERE study_id = ? ORDER BY number", (study_id,)):
            trials[trial_id] = TrialRow(int(number), str(state))
        if not trials:
            return StudySnapshot(study_name, direction, [])
        marks = ",".join("?" * len(trials))
        ids = tuple(trials)
        for trial_id, value in con.execute(
                f"SELECT trial_id, value FROM trial_values WHERE objective = 0 AND trial_id IN ({marks})", ids):
            if value is not None and math.isfinite(value):
                trials[trial_id].value = float(value)
        for trial_id, name, raw, dist in con.execute(
                f"SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                f"WHERE trial_id IN ({marks})", ids):
            trials[trial_id].params[name] = _param_value(raw, dist)
        for trial_id, value_json in con.execute(
                f"SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'folding_percent' "
                f"AND trial_id IN ({marks})", ids):
            try:
                folding = json.loads(value_json)
                trials[trial_id].folding = float(folding) if folding is not None else None
            except (TypeError, ValueError):
                pass
        # Optuna also keeps the value of pruned trials as their last intermediate report
        for trial_id, step, value in con.execute(
                f"SELECT trial_id, step, intermediate_value FROM trial_intermediate_values "
                f"WHERE trial_id IN ({marks}) ORDER BY step", ids):
            t = trials[trial_id]
            if t.state == "PRUNED" and value is not None and math.isfinite(value):
                t.value = float(value)
        return StudySnapshot(study_name, direction, sorted(trials.values(), key=lambda t: t.number))
    except sqlite3.Error:
        return None  # the tuner may be creating the schema right now; the next poll will read it
    finally:
        con.close()


def format_params(params: dict[str, Any]) -> str:
    """``alpha_prime=0.12, lambda_max=3.1`` for a table cell."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


# --------------------------------------------------------------------------------------------------
# building a validation set from the scene


def export_pair(folder: str | Path, name: str, fixed, moving, fixed_labels, moving_labels) -> Path:
    """Write four volume nodes as one validation pair ``folder/name/{fixed,moving,...}.nii.gz``.

    The folder layout is the one ``svreg tune`` reads (one sub-folder per pair).
    """
    if fixed_labels is None or moving_labels is None:
        raise geometry.GeometryError("a tuning pair needs a fixed and a moving label map.")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "pair"
    target = Path(folder) / safe
    target.mkdir(parents=True, exist_ok=True)
    for node, stem, what in ((fixed, "fixed", "fixed volume"), (moving, "moving", "moving volume"),
                             (fixed_labels, "fixed_labels", "fixed label map"),
                             (moving_labels, "moving_labels", "moving label map")):
        geometry.export_volume(node, target / f"{stem}.nii.gz", what=what)
    return target
