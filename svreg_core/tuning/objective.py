"""The tuning objective, independent of how one configuration is evaluated.

A trial is evaluated in *steps*: one validation pair per step for pairwise optimisation
(:class:`PairwiseDiceEvaluator`); one epoch (train, then validate) per step for a learned model later.
An evaluator yields one :class:`StepOutcome` per step; :class:`Objective` reports the running aggregate
to Optuna after each step (``trial.report``), prunes when the pruner says so or when a step's folding
exceeds ``max_folding``, stores per-step numbers as trial user attributes, and returns the aggregate.
Storage, progress and reporting only see these attributes, so a training evaluator plugs in unchanged.

Trial user attributes written here: ``step_labels``, ``step_values``, ``step_folding``,
``folding_percent`` (mean over evaluated steps), ``folding_percent_max``, ``steps_done``,
``pruned_reason`` (pruned trials), ``error`` / ``error_step`` (failed trials, set by the runner).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Protocol, Sequence, TypeVar

import optuna

from svreg_core.errors import SvregError
from svreg_core.tuning.pairs import ValidationPair, load_pair

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


@dataclass
class StepOutcome:
    """Result of one evaluation step.

    Attributes:
        value: the objective metric of the step (mean Dice of one pair; the validation Dice of an epoch).
        folding_percent: share of voxels with ``det J <= 0`` (percent), if measured.
        metrics: extra numbers stored with the trial (per-label Dice, seconds...).
    """

    value: float
    folding_percent: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class StepEvaluator(Protocol[C_contra]):
    """Evaluates one configuration step by step.

    ``run`` is a generator: the objective stops iterating (and closes it) when the trial is pruned, so
    per-trial resources belong in a ``try/finally`` inside it.
    """

    #: objective name stored with the study (e.g. ``"pairwise-dice"``).
    name: str

    def step_labels(self) -> list[str]:
        """One label per step (pair names, ``"epoch 1"``...); its length is the number of steps."""
        ...

    def run(self, config: C_contra) -> Iterator[StepOutcome]:
        """Yield one outcome per step."""
        ...


class ConfigSpace(Protocol[C]):
    """Turns an Optuna trial into the configuration an evaluator consumes."""

    def suggest(self, trial: optuna.Trial) -> C:
        ...


class StepFailed(RuntimeError):
    """A step raised: ``message`` names the step; the original exception is ``__cause__``."""

    def __init__(self, step: int, label: str, error: BaseException) -> None:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        kind = "" if isinstance(error, SvregError) else f"{error.__class__.__name__}: "
        message = f"{kind}{detail}" or "failed"
        super().__init__(message if label in message else f"{label}: {message}")
        self.step = step
        self.label = label


#: aggregate of the step values so far -> the value reported / returned.
AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda v: float(sum(v) / len(v)),
    "max": lambda v: float(max(v)),
    "last": lambda v: float(v[-1]),
}


class ObjectiveListener(Protocol):
    """Observer of a trial's progress (the runner forwards these to the progress reporter)."""

    def trial_started(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        ...

    def step_finished(self, trial: optuna.Trial, step: int, label: str, outcome: StepOutcome,
                      running_value: float) -> None:
        ...


class Objective(Generic[C]):
    """Optuna objective: suggest a configuration, evaluate it step by step, aggregate.

    Args:
        space: turns the trial into a configuration (:class:`~svreg_core.tuning.search_space.SearchSpace`).
        evaluator: a :class:`StepEvaluator` for that configuration.
        aggregate: ``"mean"`` over steps (pairs), ``"max"`` (best epoch of a training) or ``"last"``.
        max_folding: prune a trial as soon as one step's folding percent exceeds this.
        listener: optional :class:`ObjectiveListener`.
        prune_last_step: also ask the pruner after the last step (default: no, the value is final).
    """

    def __init__(self, space: ConfigSpace[C], evaluator: StepEvaluator[C], *, aggregate: str = "mean",
                 max_folding: float | None = None, listener: ObjectiveListener | None = None,
                 prune_last_step: bool = False) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}")
        self.space = space
        self.evaluator = evaluator
        self.aggregate = aggregate
        self.max_folding = max_folding
        self.listener = listener
        self.prune_last_step = prune_last_step

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.space.suggest(trial)
        if self.listener is not None:
            self.listener.trial_started(trial, dict(trial.params))
        labels = self.evaluator.step_labels()
        agg = AGGREGATES[self.aggregate]
        values: list[float] = []
        folding: list[float | None] = []
        trial.set_user_attr("step_labels", labels)
        steps = self.evaluator.run(config)
        try:
            step = 0
            while True:
                label = labels[step] if step < len(labels) else f"step {step}"
                try:
                    outcome = next(steps)
                except StopIteration:
                    break
                except Exception as exc:
                    trial.set_user_attr("error_step", label)
                    raise StepFailed(step, label, exc) from exc
                if not math.isfinite(outcome.value):
                    trial.set_user_attr("error_step", label)
                    raise StepFailed(step, label, ValueError(f"the objective value is {outcome.value}"))
                values.append(float(outcome.value))
                folding.append(None if outcome.folding_percent is None else float(outcome.folding_percent))
                running = agg(values)
                self._record(trial, values, folding, outcome)
                trial.report(running, step)
                if self.listener is not None:
                    self.listener.step_finished(trial, step, label, outcome, running)
                f = outcome.folding_percent
                if self.max_folding is not None and f is not None and f > self.max_folding:
                    reason = f"folding {f:.4g}% > {self.max_folding:g}% on {label}"
                    trial.set_user_attr("pruned_reason", reason)
                    raise optuna.TrialPruned(reason)
                last = step == len(labels) - 1
                if (self.prune_last_step or not last) and trial.should_prune():
                    reason = f"below the median of other trials after {label}"
                    trial.set_user_attr("pruned_reason", reason)
                    raise optuna.TrialPruned(reason)
                step += 1
        finally:
            steps.close()
        if not values:
            raise RuntimeError("the evaluator produced no step")
        return agg(values)

    @staticmethod
    def _record(trial: optuna.Trial, values: list[float], folding: list[float | None],
                outcome: StepOutcome) -> None:
        known = [f for f in folding if f is not None]
        trial.set_user_attr("step_values", values)
        trial.set_user_attr("steps_done", len(values))
        trial.set_user_attr("step_folding", folding)
        if known:
            trial.set_user_attr("folding_percent", sum(known) / len(known))
            trial.set_user_attr("folding_percent_max", max(known))
        for key, value in outcome.metrics.items():
            prev = trial.user_attrs.get(f"step_{key}", [])
            trial.set_user_attr(f"step_{key}", [*prev, value])


