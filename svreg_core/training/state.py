"""Resume state of a training run: written atomically at the end of every epoch, no pickle anywhere.

``run_dir/state/`` holds

* ``model.safetensors``: the network's ``state_dict`` tensors;
* ``optimizer.safetensors``: the optimiser's per-parameter tensors, keyed ``"<param index>.<name>"``
  (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``);
* ``state.json``: everything else as plain JSON: epochs finished, optimiser steps, the optimiser's
  parameter-group settings (learning rate included), the best validation value and its epoch, the
  metric history, and the seed. Every random draw of epoch ``e`` comes from generators seeded from
  ``(seed, e)`` (:func:`epoch_seed`), so the seed *is* the complete random state between epochs.

A folder is replaced by writing its successor next to it and renaming
(:func:`~svreg_core.atomic.replace_directory`); a run killed at any moment leaves either the previous or the new
folder, never a half-written one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from svreg_core.atomic import replace_directory
from svreg_core.errors import InputError

STATE_DIR = "state"
STATE_VERSION = 1

#: Fields of an optimiser parameter group that must be tuples after a JSON round trip.
_TUPLE_FIELDS = ("betas",)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for the random draws of ``epoch`` (``stream`` separates independent uses).

    A fixed mixing of the three integers (SplitMix64 finaliser), the same on every machine and Python.
    """
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


@dataclass
class TrainingState:
    """Counters and records of a run between epochs.

    Attributes:
        epoch: epochs finished (the next epoch to run, 0-based).
        step: optimiser steps taken in total.
        best_value: best validation value so far (higher is better: mean Dice, or minus the loss).
        best_epoch: the 1-based epoch that reached it (0: none yet).
        best_metric: what ``best_value`` measures (``"dice"`` or ``"-loss"``).
        history: one metrics row per finished epoch (what the CSV, TensorBoard and the curve show).
        seed: the run's seed (with ``epoch``, the random state).
        elapsed_s: training seconds spent over all sessions.
        world_size: processes the run trains with (torchrun; 1 without): with the batch size it sets the global
            batch and the steps of an epoch, so a resumed run must use as many.
    """

    epoch: int = 0
    step: int = 0
    best_value: float = float("-inf")
    best_epoch: int = 0
    best_metric: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    seed: int = 0
    elapsed_s: float = 0.0
    world_size: int = 1

    def to_json(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["best_value"] = None if self.best_value == float("-inf") else self.best_value
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainingState:
        values = dict(values)
        if values.get("best_value") is None:
            values["best_value"] = float("-inf")
        return cls(**values)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{index}.{name}"] = tensor.detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()} for group in sd["param_groups"]]
    return tensors, groups


def _tensor_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clones: safetensors refuses tensors sharing storage
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def save_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               state: TrainingState) -> Path:
    """Write ``run_dir/state/`` atomically (``model`` is the bare network, not a DDP wrapper)."""
    tensors, groups = _optimizer_tensors(optimizer)

    def write(folder: Path) -> None:
        save_file(_tensor_dict(model), str(folder / "model.safetensors"))
        save_file(tensors, str(folder / "optimizer.safetensors"))
        doc = {"version": STATE_VERSION, **state.to_json(), "optimizer_groups": groups}
        (folder / "state.json").write_text(json.dumps(doc, indent=1))

    return replace_directory(Path(run_dir) / STATE_DIR, write)


def has_state(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a resume state (call :func:`recover_directory` on its folder first)."""
    return (Path(run_dir) / STATE_DIR / "state.json").is_file()


def load_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore ``model`` and ``optimizer`` in place from ``run_dir/state/`` and return the counters."""
    folder = Path(run_dir) / STATE_DIR
    try:
        doc = json.loads((folder / "state.json").read_text())
        if not isinstance(doc, dict):
            raise TypeError("state.json does not hold an object")
        if doc.get("version") != STATE_VERSION:
            raise InputError(f"the resume state in {folder} has an unsupported version {doc.get('version')!r} "
                             "(another svreg version wrote it): resume with that version, or delete that folder to "
                             "start the run over.")
        weights = load_file(str(folder / "model.safetensors"))
        opt_tensors = load_file(str(folder / "optimizer.safetensors"))
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in weights.items()})
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in opt_tensors.items():
            index, name = key.split(".", 1)
            # AdamW keeps "step" on the CPU unless capturable/fused; moments live with the parameters
            per_param.setdefault(int(index), {})[name] = tensor if name == "step" else tensor.to(device)
        groups = [{k: (tuple(v) if k in _TUPLE_FIELDS else v) for k, v in group.items()}
                  for group in doc.pop("optimizer_groups")]
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
        doc.pop("version")
        return TrainingState.from_json(doc)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]  # torch's messages span lines
        raise InputError(f"the resume state in {folder} is unreadable or damaged ({reason}); delete that folder to "
                         "start the run over, or use a new output folder.") from None
