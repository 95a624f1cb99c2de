"""Bayesian hyperparameter tuning with Optuna (``svreg tune``): :mod:`.pairs` (the validation pairs),
:mod:`.search_space`, :mod:`.objective` (a trial step by step: pairs), :mod:`.training` (epochs of a
training) and :mod:`.codes` (a learned model at the trial's codes), :mod:`.study` (storages, workers),
:mod:`.progress`, :mod:`.report`, :mod:`.cli`, :mod:`.demo`.
"""
