"""What a trial evaluates, step by step, and how each step reaches Optuna.

An :class:`Objective` scores one trial's settings in steps, calling :meth:`StepReporter.report` after each:
a validation pair (:class:`PairwiseDice`, maximised; :class:`PairwiseTRE`, minimised) or a training epoch and
its validation Dice (:class:`~svreg_core.tuning.training.TrainingDice`: pruning at epoch granularity). The
reporter records the step as trial user attributes, calls ``trial.report`` (the value so far) and raises
:class:`optuna.TrialPruned` when ``trial.should_prune()`` says so (never after the last step) or a step folds
more than ``max_folding`` %.

Trial user attributes: ``step_labels``, ``step_values``, ``step_folding``, ``folding_percent`` (mean),
``folding_percent_max``, ``pruned_reason``, ``error`` (failed trials: the step and the message),
``interrupted`` (``True`` for a trial stopped by Ctrl-C / SIGTERM), ``worker`` (``host:pid`` of the process running
it) and ``worker_pid_namespace`` (its Linux PID namespace).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import optuna

from svreg_core.errors import InputError, SvregError, shortened
from svreg_core.interrupts import interruptible
from svreg_core.tuning.pairs import LoadedPair, ValidationPair, check_pairs, load_pair
from svreg_core.tuning.study import PID_NAMESPACE_ATTR, WORKER_ATTR, pid_namespace, this_worker

if TYPE_CHECKING:  # pragma: no cover
    from svreg_core.tuning.progress import TuneProgress
    from svreg_core.tuning.study import Direction


class StepReporter:
    """Hands one trial's step values to Optuna. ``aggregate`` ``"mean"`` (pairs): the trial's value is the
    mean of its steps; ``"max"`` (epochs): the value is the best step. Each step reports the value so far (the
    running mean or the best epoch so far), which :class:`~svreg_core.tuning.pruner.StepMedianPruner` compares
    with the other trials' at the same step; the step's own value is kept in ``step_values``."""

    def __init__(self, trial: optuna.Trial, labels: Sequence[str], aggregate: str,
                 max_folding: float | None = None, progress: TuneProgress | None = None) -> None:
        self.trial, self.labels, self.aggregate = trial, list(labels), aggregate
        self.max_folding, self.progress = max_folding, progress
        self.values: list[float] = []
        self.folding: list[float | None] = []
        trial.set_user_attr("step_labels", self.labels)
        trial.set_user_attr("step_values", [])

    @property
    def label(self) -> str:
        """Label of the step now running."""
        n = len(self.values)
        return self.labels[n] if n < len(self.labels) else f"step {n}"

    @property
    def value(self) -> float:
        """The trial's value so far."""
        if not self.values:
            raise RuntimeError("the objective reported no step")
        return max(self.values) if self.aggregate == "max" else sum(self.values) / len(self.values)

    def report(self, value: float, folding: float | None = None) -> None:
        """Record the value (and folding percent) of the next step; may raise :class:`optuna.TrialPruned`."""
        label, step = self.label, len(self.values)
        if not math.isfinite(value):
            raise ValueError(f"the objective value is {value}")
        self.values.append(float(value))
        self.folding.append(None if folding is None else float(folding))
        known = [f for f in self.folding if f is not None]
        attrs: dict[str, Any] = {"step_values": self.values, "step_folding": self.folding}
        if known:
            attrs.update(folding_percent=sum(known) / len(known), folding_percent_max=max(known))
        for key, attr in attrs.items():
            self.trial.set_user_attr(key, attr)
        self.trial.report(self.value, step)
        if self.progress is not None:
            self.progress.step_finished(self.trial, step, label, float(value), self.value)
        reason = None
        if self.max_folding is not None and folding is not None and folding > self.max_folding:
            reason = f"folding {folding:.4g}% > {self.max_folding:g}% on {label}"
        elif step < len(self.labels) - 1 and self.trial.should_prune():
            reason = f"below the median of other trials after {label}"
        if reason:
            self.trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)


class Objective(Protocol):
    """Scores one trial's settings step by step. ``name`` is stored with the study (workers must agree);
    ``aggregate``: ``"mean"`` of the steps (pairs) or ``"max"`` (best epoch); ``value_name`` for people;
    ``direction``: ``"maximize"`` or ``"minimize"`` (the study's Optuna direction)."""

    name: str
    aggregate: str
    value_name: str
    direction: Direction

    def step_labels(self) -> list[str]:
        """One label per step (pair names, ``"epoch 1"``...)."""

    def evaluate(self, settings: Any, steps: StepReporter) -> None:
        """Run ``settings`` (from the search space's ``suggest``), calling ``steps.report`` after every step."""


