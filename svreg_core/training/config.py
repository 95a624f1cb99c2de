"""Training configuration: every hyperparameter of ``svreg train`` in one validated, serialisable object.

A configuration file is YAML or JSON with the fields of :class:`TrainingConfig`; the ``data`` and
``validation`` sections hold lists of :class:`DataSource` objects. Example::

    architecture: unet-spr
    network_spacing_mm: 2.0
    grid_shape: [80, 96, 96]
    alpha_prime: 0.175
    lambda_max: 3.35
    hyper: {alpha_prime: [0.05, 0.5], lambda_max: [0.5, 10.0]}   # optional: a HyperSPR network
    epochs: 300
    data:
      sources:
        - {kind: folder, path: train/, atlas: atlas.nii.gz}
        - {kind: synthetic, path: synthseg_labels/, weight: 0.5}
    validation:
      fraction: 0.1

Unknown keys are an error naming them. Command-line flags override the file; the resolved
configuration is saved in the run folder as ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svreg_core.atomic import replaced_when_complete
from svreg_core.errors import InputError
from svreg_core.image.sampling import LABEL_INTERPOLATIONS
from svreg_core.losses.spr import SPRLoss
from svreg_core.models.film import CodeRanges
from svreg_core.models.registry import architecture_options
from svreg_core.optim.parameters import BOUNDS
from svreg_core.text_input import read_text

#: Kinds of training data: a folder of images (atlas-to-subject or all pairs), a Medical Segmentation
#: Decathlon-style ``dataset.json``, a CSV pair list, SynthMorph-style synthesis from label maps, or
#: augmented real templates shipped with the demo packages.
DATA_KINDS = ("folder", "dataset_json", "csv", "synthetic", "templates")
#: Kinds of data that are generated on the fly (they need an epoch ``length``; they have no fixed pair list).
GENERATED_KINDS = ("synthetic", "templates")
SIMILARITIES = ("lncc", "mse", "mind")
PRIORS = ("beta", "gaussian")
DEVICES = ("auto", "cpu", "cuda")


def _fail(message: str) -> None:
    raise InputError(message)


def _check_keys(values: dict[str, Any], cls: type, where: str) -> None:
    if not isinstance(values, dict):
        _fail(f"{where} must be a mapping of option names to values, not {type(values).__name__}.")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        _fail(f"unknown {where} option(s): {', '.join(map(str, unknown))}.")


def _as_int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        _fail(f"{name} must be a whole number, not {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        _fail(f"{name} must be at least {minimum}, not {value}.")
    return value


def _as_float(value: Any, name: str, *, positive: bool = False, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(f"{name} must be a finite number, not {value!r}.")
    value = float(value)
    if positive and value <= 0:
        _fail(f"{name} must be positive, not {value:g}.")
    if non_negative and value < 0:
        _fail(f"{name} must not be negative, not {value:g}.")
    return value


def _as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"{name} must be true or false, not {value!r}.")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        _fail(f"unknown {name} {value!r}; choose one of {', '.join(choices)}.")
    return value


@dataclass(frozen=True)
class DataSource:
    """One source of image pairs.

    Attributes:
        kind: one of :data:`DATA_KINDS`.
        path: the folder (``folder``: images; ``synthetic``: label maps), the ``dataset.json`` or the
            CSV file; ``templates`` takes none (the brain templates installed with the demo packages,
            :func:`svreg_core.training.sources.builtin_templates`).
        atlas: ``folder`` only: register every image to this atlas (atlas = fixed) instead of all pairs.
        weight: mixing weight: with several sources a training sample comes from this source with
            probability ``weight / sum(weights)``.
        length: ``synthetic``/``templates`` only: pairs this source offers per epoch (default 100).
        synthesis: ``synthetic``/``templates`` only: options of
            :class:`svreg_core.training.synthesis.SynthesisConfig` overriding its defaults (``templates``: only
            those of :data:`svreg_core.training.datasets.TEMPLATE_SYNTHESIS_OPTIONS`).
    """

    kind: str
    path: str | None = None
    atlas: str | None = None
    weight: float = 1.0
    length: int | None = None
    synthesis: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice(self.kind, "data kind", DATA_KINDS)
        if self.path is not None and not isinstance(self.path, str):
            _fail(f"data path must be a string, not {self.path!r}.")
        if self.kind == "templates" and self.path is not None:
            _fail("a 'templates' data source uses the installed brain templates and takes no path.")
        if self.kind != "templates" and not self.path:
            _fail(f"a {self.kind!r} data source needs a path.")
        if self.atlas is not None and (self.kind != "folder" or not isinstance(self.atlas, str)):
            _fail("an atlas is only meaningful for a 'folder' data source, as a path to an image.")
        object.__setattr__(self, "weight", _as_float(self.weight, "data source weight", positive=True))
        if self.length is not None:
            if self.kind not in GENERATED_KINDS:
                _fail(f"a {self.kind!r} data source has a fixed number of pairs; length applies to "
                      f"{' and '.join(GENERATED_KINDS)} sources only.")
            object.__setattr__(self, "length", _as_int(self.length, "data source length", 1))
        if not isinstance(self.synthesis, dict):
            _fail("synthesis options must be a mapping.")
        if self.synthesis and self.kind not in GENERATED_KINDS:
            _fail(f"synthesis options apply to {' and '.join(GENERATED_KINDS)} sources only.")
        object.__setattr__(self, "synthesis", dict(self.synthesis))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSource:
        _check_keys(values, cls, "data source")
        if "kind" not in values:
            _fail("every data source needs a kind (" + ", ".join(DATA_KINDS) + ").")
        return cls(**values)

    def describe(self) -> str:
        """A short human-readable description (recorded in checkpoints)."""
        text = self.kind if self.path is None else f"{self.kind}:{self.path}"
        if self.atlas:
            text += f" (atlas {self.atlas})"
        return text


def _sources(values: Any, where: str) -> tuple[DataSource, ...]:
    if isinstance(values, DataSource):
        return (values,)
    if not isinstance(values, (list, tuple)):
        _fail(f"{where} sources must be a list.")
    return tuple(v if isinstance(v, DataSource) else DataSource.from_dict(v) for v in values)


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    Attributes:
        sources: the sources, mixed by their weights.
        prealign: affinely pre-align each moving image to its fixed image before resampling both onto
            the network grid (inter-subject pairs through one hub image:
            :class:`~svreg_core.training.datasets.PairListDataset`).
        augment: random flips along every axis (the paper's augmentation) and, for real pairs,
            random fixed/moving swaps when the source allows it.
    """

    sources: tuple[DataSource, ...] = ()
    prealign: bool = True
    augment: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", _sources(self.sources, "data"))
        _as_bool(self.prealign, "data prealign")
        _as_bool(self.augment, "data augment")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        _check_keys(values, cls, "data")
        return cls(**values)


