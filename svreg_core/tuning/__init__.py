"""Bayesian hyperparameter tuning with Optuna (``svreg tune``), on Optuna's own machinery.

* :mod:`~svreg_core.tuning.pairs` — the validation set (labelled image pairs).
* :mod:`~svreg_core.tuning.search_space` — per-preset ranges; trial → :class:`RegistrationParameters`.
* :mod:`~svreg_core.tuning.objective` — the :class:`~svreg_core.tuning.objective.Objective` protocol
  (steps = pairs now, training epochs later) and its per-step reports/pruning.
* :mod:`~svreg_core.tuning.study` — storages (SQLite, PostgreSQL, journal file), create/join, the worker loop.
* :mod:`~svreg_core.tuning.progress` — tqdm bar / JSON lines.
* :mod:`~svreg_core.tuning.report` — summary.json/md, trials.csv, figures, the best trial as a preset.
* :mod:`~svreg_core.tuning.cli` — ``svreg tune``; :mod:`~svreg_core.tuning.demo` — a tiny real validation set.
"""