def error_message(exc: BaseException, label: str) -> str:
    """One line naming the failing step (the type name too unless it is a user-facing message)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted (the tuning process was stopped)"
    elif not isinstance(exc, SvregError):
        text = f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
    return (text if label in text else f"{label}: {text}")[:1000]


def trial_function(space: Any, objective: Objective, *, max_folding: float | None = None,
                   progress: TuneProgress | None = None) -> Callable[[optuna.Trial], float]:
    """The function ``Study.optimize`` calls: suggest (``space.suggest(trial)``), evaluate, aggregate. A
    failing trial gets an ``error`` user attribute before Optuna records it as FAIL (``catch`` goes on)."""
    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr(PID_NAMESPACE_ATTR, pid_namespace())  # first: a trial with a worker has it
        trial.set_user_attr(WORKER_ATTR, this_worker())
        steps = StepReporter(trial, objective.step_labels(), objective.aggregate, max_folding, progress)
        try:
            try:  # inside the outer try: a failure here is the trial's error, not a lost worker
                settings = space.suggest(trial)
            finally:
                if progress is not None:  # announced with its values stored (a worker killed from here on)
                    progress.trial_started(trial)
            with interruptible():  # a stop request raises here; Optuna then records this trial as FAIL
                objective.evaluate(settings, steps)
            return steps.value
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            trial.set_user_attr("error", error_message(exc, steps.label))
            if isinstance(exc, KeyboardInterrupt):  # stopped from outside: the base preset is queued again
                trial.set_user_attr("interrupted", True)
            raise

    return run


class PairObjective:
    """One step per validation pair: register it (:meth:`register`; a learned model's code search replaces
    it, :class:`~svreg_core.tuning.codes.ModelCodes`), score it (:meth:`score`, the subclass's measure) and
    report the score with the folding (percent of voxels with ``det J <= 0``). Files are read at every
    trial (not kept in memory); ``svreg tune`` reads them once before the first (:meth:`read_pairs`)."""

    def __init__(self, pairs: Sequence[ValidationPair]) -> None:
        self.pairs = list(pairs)

    def step_labels(self) -> list[str]:
        return [p.name for p in self.pairs]

    def read_pairs(self) -> dict[str, str]:
        """Before any trial: every pair read once and checked (:func:`~svreg_core.tuning.pairs.check_pairs`;
        landmarks that do not correspond are refused as they are read); the pairs' fingerprints."""
        return check_pairs(self.pairs)

    def register(self, data: LoadedPair, settings: Any) -> Any:
        """One pair registered with the trial's settings (a :class:`~svreg_core.registration.RegistrationResult`)."""
        from svreg_core.registration import register

        return register(data.fixed, data.moving, settings)

    def score(self, data: LoadedPair, result: Any) -> float:
        """The step value of one registered pair."""
        raise NotImplementedError

    def evaluate(self, settings: Any, steps: StepReporter) -> None:
        from svreg_core.metrics import folding_percent, jacobian_determinant

        for pair in self.pairs:
            data = load_pair(pair)
            result = self.register(data, settings)
            value = self.score(data, result)
            fold = float(folding_percent(jacobian_determinant(result.displacement, data.fixed.affine)))
            steps.report(value, fold)


class PairwiseDice(PairObjective):
    """Registers every validation pair with the trial's parameters; one step per pair.

    Step value: mean Dice over labels of the warped moving labels vs the fixed labels; folding as in
    :class:`PairObjective`. ``labels``: the labels scored (default: every non-zero label in both the fixed and
    the moving map, :func:`~svreg_core.metrics.scored_labels`: a label the warp erases scores 0);
    ``label_mode``: ``"linear"`` (one-hot trilinear, then argmax) or ``"nearest"``.
    """

    name, aggregate, value_name = "pairwise-dice", "mean", "mean Dice"
    direction: Direction = "maximize"

    def __init__(self, pairs: Sequence[ValidationPair], *, labels: Sequence[int] | None = None,
                 label_mode: str = "linear") -> None:
        super().__init__(pairs)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.label_mode = label_mode

    def read_pairs(self) -> dict[str, str]:
        """:meth:`PairObjective.read_pairs`, refusing a pair with nothing to score (:meth:`scorable_labels`) and
        ``--labels`` values that no pair's label maps hold (a typo Dice would skip without a word)."""
        held: set[int] = set()
        fingerprints = check_pairs(self.pairs, lambda data: held.update(self.scorable_labels(data)))
        absent = [v for v in dict.fromkeys(self.labels or ()) if v not in held]
        if absent:
            one = len(absent) == 1
            raise InputError(f"--labels {' '.join(map(str, absent))}: no validation pair's label maps hold "
                             f"{'this label' if one else 'these labels'}, so Dice would never score "
                             f"{'it' if one else 'them'}.")
        return fingerprints

    def scorable_labels(self, data: LoadedPair) -> list[int]:
        """The labels a trial scores on ``data`` that one of its label maps holds (Dice skips the others);
        :class:`InputError` when there are none: every trial would fail on this pair."""
        from svreg_core.metrics import scored_labels
        from svreg_core.metrics.overlap import present_labels

        assert data.fixed_labels is not None and data.moving_labels is not None  # discover_pairs' default needs
        fixed, moving = present_labels(data.fixed_labels.data), present_labels(data.moving_labels.data)
        held = np.union1d(fixed, moving)
        labels = [v for v in scored_labels(data.fixed_labels.data, data.moving_labels.data, self.labels) if v in held]
        if not labels:
            what = (f"neither label map holds any of --labels {' '.join(map(str, self.labels))}" if self.labels else
                    "its fixed and moving label maps share no label other than 0")
            raise InputError(f"pair {data.name!r}: {what} (fixed: {shortened(fixed, 12)}; moving: "
                             f"{shortened(moving, 12)}), so there is nothing for Dice to score.")
        return labels

    def score(self, data: LoadedPair, result: Any) -> float:
        from svreg_core.metrics import dice, scored_labels

        assert data.fixed_labels is not None and data.moving_labels is not None  # discover_pairs' default needs
        warped = result.warp_image(data.moving_labels, labels=True, label_mode=self.label_mode)
        labels = scored_labels(data.fixed_labels.data, data.moving_labels.data, self.labels)
        scores = dice(data.fixed_labels.data, warped.data, labels=labels)
        if not scores:
            raise ValueError("no label is present in both the fixed and the warped moving labels")
        return float(sum(scores.values()) / len(scores))


class PairwiseTRE(PairObjective):
    """Registers every validation pair with the trial's parameters and scores its landmarks; one step per pair.

    Step value: mean target registration error (mm, :func:`~svreg_core.metrics.landmarks.tre`) of the fixed
    landmarks mapped through the registration against their moving landmarks, minimised; folding as in
    :class:`PairObjective`. Needs pairs with landmark files (``discover_pairs(..., needs="landmarks")``).
    """

    name, aggregate, value_name = "pairwise-tre", "mean", "mean TRE (mm)"
    direction: Direction = "minimize"

    def read_pairs(self) -> dict[str, str]:
        """:meth:`PairObjective.read_pairs`, refusing a pair none of whose fixed landmarks lies in its fixed image
        (:meth:`landmarks_outside`) and warning about the landmarks outside the others."""
        import warnings

        outside: list[int] = []
        fingerprints = check_pairs(self.pairs, lambda data: outside.append(self.landmarks_outside(data)))
        if sum(outside):
            pairs = sum(n > 0 for n in outside)
            warnings.warn(f"fixed landmarks outside their fixed images: {sum(outside)} (in {pairs} of {len(outside)} "
                          "pairs); the registration maps them by its affine alone there (its field is zero beyond "
                          "the fixed grid), so they add nearly the same error to every trial.", stacklevel=2)
        return fingerprints

    def landmarks_outside(self, data: LoadedPair) -> int:
        """How many of ``data``'s fixed landmarks lie outside its fixed image's field of view; :class:`InputError`
        when all do (a frame mix-up, e.g. LPS points read as RAS: the error would not depend on the trial)."""
        assert data.fixed_landmarks is not None  # needs="landmarks"
        outside = int(np.count_nonzero(~data.fixed.grid.contains(data.fixed_landmarks)))
        if outside == len(data.fixed_landmarks):
            raise InputError(f"pair {data.name!r}: none of its {outside} fixed landmarks lies in the fixed image; are "
                             "they in its space, in RAS mm (a .csv is read as RAS x, y, z; .fcsv and .mrk.json carry "
                             "their own frame)?")
        return outside

    def score(self, data: LoadedPair, result: Any) -> float:
        from svreg_core.metrics.landmarks import tre

        assert data.fixed_landmarks is not None and data.moving_landmarks is not None  # needs="landmarks"
        return float(tre(data.fixed_landmarks, data.moving_landmarks, result.transform_points).mean())
