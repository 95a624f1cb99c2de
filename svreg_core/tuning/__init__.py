"""Bayesian hyperparameter tuning of the pairwise SPR registration with Optuna (``svreg tune``).

Modules:

* :mod:`~svreg_core.tuning.pairs` — the validation set (labelled image pairs) from a folder or a list file.
* :mod:`~svreg_core.tuning.search_space` — per-preset ranges of α′, λ_max (and optionally iterations and
  learning rate); trial → :class:`~svreg_core.optim.parameters.RegistrationParameters`.
* :mod:`~svreg_core.tuning.objective` — an evaluator-agnostic objective (steps = pairs now, epochs of a
  training later) with intermediate reports, median pruning and a folding constraint.
* :mod:`~svreg_core.tuning.study` — storage (SQLite file or any SQLAlchemy URL), study creation/resume,
  heartbeats, stale-trial handling, the cross-worker lock.
* :mod:`~svreg_core.tuning.runner` — the worker loop: run trials until ``n_trials`` are finished in total.
* :mod:`~svreg_core.tuning.progress` — tqdm bar / JSON-lines reporters.
* :mod:`~svreg_core.tuning.report` — summary table, figures, and the best parameters as a preset file.
* :mod:`~svreg_core.tuning.cli` — ``add_tune_arguments`` / ``run_tune`` for ``svreg tune``.
* :mod:`~svreg_core.tuning.demo` — a tiny real labelled validation set from nilearn's bundled MNI152 data.
"""