class PairwiseDiceEvaluator:
    """Registers every validation pair with the trial's parameters; one step per pair.

    Step value: the mean Dice over labels of the warped moving labels vs the fixed labels. Folding:
    :func:`svreg_core.metrics.folding_percent` of the Jacobian determinant of the displacement.

    Args:
        pairs: the validation set (files are read at every trial, so a repaired file is picked up).
        labels: labels to score (default: every non-zero label present in both maps).
        label_mode: ``"linear"`` (one-hot trilinear then argmax) or ``"nearest"``.
        device: overrides the parameters' device (``None`` keeps it).
    """

    name = "pairwise-dice"

    def __init__(self, pairs: Sequence[ValidationPair], *, labels: Sequence[int] | None = None,
                 label_mode: str = "linear", device: str | None = None) -> None:
        self.pairs = list(pairs)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.label_mode = label_mode
        self.device = device

    def step_labels(self) -> list[str]:
        return [p.name for p in self.pairs]

    def run(self, config: Any) -> Iterator[StepOutcome]:
        from svreg_core.metrics import dice, folding_percent, jacobian_determinant
        from svreg_core.registration import register

        params = config if self.device is None else config.replace(device=self.device)
        for pair in self.pairs:
            t0 = time.perf_counter()
            data = load_pair(pair)
            result = register(data.fixed, data.moving, params)
            warped = result.warp_image(data.moving_labels, labels=True, label_mode=self.label_mode)
            scores = dice(data.fixed_labels.data, warped.data, labels=self.labels)
            if not scores:
                raise ValueError("no label is present in both the fixed and the warped moving labels")
            det = jacobian_determinant(result.displacement, data.fixed.affine)
            fold = float(folding_percent(det))
            value = float(sum(scores.values()) / len(scores))
            yield StepOutcome(value, fold, {"seconds": time.perf_counter() - t0})
