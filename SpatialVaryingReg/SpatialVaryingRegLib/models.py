"""Learned registration models as the module sees them: shipped models and checkpoint folders.

A model is a folder holding ``model.json`` (its description: ``"format": "svreg-checkpoint"``, ``name``,
``architecture``, ``network_spacing_mm``, ``training`` with a ``data`` string) and ``model.safetensors``
(its weights). Shipped models live inside the engine package, ``svreg_core/models/shipped/<name>/``;
a checkpoint is such a folder written by training, given as the folder or as either file in it.

Only the small ``model.json`` files are read (plain JSON, no torch, no child process), so the model
list can be filled from the GUI thread. The weights are loaded by the engine in its child process.
"""
from __future__ import annotations

import importlib.util
import json
import logging
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


class ModelError(ValueError):
    """A model or checkpoint cannot be used; ``str(error)`` is one plain line for the user."""


@dataclass(frozen=True)
class ModelInfo:
    """What ``model.json`` says about a model.

    Attributes:
        name: the model's name (a shipped model's folder name).
        architecture: the network (e.g. ``"unet-spr"``).
        folder: the folder holding ``model.json`` and ``model.safetensors``.
        network_spacing_mm: voxel size (mm) of the grid the network works on, as written in the file.
        training_data: what it was trained on (``training.data``), empty when not stated.
    """

    name: str
    architecture: str
    folder: Path
    network_spacing_mm: Any = None
    training_data: str = ""

    def summary(self) -> str:
        """One line for a tooltip or the log: architecture, working voxel size, training data."""
        parts = [self.architecture or "unknown architecture"]
        if self.network_spacing_mm is not None:
            parts.append(f"works at {self.network_spacing_mm} mm")
        if self.training_data:
            parts.append(f"trained on {self.training_data}")
        return f"{self.name}: " + ", ".join(parts)


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
    return ModelInfo(name=str(doc.get("name") or folder.name), architecture=str(doc.get("architecture", "")),
                     folder=folder, network_spacing_mm=doc.get("network_spacing_mm"), training_data=str(data))


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
    p = Path(text).expanduser()
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
