"""Learned registration models as the module sees them: shipped models and checkpoint folders.

A model is a folder holding ``model.json`` (its description: ``"format": "svreg-checkpoint"``, ``name``,
``architecture``, ``network_spacing_mm``, ``training`` with a ``data`` string, the regularisation it was
trained at, ``alpha_prime`` and ``lambda_max``, and for a HyperSPR model the ranges of those codes it was
trained over, ``config.hyper = {"alpha_prime": [low, high], "lambda_max": [low, high]}``) and
``model.safetensors`` (its weights). Shipped models live inside the engine package,
``svreg_core/models/shipped/<name>/``; a checkpoint is such a folder written by training, given as the
folder or as either file in it.

Only the small ``model.json`` files are read (plain JSON, no torch, no child process), so the model
list can be filled from the GUI thread. The weights are loaded by the engine in its child process.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import runner

#: The default learned model (``svreg_core/models/shipped/brain-unet-spr``).
DEFAULT_MODEL = "brain-unet-spr"
#: ``"format"`` of every model description.
CHECKPOINT_FORMAT = "svreg-checkpoint"
DESCRIPTION_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
#: Where the shipped models are, relative to the folder holding ``svreg_core``.
SHIPPED_SUBFOLDER = Path("svreg_core", "models", "shipped")


#: The two regularisation codes of a learned model, as ``model.json`` and ``config.hyper`` name them.
CODE_NAMES = ("alpha_prime", "lambda_max")


class ModelError(ValueError):
    """A model or checkpoint cannot be used; ``str(error)`` is one plain line for the user."""


@dataclass(frozen=True)
class CodeRanges:
    """Closed ranges ``[low, high]`` (``0 < low <= high``, dimensionless) of the regularisation codes a
    HyperSPR model was trained over: it registers at any (α′, λ_max) inside them without retraining.

    The same content as the engine's ``svreg_core.models.film.CodeRanges``, read here from ``model.json``
    without importing the engine (it imports torch). ``low == high`` fixes that code.
    """

    alpha_prime: tuple[float, float]
    lambda_max: tuple[float, float]

    @classmethod
    def from_value(cls, value: Any) -> CodeRanges:
        """Read ``config.hyper``; raise :class:`ModelError` (one line) when it is malformed."""
        if not isinstance(value, dict) or set(value) != set(CODE_NAMES):
            raise ModelError(f"its code ranges (config.hyper) must be {{alpha_prime: [low, high], "
                             f"lambda_max: [low, high]}}, not {value!r}.")
        ranges = {}
        for name in CODE_NAMES:
            pair = value[name]
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_number(v) for v in pair)
                    or not 0 < pair[0] <= pair[1]):
                raise ModelError(f"its {name} range (config.hyper) must be two numbers [low, high] with "
                                 f"0 < low <= high, not {pair!r}.")
            ranges[name] = (float(pair[0]), float(pair[1]))
        return cls(**ranges)

    def range_of(self, name: str) -> tuple[float, float]:
        """``(low, high)`` of the code ``name`` (one of :data:`CODE_NAMES`)."""
        return getattr(self, name)

    def describe(self) -> str:
        """``"alpha_prime 0.05 to 0.5, lambda_max 0.5 to 10"``."""
        parts = []
        for name in CODE_NAMES:
            low, high = self.range_of(name)
            parts.append(f"{name} {low:g} to {high:g}")
        return ", ".join(parts)


def _is_number(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_code_numbers(alpha_prime: Any, lambda_max: Any) -> None:
    """Raise :class:`ModelError` (one line) unless each code is ``None`` or a finite number >= 0."""
    for name, value in zip(CODE_NAMES, (alpha_prime, lambda_max)):
        if value is not None and (not _is_number(value) or value < 0):
            raise ModelError(f"{name} must be a number of 0 or more, not {value!r}.")


@dataclass(frozen=True)
class ModelInfo:
    """What ``model.json`` says about a model.

    Attributes:
        name: the model's name (a shipped model's folder name).
        architecture: the network (e.g. ``"unet-spr"``).
        folder: the folder holding ``model.json`` and ``model.safetensors``.
        network_spacing_mm: voxel size (mm) of the grid the network works on, as written in the file.
        training_data: what it was trained on (``training.data``), empty when not stated.
        default_codes: ``(α′, λ_max)`` it registers at unless told otherwise (``alpha_prime``,
            ``lambda_max``; a hyper model's defaults lie inside its ranges); ``None`` when not stated.
        code_ranges: a HyperSPR model's trained code ranges (``config.hyper``); ``None`` for a plain model.
    """

    name: str
    architecture: str
    folder: Path
    network_spacing_mm: Any = None
    training_data: str = ""
    default_codes: tuple[float, float] | None = None
    code_ranges: CodeRanges | None = None

    @property
    def is_hyper(self) -> bool:
        """Whether its regularisation can be chosen at registration time (a HyperSPR model)."""
        return self.code_ranges is not None

    def summary(self) -> str:
        """One line for a tooltip or the log: architecture, working voxel size, training data and, for a
        hyper model, the code ranges it accepts."""
        parts = [self.architecture or "unknown architecture"]
        if self.network_spacing_mm is not None:
            parts.append(f"works at {self.network_spacing_mm} mm")
        if self.training_data:
            parts.append(f"trained on {self.training_data}")
        if self.code_ranges is not None:
            parts.append(f"regularisation adjustable: {self.code_ranges.describe()}")
        return f"{self.name}: " + ", ".join(parts)

    def check_codes(self, alpha_prime: float | None, lambda_max: float | None, refine_steps: int) -> None:
        """Raise :class:`ModelError` (one line) unless the engine will accept these codes for this model.

        The engine's rule (``svreg_core.registration.model_codes``), checked here before any work: each
        code given (``None``: the model's own) is a number >= 0; a hyper model's lie inside its trained
        ranges; a plain model's prediction cannot change, so codes other than its own only set the loss of
        the refinement steps and need ``refine_steps > 0``.
        """
        check_code_numbers(alpha_prime, lambda_max)
        given = dict(zip(CODE_NAMES, (alpha_prime, lambda_max)))
        if self.code_ranges is not None:
            for name, value in given.items():
                low, high = self.code_ranges.range_of(name)
                if value is not None and not low <= value <= high:
                    raise ModelError(f"{name} {value:g} is outside the range model {self.name} was trained on "
                                     f"[{low:g}, {high:g}]; choose a value inside it.")
            return
        own = dict(zip(CODE_NAMES, self.default_codes or (None, None)))
        if refine_steps or self.default_codes is None:
            return
        if any(value is not None and value != own[name] for name, value in given.items()):
            raise ModelError(f"model {self.name} is not a hyper model: it was trained at alpha_prime "
                             f"{own['alpha_prime']:g}, lambda_max {own['lambda_max']:g} and its prediction cannot "
                             "change; other values only set the loss of the refinement steps (refine steps > 0).")


def read_model(folder: str | Path) -> ModelInfo:
    """Read ``folder/model.json``; raise :class:`ModelError` when it is missing or not a model description."""
    folder = Path(folder)
    path = folder / DESCRIPTION_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"the folder {folder} has no {DESCRIPTION_FILE}; a model folder holds {DESCRIPTION_FILE} "
                         f"and {WEIGHTS_FILE}.") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read as JSON ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a model description (it needs \"format\": \"{CHECKPOINT_FORMAT}\").")
    training = doc.get("training")
    data = training.get("data", "") if isinstance(training, dict) else ""
    name = str(doc.get("name") or folder.name)
    config = doc.get("config")
    hyper = config.get("hyper") if isinstance(config, dict) else None
    try:
        ranges = None if hyper is None else CodeRanges.from_value(hyper)
    except ModelError as exc:
        raise ModelError(f"{path} is not a usable model description: {exc}") from None
    codes = tuple(doc.get(n) for n in CODE_NAMES)
    if ranges is not None and not all(_is_number(c) for c in codes):
        raise ModelError(f"{path} is not a usable model description: a hyper model needs its default "
                         "alpha_prime and lambda_max.")
    return ModelInfo(name=name, architecture=str(doc.get("architecture", "")), folder=folder,
                     network_spacing_mm=doc.get("network_spacing_mm"), training_data=str(data),
                     default_codes=tuple(float(c) for c in codes) if all(_is_number(c) for c in codes) else None,
                     code_ranges=ranges)


def shipped_models_folder(engine: Path | None = None) -> Path | None:
    """The shipped-models folder of the engine the child process runs (``None`` when it cannot be found).

    ``engine`` is the folder holding ``svreg_core`` (default: the bundled copy or source checkout of
    :func:`.runner.engine_path`, else an ``svreg_core`` installed in this Python, located without
    importing it).
    """
    if engine is None:
        engine = runner.engine_path()
    if engine is None:
        spec = importlib.util.find_spec("svreg_core")
        if spec is None or not spec.submodule_search_locations:
            return None
        engine = Path(list(spec.submodule_search_locations)[0]).parent
    return Path(engine) / SHIPPED_SUBFOLDER


def shipped_models(engine: Path | None = None) -> list[ModelInfo]:
    """The engine's shipped models, sorted by name (see :func:`shipped_models_folder` for ``engine``).

    A shipped model's name is its folder's name (``shipped/<name>/``), what ``--model <name>`` looks up.

    A folder without both files, or with an unreadable ``model.json``, is skipped with a warning in the
    log: an incomplete package must not break the module panel.
    """
    folder = shipped_models_folder(engine)
    if folder is None or not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not (sub / DESCRIPTION_FILE).is_file():
            continue
        try:
            info = read_model(sub)
        except ModelError as exc:
            logging.warning("SpatialVaryingReg: shipped model skipped: %s", exc)
            continue
        if not (sub / WEIGHTS_FILE).is_file():
            logging.warning("SpatialVaryingReg: shipped model %s skipped: no %s in %s", info.name, WEIGHTS_FILE, sub)
            continue
        found.append(replace(info, name=sub.name))
    return sorted(found, key=lambda m: m.name)


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder of ``path`` (the folder, or its ``model.json`` / ``model.safetensors``).

    Raises :class:`ModelError` with a plain message when the path does not exist, is another kind of
    file, or the folder lacks either file or holds no model description.
    """
    text = str(path).strip()
    what = (f"a checkpoint is the folder written by training (holding {DESCRIPTION_FILE} and {WEIGHTS_FILE}) "
            "or one of those two files")
    if not text:
        raise ModelError(f"choose a checkpoint: {what}.")
    p = Path(text).expanduser().resolve()  # the engine runs in its own working folder
    if not p.exists():
        raise ModelError(f"the checkpoint {p} does not exist; {what}.")
    if p.is_file():
        if p.name not in (DESCRIPTION_FILE, WEIGHTS_FILE):
            raise ModelError(f"{p.name} is not a checkpoint file; {what}.")
        p = p.parent
    if not (p / DESCRIPTION_FILE).is_file():
        raise ModelError(f"the checkpoint folder {p} has no {DESCRIPTION_FILE}; {what}.")
    if not (p / WEIGHTS_FILE).is_file():
        raise ModelError(f"the checkpoint folder {p} has no {WEIGHTS_FILE} (the weights); {what}.")
    read_model(p)
    return p


def _is_path(text: str) -> bool:
    """Whether a model argument names a file or folder rather than a shipped model."""
    separators = [s for s in (os.sep, os.altsep) if s]
    return any(s in text for s in separators) or text.endswith((".json", ".safetensors")) or Path(text).exists()


def resolve_model(model: str, engine: Path | None = None) -> str:
    """The engine's ``--model`` argument for ``model`` (a shipped model's name or a checkpoint path).

    A shipped model's name is passed on as it is (names first, like the engine). A path is checked (see
    :func:`checkpoint_folder`) and given as its folder. Any other name is an error, unless the engine's
    models cannot be located here (an engine installed only in the child's Python): then the engine
    checks it.
    """
    text = str(model or "").strip()
    if not text:
        raise ModelError("choose a learned model: one of the shipped models or a checkpoint.")
    folder = shipped_models_folder(engine)
    names = [m.name for m in shipped_models(engine)]
    if text in names:
        return text
    if _is_path(text):
        return str(checkpoint_folder(text))
    if folder is None:
        return text
    available = f"shipped: {', '.join(names)}" if names else "no model is shipped with this engine"
    raise ModelError(f"there is no shipped model '{text}' ({available}); choose a shipped model or a checkpoint "
                     f"(a folder with {DESCRIPTION_FILE} and {WEIGHTS_FILE}).")


def model_info(model: str, engine: Path | None = None) -> ModelInfo | None:
    """The description of ``model`` (a shipped model's name or a checkpoint path, as :func:`resolve_model`
    takes it), read from its ``model.json`` only.

    Raises :class:`ModelError` (one line) where :func:`resolve_model` does; ``None`` for a name the
    engine's models, not locatable here, may know (the engine checks it).
    """
    text = str(model or "").strip()
    for info in shipped_models(engine):
        if info.name == text:
            return info
    if text and _is_path(text):
        return read_model(checkpoint_folder(text))
    resolve_model(text, engine)  # an empty or unknown name: the plain message
    return None