@dataclass(frozen=True)
class ValidationConfig:
    """Validation after every epoch.

    Attributes:
        sources: explicit validation pairs (``folder``/``dataset_json``/``csv``, or generated with a
            ``length``); empty: hold out ``fraction`` of the training pairs, or for generated-only
            training data, generate ``pairs`` pairs with a seed of their own.
        fraction: share of the real training pairs held out when ``sources`` is empty.
        pairs: most validation pairs evaluated each epoch (always the same ones, spread evenly over the list of
            validation pairs: :func:`~svreg_core.training.loaders.spread`).
        labels: label values scored by Dice (default: every non-zero label present in both maps).
        label_interpolation: moving labels warped ``"linear"`` (one-hot trilinear + argmax) or ``"nearest"``.
    """

    sources: tuple[DataSource, ...] = ()
    fraction: float = 0.1
    pairs: int = 16
    labels: tuple[int, ...] | None = None
    label_interpolation: str = "linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", _sources(self.sources, "validation"))
        fraction = _as_float(self.fraction, "validation fraction", non_negative=True)
        if fraction >= 1:
            _fail(f"validation fraction must be below 1, not {fraction:g}.")
        object.__setattr__(self, "fraction", fraction)
        object.__setattr__(self, "pairs", _as_int(self.pairs, "validation pairs", 0))
        if self.labels is not None:
            if not isinstance(self.labels, (list, tuple)) or not self.labels:
                _fail("validation labels must be a non-empty list of label values.")
            object.__setattr__(self, "labels", tuple(_as_int(v, "validation label") for v in self.labels))
        _choice(self.label_interpolation, "label interpolation", LABEL_INTERPOLATIONS)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ValidationConfig:
        _check_keys(values, cls, "validation")
        return cls(**values)


