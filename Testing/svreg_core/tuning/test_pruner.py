"""Median pruning on the value so far: hand-made pair scores through the real reporter and an Optuna study."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from svreg_core.tuning.objective import StepReporter, trial_function
from svreg_core.tuning.pruner import StepMedianPruner, make_pruner
from svreg_core.tuning.study import create_or_join, load_study, make_sampler, quiet_optuna, run_worker

#: Pair scores of each trial, in trial order (the trial's parameter ``k`` picks its row).
SCORES = [(0.95, 0.60, 0.64)] * 5 + [(0.94, 0.30, 0.30), (0.50, 0.90, 0.90), (0.96, 0.30, 0.30)]


class Pairs:
    """Three pairs whose Dice are the row ``k`` of :data:`SCORES` (minimised: 1 - Dice when ``minimize``)."""

    name, aggregate = "pairs", "mean"

    def __init__(self, minimize: bool = False) -> None:
        self.minimize = minimize

    def step_labels(self) -> list[str]:
        return ["pair01", "pair02", "pair03"]

    def evaluate(self, settings: dict[str, int], steps: StepReporter) -> None:
        for value in SCORES[settings["k"]]:
            steps.report(1 - value if self.minimize else value)


class KSpace:
    def suggest(self, trial: optuna.Trial) -> dict[str, int]:
        return {"k": trial.suggest_int("k", 0, len(SCORES) - 1)}


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_high_first_pair_does_not_shield_a_bad_trial(direction: str) -> None:
    """Five trials (0.95, 0.60, 0.64): running means 0.95, 0.775, 0.73. Trial 5 (0.94, 0.30, 0.30) is below
    that median after pair02 (0.62 < 0.775) and is pruned there, though its best step (0.94) is not below any
    median (Optuna's MedianPruner keeps it). Trial 6 (0.50, 0.90, 0.90): 0.70 < 0.775 after pair02, pruned too."""
    storage = optuna.storages.InMemoryStorage()
    study, created = create_or_join(storage, "p", {"objective": "pairs"}, direction=direction, default_params=None)
    for k in range(7):
        study.enqueue_trial({"k": k})
    study = load_study(storage, "p", sampler=make_sampler(0, created), pruner=make_pruner(True, 5, 1, 1))
    with quiet_optuna():
        run_worker(study, trial_function(KSpace(), Pairs(minimize=direction == "minimize")), 7)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED] * 2
    bad = trials[5]
    assert bad.user_attrs["pruned_reason"] == "below the median of other trials after pair02"
    assert bad.user_attrs["step_values"] == pytest.approx([0.94, 0.30] if direction == "maximize" else [0.06, 0.70])
    assert bad.intermediate_values[1] == pytest.approx(0.62 if direction == "maximize" else 0.38)  # the mean so far


def test_startup_warmup_and_interval() -> None:
    """No pruning before ``n_startup_trials`` complete trials, before step ``n_warmup_steps``, nor between
    checks every ``interval_steps``."""
    storage = optuna.storages.InMemoryStorage()

    def state_of_bad_trial(pruner: StepMedianPruner) -> tuple[TrialState, int]:
        name = f"w{len(optuna.get_all_study_names(storage))}"
        study, created = create_or_join(storage, name, {"objective": "pairs"}, default_params=None)
        for k in (0, 0, 7):
            study.enqueue_trial({"k": k})
        study = load_study(storage, name, sampler=make_sampler(0, created), pruner=pruner)
        with quiet_optuna():
            run_worker(study, trial_function(KSpace(), Pairs()), 3)
        bad = study.get_trials()[-1]
        return bad.state, len(bad.user_attrs["step_values"])

    assert state_of_bad_trial(StepMedianPruner(2, 1, 1)) == (TrialState.PRUNED, 2)
    assert state_of_bad_trial(StepMedianPruner(3, 1, 1)) == (TrialState.COMPLETE, 3)  # 2 < 3 start-up trials
    assert state_of_bad_trial(StepMedianPruner(2, 2, 1)) == (TrialState.COMPLETE, 3)  # the last step is never pruned
    assert state_of_bad_trial(StepMedianPruner(2, 0, 1)) == (TrialState.PRUNED, 2)  # above the median at step 0
    assert state_of_bad_trial(StepMedianPruner(2, 0, 2)) == (TrialState.COMPLETE, 3)  # checks at steps 0 and 2 only
    with pytest.raises(ValueError):
        StepMedianPruner(interval_steps=0)
    assert isinstance(make_pruner(False, 5, 1, 1), optuna.pruners.NopPruner)

