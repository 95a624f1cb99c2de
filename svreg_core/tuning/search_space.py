"""What ``svreg tune`` searches: ranges, and a trial's values applied to the settings of every trial.

The base settings are :class:`RegistrationParameters` (pairwise tuning, from a preset) or a
:class:`~svreg_core.training.config.TrainingConfig` (the training objective). Ranges (METHOD.md §2):
brain MRI α′ ∈ [0.01, 0.2], λ_max ∈ [0.5, 5] (the paper's; training: these too); CT α′ ∈ [0.001, 0.3],
λ_max ∈ [0.1, 4], wider than the paper's α′ ∈ [0.001, 0.1], λ_max ∈ [0.8, 3]: the ranges the CT presets
were tuned over (``benchmarks/ct_tune.py``; our λ_max acts on a control grid, not on the paper's scale);
α′ on a log scale, λ_max linearly, each widened to contain the base's own value so that it can be the first
trial (cardiac MRI's α′ = 0.493 lies above the brain range). Optional: the Adam iterations of
each pyramid level (``iterations_<level>``, half to twice the base), the learning rate (a quarter to
four times the base, log scale) and the optimiser's velocity smoothing (``smoothing_passes``, 1 to 4 box
passes, widened to contain the base's): on brain MRI fewer passes raised the Dice and the folding together
(``benchmarks/results/smoothing_2026-11-28/``), so search it with ``--max-folding``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from svreg_core.errors import InputError
from svreg_core.optim.parameters import PRESETS, RegistrationParameters, base_preset, load_parameters
from svreg_core.training.config import TrainingConfig

#: Parameters that can be searched (``--search``); searched by default.
SEARCHABLE = ("alpha_prime", "lambda_max", "iterations", "learning_rate", "smoothing_passes")
DEFAULT_SEARCH = ("alpha_prime", "lambda_max")
#: Range of ``smoothing_passes`` (velocity box passes per iteration), widened to contain the base's.
SMOOTHING_PASSES_RANGE = (1, 4)
#: (α′ range, λ_max range) per modality family, and the family of each built-in preset.
FAMILY_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "mri": {"alpha_prime": (0.01, 0.2), "lambda_max": (0.5, 5.0)},
    "ct": {"alpha_prime": (0.001, 0.3), "lambda_max": (0.1, 4.0)},
}
PRESET_FAMILY = {"brain-mri": "mri", "cardiac-mri": "mri", "ct": "ct", "lung-ct": "ct"}
#: Settings that change where trials run, not what they compute: workers of one study may differ in them.
RUNTIME = ("device", "num_workers")

Base = RegistrationParameters | TrainingConfig


@dataclass(frozen=True)
class ParamRange:
    """One searched Optuna parameter (``alpha_prime``, ``iterations_0``...): inclusive bounds and scale."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise InputError(f"search range of {self.name} must be finite numbers: [{self.low}, {self.high}].")
        if not self.low < self.high:
            raise InputError(f"search range of {self.name} is empty: [{self.low}, {self.high}].")
        if self.log and self.low <= 0:
            raise InputError(f"search range of {self.name} must be positive (log scale): [{self.low}, {self.high}].")

    def suggest(self, trial: optuna.Trial) -> float | int:
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def clip(self, value: float) -> float | int:
        v = min(max(value, self.low), self.high)
        return int(round(v)) if self.integer else float(v)


def plain(settings: Base) -> dict[str, Any]:
    """``settings`` as JSON types (tuples become lists), as stored with a study or written to a file."""
    return json.loads(json.dumps(settings.to_dict()))