#: Fields that change how a run executes but not what it computes: they may differ when resuming.
RUNTIME_FIELDS = ("num_workers", "device")


@dataclass(frozen=True)
class TrainingConfig:
    """Every hyperparameter of a training run (units in the attribute list).

    Attributes:
        architecture: network name in :mod:`svreg_core.models` (``"unet-spr"``, ``"transmorph-tvf-spr"``).
        model: architecture options (widths, depths...) passed to ``build_model``; the SPR head is
            switched off (λ ≡ 1) by ``spr: false`` below, not here.
        network_spacing_mm: isotropic voxel size of the network grid (mm).
        grid_shape: network grid shape ``(I, J, K)`` in voxels (RAS axes), a multiple of the network's
            size multiple.
        similarity, lncc_window, prior, alpha_prime, lambda_max, spr: the SPR loss
            (:class:`svreg_core.losses.spr.SPRLoss`); ``lncc_window`` in voxels of the network grid.
        init_weights: start from the weights of this checkpoint (a shipped model's name or a checkpoint
            folder) instead of a random initialisation: fine-tuning. Its architecture and network options
            (hyper and uniform included) must be this run's, except that a plain checkpoint may start
            a hyper run (its FiLM conditioning starts near the identity) and a hyper checkpoint a hyper
            run over other code ranges; ``None``: random initialisation.
        init_fresh: submodules of the network (e.g. ``lambda_head``) that keep this run's seeded
            initialisation instead of the checkpoint's weights; needs ``init_weights``. For a λ head
            whose sigmoid has saturated at λ ≈ 1 (a network trained only at codes where λ* = 1): there the
            gradient of λ vanishes, so training at other codes cannot move it.
        hyper: ``{alpha_prime: [low, high], lambda_max: [low, high]}`` (``0 < low <= high``): train a
            HyperSPR network conditioned on the codes (:mod:`svreg_core.models.film`); each step draws
            one code pair log-uniformly from these ranges for its whole batch (per process) from a
            generator seeded by ``(seed, epoch, rank)``, and the step's SPR loss uses it. Validation and
            the checkpoints' default codes are ``alpha_prime``/``lambda_max``, which must lie in the
            ranges. ``None``: a plain network trained at ``alpha_prime``/``lambda_max``.
        label_weight: weight of the label soft-Dice term (:func:`svreg_core.losses.labels.label_dice_loss`,
            SynthMorph's objective) added to the SPR loss; ``0`` leaves it out. When positive every
            training pair must carry label maps (synthetic pairs always do).
        integration_steps: scaling-and-squaring steps of the predicted velocity.
        learning_rate: initial AdamW step; it decays as ``(1 − epoch / epochs) ** lr_power`` per epoch.
        lr_power: exponent of the polynomial decay.
        weight_decay: AdamW weight decay (the paper: none).
        amsgrad: AMSGrad variant of AdamW (the paper: on).
        epochs: training epochs.
        steps_per_epoch: optimiser steps per epoch; ``None``: one pass over the training pairs
            (``ceil(pairs / global batch)``).
        batch_size: pairs per step and process (DDP: the global batch is ``batch_size × processes``).
        num_workers: DataLoader worker processes loading and synthesising pairs.
        seed: seed of weight initialisation, sampling, augmentation and synthesis.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        data, validation: see :class:`DataConfig`, :class:`ValidationConfig`.
    """

    architecture: str = "unet-spr"
    model: dict[str, Any] = field(default_factory=dict)
    network_spacing_mm: float = 2.0
    grid_shape: tuple[int, int, int] = (80, 96, 96)
    similarity: str = "lncc"
    lncc_window: int = 5
    prior: str = "beta"
    alpha_prime: float = 0.175
    lambda_max: float = 3.35
    spr: bool = True
    hyper: dict[str, Any] | None = None
    init_weights: str | None = None
    init_fresh: tuple[str, ...] = ()
    label_weight: float = 0.0
    integration_steps: int = 7
    learning_rate: float = 1e-4
    lr_power: float = 0.9
    weight_decay: float = 0.0
    amsgrad: bool = True
    epochs: int = 300
    steps_per_epoch: int | None = None
    batch_size: int = 1
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            _fail("architecture must be a network name.")
        if not isinstance(self.model, dict):
            _fail("model options must be a mapping.")
        if "uniform" in self.model:
            _fail("set 'spr: false' (or --no-spr) for a uniform regulariser instead of the model option 'uniform'.")
        if "hyper" in self.model:
            _fail("set the code ranges with the top-level 'hyper' setting instead of the model option 'hyper'.")
        options = architecture_options(self.architecture) - {"uniform", "hyper"}  # set by 'spr' and 'hyper'
        unknown = sorted(set(self.model) - options)
        if unknown:
            _fail(f"unknown model option(s) {', '.join(map(str, unknown))} for architecture {self.architecture!r} "
                  f"(accepted: {', '.join(sorted(options))}).")
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "network_spacing_mm",
                           _as_float(self.network_spacing_mm, "network spacing", positive=True))
        shape = self.grid_shape
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            _fail(f"grid shape must be three voxel counts (I J K), not {shape!r}.")
        object.__setattr__(self, "grid_shape", tuple(_as_int(n, "grid shape", 2) for n in shape))
        _choice(self.similarity, "similarity", SIMILARITIES)
        _choice(self.prior, "prior", PRIORS)
        window = _as_int(self.lncc_window, "lncc window", 1)
        if window % 2 == 0:
            _fail(f"lncc window must be an odd number of voxels, not {window}.")
        object.__setattr__(self, "lncc_window", window)
        for name in ("alpha_prime", "weight_decay", "label_weight"):
            object.__setattr__(self, name, _as_float(getattr(self, name), name.replace("_", " "),
                                                     non_negative=True))
        for name in ("lambda_max", "learning_rate", "lr_power"):
            object.__setattr__(self, name, _as_float(getattr(self, name), name.replace("_", " "), positive=True))
        _as_bool(self.spr, "spr")
        if self.init_weights is not None and (not isinstance(self.init_weights, str) or not self.init_weights):
            _fail("init weights must name a shipped model or a checkpoint folder.")
        fresh = self.init_fresh
        if not isinstance(fresh, (list, tuple)) or any(not isinstance(n, str) or not n for n in fresh):
            _fail(f"init fresh must be a list of submodule names (e.g. [lambda_head]), not {fresh!r}.")
        if fresh and self.init_weights is None:
            _fail("init fresh names modules to keep out of the initial checkpoint: set init weights (--init) too.")
        object.__setattr__(self, "init_fresh", tuple(fresh))
        if self.hyper is not None:
            try:
                ranges = CodeRanges.from_value(self.hyper)
            except ValueError as exc:
                _fail(f"{exc}.")
            object.__setattr__(self, "hyper", ranges.to_dict())
            if not ranges.contains(self.alpha_prime, self.lambda_max):
                _fail(f"alpha_prime {self.alpha_prime:g} and lambda_max {self.lambda_max:g} (the validation codes) "
                      f"must lie in the hyper ranges ({ranges.describe()}); set them inside (alpha_prime, lambda_max; "
                      "--alpha-prime, --lambda-max).")
        _as_bool(self.amsgrad, "amsgrad")
        object.__setattr__(self, "integration_steps", _as_int(self.integration_steps, "integration steps", 0))
        # what the checkpoint records must be registrable: svreg register checks the same bounds
        codes = CodeRanges.from_value(self.hyper) if self.hyper is not None else None
        for name, value in (("alpha_prime", codes.alpha_prime[1] if codes else self.alpha_prime),
                            ("lambda_max", codes.lambda_max[1] if codes else self.lambda_max),
                            ("lncc_window", self.lncc_window), ("integration_steps", self.integration_steps)):
            low, high, unit = BOUNDS[name]
            if not low <= value <= high:
                _fail(f"{name.replace('_', ' ')} {value:g} is outside what svreg register accepts ({low:g} to "
                      f"{high:g}{unit}): a model trained with it could not be used.")
        object.__setattr__(self, "epochs", _as_int(self.epochs, "epochs", 1))
        if self.steps_per_epoch is not None:
            object.__setattr__(self, "steps_per_epoch", _as_int(self.steps_per_epoch, "steps per epoch", 1))
        object.__setattr__(self, "batch_size", _as_int(self.batch_size, "batch size", 1))
        object.__setattr__(self, "num_workers", _as_int(self.num_workers, "workers", 0))
        object.__setattr__(self, "seed", _as_int(self.seed, "seed", 0))
        _choice(self.device, "device", DEVICES)
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", DataConfig.from_dict(self.data))
        if isinstance(self.validation, dict):
            object.__setattr__(self, "validation", ValidationConfig.from_dict(self.validation))
        if not isinstance(self.data, DataConfig) or not isinstance(self.validation, ValidationConfig):
            _fail("data and validation must be mappings.")

    @property
    def code_ranges(self) -> CodeRanges | None:
        """The ``hyper`` ranges, ``None`` for a plain network."""
        return None if self.hyper is None else CodeRanges.from_value(self.hyper)

    def spr_loss(self) -> SPRLoss:
        """THE SPR loss these settings define (the same class the pairwise optimiser uses)."""
        return SPRLoss(similarity=self.similarity, lncc_window=self.lncc_window, prior=self.prior,
                       alpha_prime=self.alpha_prime, lambda_max=self.lambda_max, spr=self.spr)

    def learning_rate_at(self, epoch: int) -> float:
        """AdamW step during ``epoch`` (0-based): ``learning_rate · (1 − epoch / epochs) ** lr_power``."""
        return self.learning_rate * (1.0 - epoch / self.epochs) ** self.lr_power

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-compatible values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        _check_keys(values, cls, "training")
        return cls(**values)

    def differences(self, other: TrainingConfig, *, data_locations: bool = True) -> list[str]:
        """Names of the settings (outside :data:`RUNTIME_FIELDS`) whose values differ from ``other``'s.

        With ``data_locations`` off, the ``path`` and ``atlas`` of the data and validation sources are left out: where
        the files are, not which files they are (a resumed run whose data moved; which files they are is what
        :func:`~svreg_core.training.loaders.data_fingerprint` tells)."""
        mine, theirs = self.to_dict(), other.to_dict()
        if not data_locations:
            for values in (mine, theirs):
                for section in ("data", "validation"):
                    for source in values[section]["sources"]:
                        del source["path"], source["atlas"]
        return sorted(k for k in mine if k not in RUNTIME_FIELDS and mine[k] != theirs[k])


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a setting given twice would otherwise silently take the last value
    (``json.loads``' ``object_pairs_hook``; :class:`ValueError` naming the key)."""
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice!r} is given twice in one object; keep one")
    return dict(pairs)


