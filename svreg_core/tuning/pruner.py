"""Median pruning of ``svreg tune`` trials on their value so far (METHOD §5: start-up trials, warm-up, interval).

Every step reports the trial's value *so far* (:class:`~svreg_core.tuning.objective.StepReporter`: the running
mean over the pairs done, or the best epoch so far). Optuna's ``MedianPruner`` compares a trial's *best*
intermediate value over all its steps with the others' median at the current step, which suits learning curves
but not a running mean: a trial whose first pair scored high would never be pruned however badly its later
pairs went. :class:`StepMedianPruner` compares the value at the current step with the median of the completed
trials' values at that same step.
"""
from __future__ import annotations

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class StepMedianPruner(BasePruner):
    """Prune a trial whose value at its latest step is worse than the median of the completed trials' values at
    that step.

    Args:
        n_startup_trials: completed trials needed before any trial is pruned.
        n_warmup_steps: steps (0-based) before which a trial is never pruned: step ``n_warmup_steps`` is the
            first checked.
        interval_steps: checks at steps ``n_warmup_steps + k * interval_steps``.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 1, interval_steps: int = 1) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0 or interval_steps < 1:
            raise ValueError("n_startup_trials and n_warmup_steps must not be negative, interval_steps at least 1")
        self.n_startup_trials, self.n_warmup_steps, self.interval_steps = (n_startup_trials, n_warmup_steps,
                                                                           interval_steps)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or (step - self.n_warmup_steps) % self.interval_steps:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.n_startup_trials:
            return False
        others = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        if not others:
            return False
        median, value = float(np.median(others)), trial.intermediate_values[step]
        return value < median if study.direction == StudyDirection.MAXIMIZE else value > median


def make_pruner(enabled: bool, n_startup_trials: int, n_warmup_steps: int, interval_steps: int) -> BasePruner:
    """The pruner of a study: :class:`StepMedianPruner`, or Optuna's ``NopPruner`` when pruning is off."""
    if not enabled:
        return optuna.pruners.NopPruner()
    return StepMedianPruner(n_startup_trials, n_warmup_steps, interval_steps)
