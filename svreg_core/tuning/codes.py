"""Code search of a learned model (``svreg tune VALIDATION --model M``): inference only, no training.

Every trial registers each validation pair with the network conditioned on the trial's codes (α′, λ_max) and
scores the mean Dice like pairwise tuning (:class:`~svreg_core.tuning.objective.PairwiseDice`, the same folding
constraint), or with ``--objective tre`` the mean landmark error (:class:`~svreg_core.tuning.objective.PairwiseTRE`).
A hyper model's ranges default to, and must lie inside, those it was trained on; a plain model is
refused unless ``refine > 0`` (its codes then set only the refinement's loss; the preset's ranges). Trials run
with the model's SPR loss (:func:`~svreg_core.registration.model_parameters`) and the preset's affine stage,
device and pyramid (the refinement's grids); the first trial is the default codes: a hyper model's
own, the preset's for a plain model's refinement.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from svreg_core.errors import InputError
from svreg_core.models import read_model_info
from svreg_core.models.zoo import resolve_model
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.registration import load_model, model_parameters, register, resolve_device
from svreg_core.tuning.objective import PairwiseDice, PairwiseTRE
from svreg_core.tuning.pairs import LoadedPair, ValidationPair
from svreg_core.tuning.search_space import SearchSpace, build_search_space

CODES = ("alpha_prime", "lambda_max")


def model_reference(model: str | Path) -> str:
    """How a study records ``model``: a shipped model's name, else the checkpoint's absolute path."""
    path = resolve_model(model)
    return str(model) if path != Path(model).expanduser() else str(path.resolve())


def code_search_space(model: str | Path, refine: int, preset: str | Path, *, overrides: Mapping[str, Any],
                      search: Sequence[str], alpha_prime_range: Sequence[float] | None,
                      lambda_max_range: Sequence[float] | None) -> SearchSpace:
    """The codes searched for ``model`` (its ``model.json`` only is read) over ``preset`` with the fixed
    ``overrides`` of every trial; :class:`InputError` for a plain model without ``refine``, other searched
    parameters, or ranges outside a hyper model's trained ones."""
    info = read_model_info(resolve_model(model))
    label, trained = info.name or str(model), info.code_ranges
    if trained is None and not refine:
        raise InputError(f"model {label} is not a hyper model: its prediction does not change with alpha_prime and "
                         "lambda_max, so there is nothing to search; use a hyper model, or --refine N to tune the "
                         "loss of a refinement of its predictions.")
    if not set(search) <= set(CODES):
        raise InputError("a code search (--model) searches alpha_prime and lambda_max only.")
    given = {"alpha_prime": alpha_prime_range, "lambda_max": lambda_max_range}
    for name in CODES if trained is not None else ():
        (low, high), bounds = getattr(trained, name), given[name]
        if bounds is not None and not low <= min(bounds) <= max(bounds) <= high:
            raise InputError(f"the {name} range {bounds[0]:g}-{bounds[1]:g} reaches outside the range model {label} "
                             f"was trained on [{low:g}, {high:g}]; search inside it.")
        given[name] = bounds or (low, high)
    space = build_search_space(preset, search=search, overrides=overrides, alpha_prime_range=given["alpha_prime"],
                               lambda_max_range=given["lambda_max"])
    assert isinstance(space.base, RegistrationParameters)  # built over a preset
    base = model_parameters(info, space.base, refine)
    if trained is not None:  # a hyper model's trials set its prediction's codes too: its own come first
        base = base.replace(alpha_prime=info.alpha_prime, lambda_max=info.lambda_max)
    return dataclasses.replace(space, base=base)


class ModelCodes:
    """Registration of a validation pair by a learned model at the trial's codes (and ``refine`` iterations):
    the ``register`` step of :class:`ModelCodeDice` and :class:`ModelCodeTRE`; the weights are loaded once
    per worker process."""

    def __init__(self, model: str | Path, device: str = "auto", refine: int = 0) -> None:
        self.model, self.refine = load_model(model, resolve_device(device)), refine

    def register(self, data: LoadedPair, settings: RegistrationParameters) -> Any:
        return register(data.fixed, data.moving, settings, model=self.model, refine=self.refine,
                        codes=(settings.alpha_prime, settings.lambda_max))


class ModelCodeDice(ModelCodes, PairwiseDice):
    """:class:`PairwiseDice` of a learned model's registrations at the trial's codes."""

    name = "model-code-dice"

    def __init__(self, pairs: Sequence[ValidationPair], model: str | Path, *, device: str = "auto", refine: int = 0,
                 **kwargs: Any) -> None:
        PairwiseDice.__init__(self, pairs, **kwargs)
        ModelCodes.__init__(self, model, device, refine)


class ModelCodeTRE(ModelCodes, PairwiseTRE):
    """:class:`PairwiseTRE` (landmark error, minimised) of a learned model's registrations at the trial's codes."""

    name = "model-code-tre"

    def __init__(self, pairs: Sequence[ValidationPair], model: str | Path, *, device: str = "auto",
                 refine: int = 0) -> None:
        PairwiseTRE.__init__(self, pairs)
        ModelCodes.__init__(self, model, device, refine)