@dataclass(frozen=True)
class SearchSpace:
    """The searched ``ranges`` and the ``base`` settings of every trial they modify; ``base_preset``: the
    built-in preset a registration base derives from (a written preset's ``base``; ``None`` for training)."""

    base: Base
    base_preset: str | None
    ranges: tuple[ParamRange, ...]

    def suggest(self, trial: optuna.Trial) -> Base:
        """Ask ``trial`` for every searched value; return the trial's settings."""
        return self.parameters({r.name: r.suggest(trial) for r in self.ranges})

    def parameters(self, values: Mapping[str, Any]) -> Base:
        """The base with stored trial values applied (``iterations_<i>`` sets level ``i``'s iterations)."""
        known = {r.name: values[r.name] for r in self.ranges if r.name in values}
        integer = {r.name for r in self.ranges if r.integer}
        changes: dict[str, Any] = {k: int(v) if k in integer else float(v) for k, v in known.items()
                                   if not k.startswith("iterations_")}
        levels = {int(k.rsplit("_", 1)[1]): int(v) for k, v in known.items() if k.startswith("iterations_")}
        if levels:
            assert isinstance(self.base, RegistrationParameters)  # a training base never searches iterations
            changes["iterations"] = tuple(levels.get(i, n) for i, n in enumerate(self.base.iterations))
        return self.base.replace(**changes)

    def check_ranges(self) -> None:
        """Before any trial: both ends of every range give valid settings, else :class:`InputError` naming it."""
        for r in self.ranges:
            for end in (r.low, r.high):
                try:
                    self.parameters({r.name: end})  # the other settings as in the base
                except InputError as exc:
                    raise InputError(f"search range of {r.name} [{r.low:g}, {r.high:g}]: {exc}") from None

    def searched_fields(self) -> set[str]:
        """Names of the base's fields the search changes."""
        return {"iterations" if r.name.startswith("iterations_") else r.name for r in self.ranges}

    def default_values(self) -> dict[str, float | int]:
        """The base's own value of every searched parameter (clipped into its range)."""
        levels = {f"iterations_{i}": n for i, n in enumerate(getattr(self.base, "iterations", ()))}
        return {r.name: r.clip(levels[r.name] if r.name in levels else getattr(self.base, r.name)) for r in self.ranges}

    def fixed_settings(self) -> dict[str, Any]:
        """What every trial ran with apart from the searched parameters and :data:`RUNTIME`."""
        searched = self.searched_fields()
        return {k: v for k, v in plain(self.base).items() if k not in searched and k not in RUNTIME}

    def reference(self) -> dict[str, Any]:
        """The defaults the fixed settings are compared with: the built-in preset, or ``TrainingConfig()``."""
        return plain(PRESETS[self.base_preset] if self.base_preset else TrainingConfig())

    def to_dict(self) -> dict[str, Any]:
        return {"base_preset": self.base_preset, "base": plain(self.base),
                "ranges": [dataclasses.asdict(r) for r in self.ranges]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        kind = TrainingConfig if d["base_preset"] is None else RegistrationParameters
        return cls(kind.from_dict(dict(d["base"])), d["base_preset"], tuple(ParamRange(**r) for r in d["ranges"]))


def build_search_space(base: str | Path | TrainingConfig = "brain-mri", *, search: Sequence[str] = DEFAULT_SEARCH,
                       overrides: Mapping[str, Any] | None = None,
                       alpha_prime_range: Sequence[float] | None = None,
                       lambda_max_range: Sequence[float] | None = None) -> SearchSpace:
    """The search space over ``base``: a preset name or file (with the fixed ``overrides`` of every trial,
    e.g. fast iteration counts) or a training configuration. ``alpha_prime_range``/``lambda_max_range``:
    explicit ``(low, high)`` instead of the family's ranges."""
    unknown = [s for s in search if s not in SEARCHABLE]
    if unknown or not search:
        raise InputError(f"cannot search {', '.join(unknown) or 'nothing'}; searchable: {', '.join(SEARCHABLE)}.")
    settings: Base
    if isinstance(base, TrainingConfig):
        if "iterations" in search:
            raise InputError("a training objective cannot search iterations (its schedule is --epochs-per-trial).")
        if "smoothing_passes" in search:
            raise InputError("a training objective cannot search smoothing_passes (a setting of the pairwise "
                             "optimiser, not of the network).")
        settings, name = base, None
    else:
        settings, name = load_parameters(base, **dict(overrides or {})), base_preset(base)
    family = FAMILY_RANGES[PRESET_FAMILY.get(name or "", "mri")]
    ranges: list[ParamRange] = []
    for code, given, log in (("alpha_prime", alpha_prime_range, True), ("lambda_max", lambda_max_range, False)):
        if code in search:
            value, (low, high) = getattr(settings, code), given or family[code]
            if value > 0 and not given:  # widened to contain the base's own value (the first trial)
                low, high = min(low, value), max(high, value)
            ranges.append(ParamRange(code, float(low), float(high), log=log))
    if "iterations" in search:
        assert isinstance(settings, RegistrationParameters)  # refused above for a training configuration
        ranges += [ParamRange(f"iterations_{level}", max(1, n // 2), max(2 * n, n + 1), integer=True)
                   for level, n in enumerate(settings.iterations)]
    if "learning_rate" in search:
        ranges.append(ParamRange("learning_rate", settings.learning_rate / 4.0, settings.learning_rate * 4.0, log=True))
    if "smoothing_passes" in search:
        assert isinstance(settings, RegistrationParameters)  # refused above for a training configuration
        low, high = SMOOTHING_PASSES_RANGE
        ranges.append(ParamRange("smoothing_passes", min(low, settings.smoothing_passes),
                                 max(high, settings.smoothing_passes), integer=True))
    space = SearchSpace(settings, name, tuple(ranges))
    space.check_ranges()
    return space
