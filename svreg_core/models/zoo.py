"""Models shipped inside the package, selectable by name (``svreg models`` lists them).

Each shipped model is a checkpoint folder ``svreg_core/models/shipped/<name>/`` holding
``model.safetensors`` and ``model.json`` (see :mod:`svreg_core.models.checkpoint`). Only the JSON is
read to list them, so listing is instant and loads no weights.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from svreg_core.errors import InputError

#: Folder of the shipped checkpoints.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"

#: The model ``--model default`` names.
DEFAULT_MODEL = "brain-unet-spr"


def shipped_models(folder: Path = SHIPPED_DIR) -> dict[str, dict]:
    """``{name: model.json contents}`` of every shipped checkpoint, sorted by name (one whose ``model.json`` cannot be
    read or is not a JSON object is left out)."""
    found: dict[str, dict] = {}
    if folder.is_dir():
        for meta in sorted(folder.glob("*/model.json")):
            try:
                contents = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(contents, dict):
                found[meta.parent.name] = contents
    return found


def resolve_model(model: str | Path, folder: Path = SHIPPED_DIR) -> Path:
    """The checkpoint folder of a shipped model name (``"default"`` included) or of a checkpoint path.

    Only a bare name (no folder separator: ``brain-unet-spr``, not ``./brain-unet-spr`` or ``brain-unet-spr/``)
    names a shipped model (with a ``UserWarning`` when the current folder has a file or folder of that name);
    anything else is a path, even where its last part is a shipped model's name.
    """
    name = DEFAULT_MODEL if str(model) == "default" else str(model)
    bare = name not in ("", ".", "..") and not any(sep and sep in name for sep in (os.sep, os.altsep, "/"))
    if bare and (folder / name / "model.json").is_file():
        if Path(name).exists():
            warnings.warn(f"--model {name} is the shipped model of that name, not the checkpoint {name} in the "
                          f"current folder; give ./{name} for that one.", stacklevel=2)
        return folder / name
    path = Path(model).expanduser()
    if path.exists():
        return path
    known = ", ".join(shipped_models(folder)) or "none"
    raise InputError(f"model {str(model)!r} is neither a shipped model (shipped: {known}) nor an existing "
                     "checkpoint folder or file.")


def describe(name: str, meta: dict) -> str:
    """One line for ``svreg models``: name first (``(default)`` after the one ``--model default`` names), then
    architecture, network grid, default codes, a hyper model's code ranges, and training data."""
    training = meta.get("training", {}) if isinstance(meta.get("training"), dict) else {}
    spacing = meta.get("network_spacing_mm", "?")
    config = meta["config"] if isinstance(meta.get("config"), dict) else {}
    hyper = config.get("hyper")
    ranges = "" if not isinstance(hyper, dict) else "".join(
        f"  hyper {key}={hyper.get(key, '?')}" for key in ("alpha_prime", "lambda_max"))
    default = " (default)" if name == DEFAULT_MODEL else ""
    return (f"{name}{default}  architecture={meta.get('architecture', '?')}  grid={spacing} mm RAS (multiple of "
            f"{meta.get('size_multiple', '?')})  alpha_prime={meta.get('alpha_prime', '?')}  "
            f"lambda_max={meta.get('lambda_max', '?')}{ranges}  data: {training.get('data', 'unknown')}")


def shipped_model_modality_warning(model: str | Path, fixed: np.ndarray, moving: np.ndarray,
                                   folder: Path = SHIPPED_DIR) -> str | None:
    """One line when a shipped model (every one is trained on synthetic head images made from brain label maps,
    in random MR-like contrasts) is to register two images that read as CT
    (:func:`~svreg_core.image.modality.looks_like_ct`), else ``None`` (another checkpoint's training data is its
    own: nothing is said)."""
    from svreg_core.image.modality import looks_like_ct

    path = resolve_model(model, folder)
    if path.resolve().parent != folder.resolve() or not (looks_like_ct(fixed) and looks_like_ct(moving)):
        return None
    return (f"both images look like CT (Hounsfield units), but the shipped model {path.name} was trained on synthetic "
            "head images made from brain label maps only; for CT register without --model, with --preset ct (or "
            "lung-ct for the chest), tuned on CT.")
