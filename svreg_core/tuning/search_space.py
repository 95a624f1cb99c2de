"""What ``svreg tune`` searches: per-preset ranges, trial -> :class:`RegistrationParameters`.

Ranges (METHOD.md §2): brain MRI α′ ∈ [0.01, 0.2], λ_max ∈ [0.5, 5]; CT α′ ∈ [0.001, 0.1],
λ_max ∈ [0.8, 3]. α′ is searched on a log scale (it spans 20-100x), λ_max linearly. A range is widened
to contain the base preset's own value, so the preset can be enqueued as the first trial (cardiac MRI's
tuned α′ = 0.493 lies outside the brain range). Optional extras: the Adam iteration count of each
pyramid level (``iterations_<level>``, from half to twice the base) and the velocity learning rate
(a quarter to four times the base, log scale).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from svreg_core.errors import InputError
from svreg_core.optim.parameters import RegistrationParameters, base_preset, load_parameters

if TYPE_CHECKING:  # pragma: no cover
    import optuna

#: Parameters that can be searched (``--search``).
SEARCHABLE = ("alpha_prime", "lambda_max", "iterations", "learning_rate")

#: Searched by default.
DEFAULT_SEARCH = ("alpha_prime", "lambda_max")

#: (α′ range, λ_max range) per modality family.
FAMILY_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "mri": {"alpha_prime": (0.01, 0.2), "lambda_max": (0.5, 5.0)},
    "ct": {"alpha_prime": (0.001, 0.1), "lambda_max": (0.8, 3.0)},
}

#: Family of each built-in preset.
PRESET_FAMILY = {"brain-mri": "mri", "cardiac-mri": "mri", "ct": "ct", "lung-ct": "ct"}


@dataclass(frozen=True)
class ParamRange:
    """One searched Optuna parameter.

    Attributes:
        name: Optuna parameter name (``alpha_prime``, ``lambda_max``, ``iterations_0``, ``learning_rate``).
        low, high: inclusive bounds.
        log: sample on a log scale.
        integer: an integer parameter.
    """

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise InputError(f"search range of {self.name} is empty: [{self.low}, {self.high}].")
        if self.log and self.low <= 0:
            raise InputError(f"search range of {self.name} must be positive (log scale): [{self.low}, {self.high}].")

    def suggest(self, trial: "optuna.Trial") -> float | int:
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def clip(self, value: float) -> float | int:
        v = min(max(value, self.low), self.high)
        return int(round(v)) if self.integer else float(v)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plain(params: RegistrationParameters) -> dict[str, Any]:
    """``params`` as a dict of JSON types (tuples become lists), as stored with a study or written to a file."""
    return json.loads(json.dumps(params.to_dict()))


def apply_values(base: RegistrationParameters, values: Mapping[str, Any]) -> RegistrationParameters:
    """``base`` with searched values applied (``iterations_<i>`` sets level ``i``'s iteration count)."""
    changes = {k: float(v) for k, v in values.items() if not k.startswith("iterations_")}
    iterations = list(base.iterations)
    for name in (k for k in values if k.startswith("iterations_")):
        iterations[int(name.split("_", 1)[1])] = int(values[name])
    return base.replace(**changes, iterations=tuple(iterations))


@dataclass(frozen=True)
class SearchSpace:
    """The search space of a study and the base parameters it modifies.

    Attributes:
        base: parameters of every trial apart from the searched ones.
        base_preset: built-in preset name the base derives from (the ``base`` of a written preset file).
        ranges: searched parameters.
    """

    base: RegistrationParameters
    base_preset: str
    ranges: tuple[ParamRange, ...]

    def suggest(self, trial: "optuna.Trial") -> RegistrationParameters:
        """Ask ``trial`` for every searched value; return the trial's registration parameters."""
        return apply_values(self.base, {r.name: r.suggest(trial) for r in self.ranges})

    def parameters(self, values: Mapping[str, Any]) -> RegistrationParameters:
        """Registration parameters for stored trial values (e.g. the best trial's ``params``)."""
        return apply_values(self.base, {r.name: values[r.name] for r in self.ranges if r.name in values})

    def searched_fields(self) -> set[str]:
        """Names of the :class:`RegistrationParameters` fields the search changes."""
        return {"iterations" if r.name.startswith("iterations_") else r.name for r in self.ranges}

    def default_values(self) -> dict[str, float | int]:
        """The base's own value of every searched parameter (clipped into its range)."""
        levels = {f"iterations_{i}": n for i, n in enumerate(self.base.iterations)}
        return {r.name: r.clip(levels[r.name] if r.name in levels else getattr(self.base, r.name)) for r in self.ranges}

    def to_dict(self) -> dict[str, Any]:
        return {"base_preset": self.base_preset, "base": plain(self.base), "ranges": [r.to_dict() for r in self.ranges]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        base = RegistrationParameters.from_dict(dict(d["base"]))
        return cls(base, str(d["base_preset"]), tuple(ParamRange(**r) for r in d["ranges"]))


def _widen(bounds: tuple[float, float], value: float, log: bool) -> tuple[float, float]:
    low, high = bounds
    if log and value <= 0:
        return low, high
    return min(low, value), max(high, value)


def build_search_space(preset: str | Path = "brain-mri", *, search: Sequence[str] = DEFAULT_SEARCH,
                       overrides: Mapping[str, Any] | None = None,
                       alpha_prime_range: Sequence[float] | None = None,
                       lambda_max_range: Sequence[float] | None = None) -> SearchSpace:
    """The search space for ``preset`` (a name or preset file) with parameter ``overrides``.

    Args:
        preset: built-in preset name or preset JSON file; its family (MRI/CT) sets the default ranges.
        search: which of :data:`SEARCHABLE` to search.
        overrides: fixed parameter changes for every trial (e.g. fast iteration counts, ``affine=False``).
        alpha_prime_range, lambda_max_range: explicit ``(low, high)`` instead of the family ranges.
    """
    base = load_parameters(preset, **dict(overrides or {}))
    base_name = base_preset(preset)
    family = FAMILY_RANGES[PRESET_FAMILY.get(base_name, "mri")]
    unknown = [s for s in search if s not in SEARCHABLE]
    if unknown:
        raise InputError(f"cannot search {', '.join(unknown)}; searchable: {', '.join(SEARCHABLE)}.")
    if not search:
        raise InputError("nothing to search: give at least one of " + ", ".join(SEARCHABLE) + ".")
    ranges: list[ParamRange] = []
    if "alpha_prime" in search:
        bounds = tuple(alpha_prime_range) if alpha_prime_range else _widen(family["alpha_prime"], base.alpha_prime, True)
        ranges.append(ParamRange("alpha_prime", float(bounds[0]), float(bounds[1]), log=True))
    if "lambda_max" in search:
        bounds = tuple(lambda_max_range) if lambda_max_range else _widen(family["lambda_max"], base.lambda_max, False)
        ranges.append(ParamRange("lambda_max", float(bounds[0]), float(bounds[1])))
    if "iterations" in search:
        for level, n in enumerate(base.iterations):
            ranges.append(ParamRange(f"iterations_{level}", max(1, n // 2), max(2 * n, n + 1), integer=True))
    if "learning_rate" in search:
        lr = base.learning_rate
        ranges.append(ParamRange("learning_rate", lr / 4.0, lr * 4.0, log=True))
    return SearchSpace(base, base_name, tuple(ranges))
