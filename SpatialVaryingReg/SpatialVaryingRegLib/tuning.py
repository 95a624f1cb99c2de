"""Background tuning from the settings panel: the ``svreg tune`` child process and its study.

``svreg tune`` (``python -m svreg_core.cli tune``) runs Optuna trials on a validation set of pairs with
label maps (objective ``dice``: mean Dice, maximised) or corresponding landmarks (``tre``: mean target
registration error in mm, minimised), prints one JSON object per line (``start``, ``trial_start``,
``step``, ``trial``, ``end``, ``report``, ``apply_best``) and stores the study in an SQLite file: running
the same command again resumes it. With ``--report DIR`` it keeps ``DIR/summary.json`` up to date after
every trial. Here:

* :class:`TuneRequest` builds the command; :func:`start_tuning` starts it as a :class:`~.runner.ChildProcess`.
  *Stop* sends SIGTERM (the engine records the running trial as failed and keeps the finished ones)
  and kills the process tree after a grace period.
* :func:`read_study` reads the study's ``summary.json`` (in :func:`report_folder`, written by
  ``svreg tune --report``), never Optuna's database tables: the panel shows a study even when no
  tuning process is running (after a restart, or one started from a terminal with the same
  ``--report``) and never needs Optuna in the Slicer process.
* :func:`apply_best` writes the best trial as a preset file (``svreg tune --apply-best``) that the
  Register button uses through the "custom file" preset, or, for a learned model's code search
  (``svreg tune --model``: inference only), a codes file (:func:`best_codes` reads it).
* :func:`export_pair` adds the volumes (and label maps or fiducial lists) of the scene to a validation folder.
"""
from __future__ import annotations

import itertools
import json
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import geometry, landmarks, runner

#: Grace period between SIGTERM and SIGKILL when stopping a tuning run (the running trial is recorded).
STOP_GRACE_S = 15.0

#: ``svreg tune --objective`` values and what each scores (the panel's column and best-trial label).
OBJECTIVES: dict[str, str] = {"dice": "mean Dice", "tre": "mean TRE (mm)"}


@dataclass
class TuneRequest:
    """Arguments of ``svreg tune`` (``None`` = the engine's default).

    With ``model`` (a code search) ``iterations`` are not passed (``refine`` sets the refinement's steps per level)
    and ``level_spacings`` only with ``refine`` steps (the network alone has no pyramid), as ``svreg tune`` wants.
    """

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
    objective: str = "dice"
    model: str | None = None  # a learned model (engine --model argument): search its codes instead
    refine: int = 0

    def arguments(self) -> list[str]:
        args = ["-m", "svreg_core.cli", "tune", str(self.validation), "--storage", str(self.storage),
                "--study-name", self.study_name, "--n-trials", str(int(self.n_trials)), "--preset", str(self.preset),
                "--report", str(report_folder(self.storage, self.study_name))]
        if self.device:
            args += ["--device", self.device]
        if self.seed is not None:
            args += ["--seed", str(int(self.seed))]
        if self.level_spacings and (not self.model or self.refine):
            args += ["--level-spacings", *[str(float(s)) for s in self.level_spacings]]
        if self.iterations and not self.model:
            args += ["--iterations", *[str(int(n)) for n in self.iterations]]
        if not self.affine:
            args.append("--no-affine")
        if self.max_folding is not None:
            args += ["--max-folding", str(float(self.max_folding))]
        if self.labels:
            args += ["--labels", *[str(int(v)) for v in self.labels]]
        if self.objective != "dice":
            args += ["--objective", self.objective]
        if self.model:
            args += ["--model", str(self.model)] + (["--refine", str(int(self.refine))] if self.refine else [])
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


@dataclass(frozen=True)
class TunedCodes:
    """A code search's best trial, as ``apply_best`` writes it: the model searched (the engine's ``--model``
    argument: a shipped model's name or a checkpoint folder), its codes and the refine steps they were scored with."""

    model: str
    alpha_prime: float
    lambda_max: float
    refine: int


def best_codes(path: str | Path) -> TunedCodes | None:
    """What a codes file that ``apply_best`` wrote for a code search holds; ``None`` for a preset file."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or "model" not in doc:
        return None
    return TunedCodes(str(doc["model"]), float(doc["alpha_prime"]), float(doc["lambda_max"]),
                      int(doc.get("refine") or 0))


# --------------------------------------------------------------------------------------------------
# reading a study from its summary.json


def report_folder(storage: str | Path, study_name: str) -> Path:
    """Where the panel's ``svreg tune --report`` writes: ``<storage folder>/<study>-report``."""
    return Path(storage).parent / f"{study_name}-report"


@dataclass
class TrialRow:
    """One trial as the panel shows it."""

    number: int
    state: str
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    folding: float | None = None
    error: str | None = None


@dataclass
class StudySnapshot:
    """The trials of a study and its best complete trial (from ``summary.json``)."""

    name: str
    trials: list[TrialRow]
    best: TrialRow | None = None
    value_name: str = OBJECTIVES["dice"]  # what a trial's value is (e.g. "mean TRE (mm)")

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def _row(doc: dict[str, Any]) -> TrialRow:
    return TrialRow(int(doc["number"]), str(doc["state"]), doc.get("value"), dict(doc.get("params") or {}),
                    doc.get("folding_percent"), doc.get("error"))


