"""Checkpoints of learned SPR networks: a folder with ``model.safetensors`` and ``model.json``.

* ``model.safetensors``: the network's state dict (weights only, no code; loading never unpickles).
* ``model.json``: one flat object, ``{"format": "svreg-checkpoint", "format_version": 1,
  "weights_sha256": <hex digest of model.safetensors>, **ModelInfo}``: how to rebuild the network
  (architecture and config), the grid and normalisation it expects, and the loss it was trained with,
  so that inference and fine-tuning use the same settings. A hyper network's configuration holds the
  code ranges it was trained on (``config["hyper"]``, :class:`~svreg_core.models.film.CodeRanges`);
  its ``alpha_prime``/``lambda_max`` are then its default codes, inside those ranges.

Saving is atomic: both files are written into a temporary sibling folder which then replaces the
target folder (:func:`~svreg_core.atomic.replace_directory`; a save killed during the swap is undone by
:func:`~svreg_core.atomic.recover_directory`). Loading checks everything it reads and turns each problem into one plain
:class:`~svreg_core.errors.InputError` line.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from svreg_core.atomic import replace_directory
from svreg_core.errors import InputError, OutputError
from svreg_core.models.base import SPRNetwork
from svreg_core.models.film import CodeRanges
from svreg_core.models.registry import architecture_class, build_model
from svreg_core.optim.parameters import RegistrationParameters

#: Value of ``model.json``'s ``"format"`` key.
FORMAT = "svreg-checkpoint"

#: Version of the checkpoint layout this module writes and reads.
FORMAT_VERSION = 1

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"

#: Input normalisations inference applies (:func:`~svreg_core.image.normalize.robust_normalize`).
NORMALIZATIONS = ("robust_normalize",)

#: How many tensor names an error message lists before summarising.
_LISTED = 4

#: The types a checkpoint may store a floating-point weight in: loaded by rounding to the network's own type.
#: Other floating-point types (the 8-bit floats of quantised models) are refused as a type mismatch: torch cannot
#: even check them for NaN.
LOADABLE_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class ModelInfo:
    """What a checkpoint records besides the weights.

    Attributes:
        architecture: registry name (:data:`svreg_core.models.registry.ARCHITECTURES`).
        config: the network's :attr:`~svreg_core.models.base.SPRNetwork.config`.
        network_spacing_mm: voxel size of the network grid (isotropic, mm).
        size_multiple: the network's size multiple (the network grid's shape is made divisible by it).
        normalization: intensity normalisation of the inputs (``"robust_normalize"``).
        similarity, lncc_window, prior, alpha_prime, lambda_max, spr: the SPR loss it was trained with
            (:class:`svreg_core.losses.spr.SPRLoss`); for a hyper network, ``alpha_prime`` and
            ``lambda_max`` are the default codes (those it was validated at), inside :attr:`code_ranges`.
        integration_steps: scaling-and-squaring steps that turn its velocity into a displacement.
        svreg_version: version of svreg_core that trained it.
        training: free-form record of the training (data, command, epochs, date, ...), JSON-able.
        name: short model name (shipped models: their folder name).
    """

    architecture: str
    config: dict[str, Any]
    network_spacing_mm: float
    size_multiple: int
    normalization: str
    similarity: str
    lncc_window: int
    prior: str
    alpha_prime: float
    lambda_max: float
    spr: bool
    integration_steps: int
    svreg_version: str
    training: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def code_ranges(self) -> CodeRanges | None:
        """The code ranges of a hyper network (``config["hyper"]``), ``None`` for a plain one."""
        hyper = self.config.get("hyper")
        return None if hyper is None else CodeRanges.from_value(hyper)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelInfo:
        """Validate and convert a dict written by :meth:`to_dict`.

        Raises:
            InputError: not a dict, a missing or unknown field, a value of the wrong type or range, an unknown
                architecture or configuration key (:func:`~svreg_core.models.registry.architecture_class`),
                malformed code ranges of a hyper network, default codes outside them, an unknown input
                normalisation, or an SPR loss that registration refuses (unknown similarity or prior, an even
                LNCC window, codes or integration steps beyond :data:`svreg_core.optim.parameters.BOUNDS`).
        """
        if not isinstance(data, dict):
            raise InputError(f"model information must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_CHECKS))
        if unknown:
            raise InputError(f"model information has unknown field(s): {', '.join(unknown)}")
        missing = [f.name for f in fields(cls)
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise InputError(f"model information lacks field(s): {', '.join(missing)}")
        for name, value in data.items():
            test, description = _CHECKS[name]
            if not test(value):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise InputError(f"model information field {name!r} must be {description}, got {shown}")
        values: dict[str, Any] = {name: float(value) if name in _FLOATS else value for name, value in data.items()}
        info = cls(**values)
        architecture_class(info.architecture, info.config)  # a newer svreg's network: refused before images are read
        try:
            ranges = info.code_ranges
        except ValueError as exc:
            raise InputError(f"model information has malformed code ranges: {exc}") from None
        if ranges is not None and not ranges.contains(info.alpha_prime, info.lambda_max):
            raise InputError(f"model information: the default codes alpha_prime {info.alpha_prime:g}, lambda_max "
                             f"{info.lambda_max:g} lie outside the trained ranges ({ranges.describe()})")
        if info.normalization not in NORMALIZATIONS:
            raise InputError(f"model information: unknown input normalisation {info.normalization!r} (this svreg "
                             f"applies {', '.join(NORMALIZATIONS)})")
        # the SPR loss a registration with the model uses (model_parameters), at its own codes and at the highest
        # codes of a hyper model's ranges: refused now rather than after the images are read
        highest = (info.alpha_prime, info.lambda_max) if ranges is None else (ranges.alpha_prime[1],
                                                                              ranges.lambda_max[1])
        try:
            for alpha_prime, lambda_max in ((info.alpha_prime, info.lambda_max), highest):
                RegistrationParameters(similarity=info.similarity, lncc_window=info.lncc_window, prior=info.prior,
                                       alpha_prime=alpha_prime, lambda_max=lambda_max, spr=info.spr,
                                       integration_steps=info.integration_steps)
        except InputError as exc:
            raise InputError(f"model information: its SPR loss cannot be used: {exc}") from None
        return info


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number (an integer too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


#: Per field of :class:`ModelInfo`: (test, description used in the error message).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "architecture": (_is_text, "a non-empty string"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "network_spacing_mm": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "size_multiple": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "normalization": (_is_text, "a non-empty string"),
    "similarity": (_is_text, "a non-empty string"),
    "lncc_window": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "prior": (_is_text, "a non-empty string"),
    "alpha_prime": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "lambda_max": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "spr": (lambda v: isinstance(v, bool), "true or false"),
    "integration_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "svreg_version": (lambda v: isinstance(v, str), "a string"),
    "training": (lambda v: isinstance(v, dict), "an object"),
    "name": (lambda v: isinstance(v, str), "a string"),
}

#: Number fields stored as floats (JSON may hold them as integers).
_FLOATS = frozenset({"network_spacing_mm", "alpha_prime", "lambda_max"})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pickled(head: bytes) -> bool:
    """Whether the first bytes of a weights file are those of ``torch.save`` (a zip archive, or before PyTorch 1.6 a
    bare pickle) rather than safetensors (an 8-byte header length, then the JSON header's ``{``)."""
    return head[8:9] != b"{" and (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"))


def _unreadable(path: Path, exc: OSError) -> InputError:
    """The one-line error for a checkpoint file that exists but cannot be read (permissions, I/O error)."""
    return InputError(f"checkpoint {path.parent}: cannot read {path.name} ({exc.strerror or exc}); check that "
                      "your account may read it.")


def _read_text(path: Path) -> str:
    """The UTF-8 text of a checkpoint file; :class:`InputError` when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _unreadable(path, exc) from None


def save_checkpoint(directory: str | Path, model: SPRNetwork, info: ModelInfo) -> Path:
    """Write ``model``'s weights and ``info`` into the checkpoint folder ``directory`` (atomically).

    An existing checkpoint folder there is replaced; any other existing file or non-empty folder is
    left alone.

    Raises:
        ValueError: ``info`` disagrees with ``model`` (architecture, config or size multiple).
        OutputError: ``directory`` is a file or a non-empty folder that is not a checkpoint, or cannot be written.

    Returns:
        The checkpoint folder.
    """
    if (info.architecture, info.config, info.size_multiple) != (model.architecture, model.config,
                                                                 model.size_multiple):
        raise ValueError(f"ModelInfo ({info.architecture}, {info.config}, size multiple {info.size_multiple}) "
                         f"does not describe the model ({model.architecture}, {model.config}, "
                         f"size multiple {model.size_multiple})")
    target = Path(directory).expanduser().absolute()
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / INFO_FILE).is_file())):
        raise OutputError(f"cannot save the checkpoint: {target} exists and is not a checkpoint folder")

    def write(folder: Path) -> None:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
        # bytes written by us: safetensors' save_file creates a 0600 file, which other users could not load
        (folder / WEIGHTS_FILE).write_bytes(save(tensors, metadata={"format": FORMAT}))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "weights_sha256": _sha256(folder / WEIGHTS_FILE), **info.to_dict()}
        (folder / INFO_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")

    try:
        return replace_directory(target, write)
    except OSError as exc:
        raise OutputError(f"cannot save the checkpoint {target}: {exc.strerror or exc}") from None


def _folder(path: str | Path) -> Path:
    """The checkpoint folder of ``path`` (the folder itself, or either file inside it)."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in (WEIGHTS_FILE, INFO_FILE):
        return path.parent
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"checkpoint {path} is neither a checkpoint folder nor its {WEIGHTS_FILE} or {INFO_FILE}")
    raise InputError(f"checkpoint {path} does not exist")


def read_model_info(path: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of a checkpoint (folder, or a file in it) without reading its weights (the quick check
    of a command line before it reads any image).

    Raises:
        InputError: a missing folder or file, or an invalid ``model.json``.
    """
    return _read_info(_folder(path))[0]


def _read_info(folder: Path) -> tuple[ModelInfo, str]:
    """The :class:`ModelInfo` and the recorded SHA-256 of the weights of a checkpoint folder."""
    path = folder / INFO_FILE
    if not path.is_file():
        kept = [name for name in ("best", "last") if (folder / name / INFO_FILE).is_file()]
        if kept:  # the folder svreg train -o wrote, holding its checkpoints
            raise InputError(f"{folder} is a training run's folder, not a checkpoint: use its checkpoint "
                             f"{' or '.join(str(folder / name) for name in kept)}")
        beside = [name for name in ("best", "last") if (folder.parent / name / INFO_FILE).is_file()]
        if beside:  # another folder of a training run: its resume state/, tensorboard/, ...
            raise InputError(f"checkpoint {folder}: {INFO_FILE} is missing; the checkpoints of its training run are "
                             f"{' and '.join(str(folder.parent / name) for name in beside)}")
        raise InputError(f"checkpoint {folder}: {INFO_FILE} is missing")
    try:
        meta = json.loads(_read_text(path))
    except UnicodeDecodeError:
        raise InputError(f"checkpoint {folder}: {INFO_FILE} is not text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"checkpoint {folder}: {INFO_FILE} is not valid JSON ({exc.msg} at line {exc.lineno})") \
            from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits, arrays nested too deep
        raise InputError(f"checkpoint {folder}: {INFO_FILE} is not valid JSON ({' '.join(str(exc).split())})") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"checkpoint {folder}: {INFO_FILE} is not an svreg checkpoint description "
                         f"(no \"format\": \"{FORMAT}\")")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"checkpoint {folder}: format version {meta.get('format_version')!r} is not supported "
                         f"(this svreg reads version {FORMAT_VERSION})")
    digest = meta.get("weights_sha256")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise InputError(f"checkpoint {folder}: {INFO_FILE} lacks the SHA-256 digest of {WEIGHTS_FILE}")
    body = {k: v for k, v in meta.items() if k not in ("format", "format_version", "weights_sha256")}
    try:
        return ModelInfo.from_dict(body), digest
    except InputError as exc:
        raise InputError(f"checkpoint {folder}: {exc}") from None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" (+{len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Plain descriptions of how ``found`` tensors differ from the ``expected`` state dict."""
    problems = []
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    shapes = [f"{n} {tuple(found[n].shape)} instead of {tuple(t.shape)}" for n, t in expected.items()
              if n in found and found[n].shape != t.shape]
    dtypes = [f"{n} {found[n].dtype} instead of {t.dtype}" for n, t in expected.items()
              if n in found and (found[n].dtype not in LOADABLE_FLOAT_TYPES if t.is_floating_point()
                                 else found[n].is_floating_point())]
    if missing:
        problems.append(f"missing tensor(s) {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_names(shapes)}")
    if dtypes:
        problems.append(f"type mismatch {_names(dtypes)}")
    return problems


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SPRNetwork, ModelInfo]:
    """Rebuild the network of a checkpoint and load its weights.

    Args:
        path: the checkpoint folder, or its ``model.safetensors`` or ``model.json``.
        device: where the returned network lives.

    Returns:
        ``(network in eval mode, its ModelInfo)``.

    Raises:
        InputError: a missing folder or file, an invalid ``model.json``, weights pickled by ``torch.save``
            (never unpickled), corrupt or truncated weights,
            an unknown architecture, weights that do not fit the architecture's configuration (names, shapes,
            or types other than :data:`LOADABLE_FLOAT_TYPES` for floating-point weights), or NaN or infinite
            weights.
    """
    folder = _folder(path)
    info, digest = _read_info(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"checkpoint {folder}: {WEIGHTS_FILE} is missing")
    try:
        actual = _sha256(weights)
        with open(weights, "rb") as stream:
            head = stream.read(9)
    except OSError as exc:
        raise _unreadable(weights, exc) from None
    if _pickled(head):
        raise InputError(f"checkpoint {folder}: {WEIGHTS_FILE} is a pickled PyTorch file (torch.save), not "
                         "safetensors; svreg never unpickles weights (loading a pickle can run any code): save the "
                         "network with svreg_core.models.save_checkpoint, which writes safetensors and its SHA-256.")
    if actual != digest:
        raise InputError(f"checkpoint {folder}: {WEIGHTS_FILE} is corrupt or truncated (its SHA-256 differs from "
                         f"the one recorded in {INFO_FILE})")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"checkpoint {folder}: {WEIGHTS_FILE} is corrupt or truncated ({reason})") from None
    try:
        model = build_model(info.architecture, info.config)
    except InputError as exc:
        raise InputError(f"checkpoint {folder}: {exc}") from None
    if model.size_multiple != info.size_multiple:
        raise InputError(f"checkpoint {folder}: records size multiple {info.size_multiple} but its "
                         f"{info.architecture} network has {model.size_multiple}")
    expected = model.state_dict()
    problems = _mismatch(expected, tensors)
    if problems:
        raise InputError(f"checkpoint {folder} does not match architecture {info.architecture} with its "
                         f"configuration: {'; '.join(problems)}")
    broken = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise InputError(f"checkpoint {folder}: {WEIGHTS_FILE} holds NaN or infinite weights ({_names(broken)}), "
                         "so every prediction would be NaN; a training that diverged saves such weights: use "
                         "another checkpoint (e.g. the run's best/) or train again.")
    model.load_state_dict(tensors)
    return model.to(device).eval(), info


def model_summary(info: ModelInfo) -> str:
    """One line describing a checkpoint: name, architecture, network grid and training data."""
    data = info.training.get("data") or "unrecorded training data"
    mode = "SPR" if info.spr else "uniform regularisation"
    ranges = info.code_ranges
    if ranges is not None:
        mode += f", hyper: {ranges.describe()}"
    return (f"{info.name or '(unnamed)'}: {info.architecture} ({mode}), {info.network_spacing_mm:g} mm network grid "
            f"(multiple of {info.size_multiple}), trained on {' '.join(str(data).split())}")