def _unique_key_yaml_loader() -> type:
    """PyYAML's safe loader refusing a mapping that gives a key twice (PyYAML keeps the last value without a word,
    although YAML requires unique keys): ``yaml.constructor.ConstructorError`` naming the key and both lines."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': its keys may be overridden
                    continue
                key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
                try:
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"{key!r} is given twice, on lines {first[key]} and {line}; keep one",
                            key_node.start_mark)
                    first[key] = line
                except TypeError:  # an unhashable key: refused by the safe loader itself
                    continue
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_config(path: str | Path) -> TrainingConfig:
    """Read a training configuration from a YAML (``.yaml``/``.yml``) or JSON file."""
    p = Path(path)
    text = read_text(p, "configuration file")
    if p.suffix.lower() == ".json":
        try:
            values = json.loads(text, object_pairs_hook=_unique_keys)
        except ValueError as exc:
            raise InputError(f"configuration file {p} is not valid JSON ({exc}).") from None
    else:
        import yaml
        try:
            values = yaml.load(text, Loader=_unique_key_yaml_loader())
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()
            raise InputError(f"configuration file {p} is not valid YAML ({first[0] if first else exc}).") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"configuration file {p} must hold a mapping of settings.")
    return TrainingConfig.from_dict(values)


def save_config(config: TrainingConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (``.yaml``/``.yml``) or JSON (any other suffix), replacing ``path`` only when
    complete; returns the path."""
    p = Path(path)
    values = config.to_dict()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml
        text = yaml.safe_dump(values, sort_keys=False, default_flow_style=None)
    else:
        text = json.dumps(values, indent=2) + "\n"
    with replaced_when_complete(p) as tmp:
        tmp.write_text(text)
    return p