def read_summary(path: str | Path) -> StudySnapshot | None:
    """A study from a ``summary.json`` of ``svreg tune --report``; ``None`` when absent or unreadable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        trials = [_row(t) for t in doc["trials"]]
        return StudySnapshot(str(doc["study"]), trials, None if doc.get("best") is None else _row(doc["best"]),
                             str(doc.get("value_name") or OBJECTIVES["dice"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet (the tuner replaces the file atomically after every trial)


def read_study(storage: str | Path, study_name: str) -> StudySnapshot | None:
    """The study as the tuner last summarised it (:func:`report_folder`), or ``None``."""
    return read_summary(report_folder(storage, study_name) / "summary.json")


def format_params(params: dict[str, Any]) -> str:
    """``alpha_prime=0.12, lambda_max=3.1`` for a table cell."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


# --------------------------------------------------------------------------------------------------
# building a validation set from the scene


def pair_folder(folder: str | Path, name: str) -> Path:
    """Where :func:`export_pair` writes the pair ``name``: ``folder/<name>``, other characters than letters, digits,
    ``-``, ``_`` and ``.`` replaced by ``_``."""
    return Path(folder) / ("".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "pair")


def export_pair(folder: str | Path, name: str, fixed, moving, fixed_labels=None, moving_labels=None,
                fixed_fiducials=None, moving_fiducials=None, *, replace: bool = False) -> Path:
    """Write scene nodes as one validation pair ``folder/name/`` in the layout ``svreg tune`` reads (one
    sub-folder per pair): ``fixed.nii.gz``, ``moving.nii.gz``, the label maps ``fixed_labels.nii.gz`` /
    ``moving_labels.nii.gz`` and the corresponding fiducial lists ``fixed_landmarks.csv`` /
    ``moving_landmarks.csv`` (x, y, z in world RAS mm, parent transforms applied; point n of one list
    matches point n of the other). A pair needs both label maps (Dice objective) or both fiducial lists
    (TRE objective), or both kinds. Label maps may be Segmentations. The nodes are written as a registration
    would send them (:meth:`~SpatialVaryingRegLib.logic.RegistrationJob.export_node`): a moving side already
    registered by this module is written as it was before, not through the result. Everything is checked
    before any file is written, and the pair folder appears complete or not at all. A pair already there under
    that name (:func:`pair_folder`; e.g. another subject's, whose volumes are named alike) is replaced only with
    ``replace``; otherwise this pair gets the next free name (``name-2``, ``name-3``...). Returns the pair folder.
    """
    has_labels = fixed_labels is not None and moving_labels is not None
    has_points = fixed_fiducials is not None and moving_fiducials is not None
    if not has_labels and not has_points:
        raise geometry.GeometryError("a tuning pair needs a fixed and a moving label map (Dice objective) or "
                                     "a fixed and a moving fiducial list (landmark objective).")
    problem = landmarks.pair_count_problem(fixed_fiducials, moving_fiducials) if has_points else ""
    if problem:
        raise geometry.GeometryError(f"the fiducial lists cannot be paired: {problem}.")
    from . import logic  # the registration's own checks and export (logic does not import this module)

    job = logic.RegistrationJob(fixed, moving, fixed_labels=fixed_labels if has_labels else None,
                                moving_labels=moving_labels if has_labels else None)
    try:
        job.validate()  # every volume's geometry, grid and transforms, before anything is written
        # the lists where the user sees them, the moving one without a previous result of this module
        points = (landmarks.world_points(fixed_fiducials),
                  landmarks.points_through(moving_fiducials, logic.moving_base_to_world(moving_fiducials))) \
            if has_points else None
    except logic.RegistrationError as exc:
        raise geometry.GeometryError(str(exc)) from None
    target = first = pair_folder(folder, name)
    for n in itertools.count(2):
        if replace or not target.exists():
            break
        target = first.with_name(f"{first.name}-{n}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    staging = Path(folder) / f".{target.name}-{secrets.token_hex(4)}"  # hidden: svreg tune skips it
    staging.mkdir()  # with the permissions the umask gives, as the files in it
    try:
        volumes = [(fixed, "fixed", "fixed volume"), (moving, "moving", "moving volume")]
        if has_labels:
            volumes += [(fixed_labels, "fixed_labels", "fixed label map"),
                        (moving_labels, "moving_labels", "moving label map")]
        for node, stem, what in volumes:
            job.export_node(node, staging / f"{stem}.nii.gz", what)
        if points is not None:
            _write_points(points[0], staging / "fixed_landmarks.csv")
            _write_points(points[1], staging / "moving_landmarks.csv")
        if target.exists():  # replace: the same pair added again
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_points(points: np.ndarray, path: Path) -> None:
    """``(N, 3)`` RAS mm points as a CSV with columns x, y, z (what ``svreg`` reads as RAS)."""
    rows = "".join(f"{x!r},{y!r},{z!r}\n" for x, y, z in np.asarray(points, dtype=np.float64).tolist())
    path.write_text("x,y,z\n" + rows, encoding="utf-8")
