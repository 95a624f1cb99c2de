"""Bayesian hyperparameter tuning with Optuna (``svreg tune``): :mod:`.pairs` (the validation pairs),
:mod:`.search_space`, :mod:`.objective` (a trial step by step: pairs) and :mod:`.training` (epochs of a
training), :mod:`.study` (storages, workers), :mod:`.progress`, :mod:`.report`, :mod:`.cli`, :mod:`.demo`.
"""
