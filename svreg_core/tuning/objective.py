"""What a trial evaluates, step by step, and how each step reaches Optuna.

An :class:`Objective` scores one configuration in *steps* and calls :meth:`StepReporter.report` after
each one: a validation pair per step for the pairwise optimiser (:class:`PairwiseDice`); a training
epoch per step (its validation Dice) for a learned model — a training objective is just another
:class:`Objective` whose ``evaluate`` reports from the trainer's per-epoch callback, with pruning at
epoch granularity. The reporter records the step values as trial user attributes, reports the running
aggregate with ``trial.report`` and raises :class:`optuna.TrialPruned` when ``trial.should_prune()``
says so (never after the last step) or when a step folds more than ``max_folding`` percent.

Trial user attributes: ``step_labels``, ``step_values``, ``step_folding``, ``folding_percent`` (mean),
``folding_percent_max``, ``pruned_reason``, ``error`` (failed trials: the step and the message),
``interrupted`` (``True`` for a trial stopped by Ctrl-C / SIGTERM).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import optuna

from svreg_core.errors import SvregError
from svreg_core.interrupts import interruptible
from svreg_core.tuning.pairs import ValidationPair, load_pair

#: Running aggregate of the step values: ``mean`` over pairs, ``max`` (best epoch so far) of a training.
AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda v: float(sum(v) / len(v)),
    "max": lambda v: float(max(v)),
}


class StepListener(Protocol):
    """Observer of trials as they run (the progress reporter)."""

    def trial_started(self, trial: optuna.Trial) -> None: ...

    def step_finished(self, trial: optuna.Trial, step: int, label: str, value: float, running: float) -> None:
        """After step ``step`` (``label``) scored ``value``; ``running``: the trial's value so far."""


class StepReporter:
    """Hands one trial's step values to Optuna (see module docstring)."""

    def __init__(self, trial: optuna.Trial, labels: Sequence[str], aggregate: str,
                 max_folding: float | None = None, listener: StepListener | None = None) -> None:
        self.trial = trial
        self.labels = list(labels)
        self.aggregate = AGGREGATES[aggregate]
        self.max_folding = max_folding
        self.listener = listener
        self.values: list[float] = []
        self.folding: list[float | None] = []
        trial.set_user_attr("step_labels", self.labels)
        trial.set_user_attr("step_values", [])

    @property
    def label(self) -> str:
        """Label of the step now running."""
        n = len(self.values)
        return self.labels[n] if n < len(self.labels) else f"step {n}"

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
        running = self.value
        self.trial.report(running, step)
        if self.listener is not None:
            self.listener.step_finished(self.trial, step, label, float(value), running)
        if self.max_folding is not None and folding is not None and folding > self.max_folding:
            self._prune(f"folding {folding:.4g}% > {self.max_folding:g}% on {label}")
        if step < len(self.labels) - 1 and self.trial.should_prune():
            self._prune(f"below the median of other trials after {label}")

    def _prune(self, reason: str) -> None:
        self.trial.set_user_attr("pruned_reason", reason)
        raise optuna.TrialPruned(reason)

    @property
    def value(self) -> float:
        """The trial's value so far (the aggregate of the reported steps)."""
        if not self.values:
            raise RuntimeError("the objective reported no step")
        return self.aggregate(self.values)


class Objective(Protocol):
    """A way of scoring one configuration, step by step (pairs now, training epochs later).

    Attributes:
        name: stored with the study (``"pairwise-dice"``); workers of one study must agree.
        aggregate: ``"mean"`` of the step values (pairs) or ``"max"`` (best epoch of a training).
    """

    name: str
    aggregate: str

    def step_labels(self) -> list[str]:
        """One label per step (pair names, ``"epoch 1"``...)."""
        ...

    def evaluate(self, config: Any, steps: StepReporter) -> None:
        """Run ``config`` (what the search space's ``suggest`` returned), calling ``steps.report(value,
        folding)`` after every step."""
        ...


def error_message(exc: BaseException, label: str) -> str:
    """One line naming the failing step (the type name too unless it is a user-facing message)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted (the tuning process was stopped)"
    elif not isinstance(exc, SvregError):
        text = f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
    return (text if label in text else f"{label}: {text}")[:1000]


def trial_function(space: Any, objective: Objective, *, max_folding: float | None = None,
                   listener: StepListener | None = None) -> Callable[[optuna.Trial], float]:
    """The function ``Study.optimize`` calls: suggest (``space.suggest(trial)``), evaluate, aggregate.

    A failing trial gets an ``error`` user attribute before the exception reaches Optuna (which records
    the trial as FAIL and, with ``catch``, goes on).
    """
    def run(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        steps = StepReporter(trial, objective.step_labels(), objective.aggregate, max_folding, listener)
        if listener is not None:
            listener.trial_started(trial)
        try:
            with interruptible():  # a stop request raises here; Optuna then records this trial as FAIL
                objective.evaluate(config, steps)
            return steps.value
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            trial.set_user_attr("error", error_message(exc, steps.label))
            if isinstance(exc, KeyboardInterrupt):  # stopped from outside: the base preset is queued again
                trial.set_user_attr("interrupted", True)
            raise

    return run


class PairwiseDice:
    """Registers every validation pair with the trial's parameters; one step per pair.

    Step value: mean Dice over labels of the warped moving labels vs the fixed labels; folding:
    percent of voxels with ``det J <= 0``. Files are read at every trial (a repaired file is picked up).

    Args:
        pairs: the validation set.
        labels: labels to score (default: every non-zero label present in both maps).
        label_mode: ``"linear"`` (one-hot trilinear, then argmax) or ``"nearest"``.
        device: overrides the parameters' device (``None`` keeps it).
    """

    name = "pairwise-dice"
    aggregate = "mean"

    def __init__(self, pairs: Sequence[ValidationPair], *, labels: Sequence[int] | None = None,
                 label_mode: str = "linear", device: str | None = None) -> None:
        self.pairs = list(pairs)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.label_mode = label_mode
        self.device = device

    def step_labels(self) -> list[str]:
        return [p.name for p in self.pairs]

    def evaluate(self, config: Any, steps: StepReporter) -> None:
        from svreg_core.metrics import dice, folding_percent, jacobian_determinant
        from svreg_core.registration import register

        params = config if self.device is None else config.replace(device=self.device)
        for pair in self.pairs:
            data = load_pair(pair)
            result = register(data.fixed, data.moving, params)
            warped = result.warp_image(data.moving_labels, labels=True, label_mode=self.label_mode)
            scores = dice(data.fixed_labels.data, warped.data, labels=self.labels)
            if not scores:
                raise ValueError("no label is present in both the fixed and the warped moving labels")
            fold = float(folding_percent(jacobian_determinant(result.displacement, data.fixed.affine)))
            steps.report(float(sum(scores.values()) / len(scores)), fold)
