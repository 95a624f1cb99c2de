"""From a :class:`~svreg_core.training.config.TrainingConfig` to training and validation pairs and batches.

Training samples are drawn by an *epoch plan*: for epoch ``e`` a generator seeded from ``(seed, e)``
lists ``steps × global batch`` sample indices (several sources mixed by their weights, each source
visited in a fresh random order, cycling when exhausted: a generated source then draws new samples, a real pair
is the same pair again, :class:`_Passes`). Step ``s`` of rank ``r`` in a world of ``W``
processes takes plan entries ``[(s·W + r)·B, (s·W + r + 1)·B)``, so one process with batch ``W·B``
sees exactly the samples ``W`` processes with batch ``B`` see together, and a resumed epoch sees the
same samples as an uninterrupted one. Loading (and synthesis) runs in DataLoader worker processes.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from svreg_core.atomic import replaced_when_complete
from svreg_core.errors import InputError
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress
from svreg_core.training.config import GENERATED_KINDS, DataSource, TrainingConfig
from svreg_core.training.state import epoch_seed

if TYPE_CHECKING:
    from svreg_core.training.datasets import PairListDataset, SyntheticPairDataset, TemplateAugmentDataset

    #: A dataset of one data source (training or validation).
    SourceDataset = PairListDataset | SyntheticPairDataset | TemplateAugmentDataset

#: Pairs per epoch of a generated source without an explicit ``length``.
DEFAULT_GENERATED_LENGTH = 100

#: Seed streams (see :func:`epoch_seed`): the epoch plan, DataLoader workers, per-source dataset seeds,
#: the validation sets, and the model's own random draws.
STREAM_PLAN, STREAM_WORKERS, STREAM_DATASET, STREAM_VALIDATION, STREAM_MODEL = range(5)

#: Keys of a sample that are batched; anything else a dataset returns (e.g. synthesis fields) is dropped.
_TENSOR_KEYS = ("fixed", "moving", "fixed_labels", "moving_labels")


@dataclass
class TrainingData:
    """The datasets of a run.

    Attributes:
        train: all training sources concatenated (indices of source ``i`` follow those of source ``i − 1``).
        sizes: samples per source (per epoch for generated ones).
        weights: mixing weight per source.
        validation: the validation pairs (``None``: no validation).
        description: one line naming the sources (recorded in checkpoints).
        pair_datasets: the datasets of real pairs, training and validation (their affine pre-alignments
            are computed once, see :func:`prepare_alignments`).
    """

    train: ConcatDataset
    sizes: list[int]
    weights: list[float]
    validation: _First | None
    description: str
    pair_datasets: list = field(default_factory=list)

    def set_epoch(self, epoch: int) -> None:
        """Tell every training dataset which epoch is drawn (their augmentation/synthesis depends on it)."""
        for dataset in self.train.datasets:
            cast("SourceDataset", dataset).set_epoch(epoch)


def _real_pairs(source: DataSource, role: str) -> tuple[list, list]:
    """``(pairs, validation pairs the source itself designates)`` of a ``role`` (``"training"``/``"validation"``)
    source."""
    from svreg_core.training import datasets

    assert source.path is not None  # DataSource requires it of every kind but 'templates'
    if source.kind == "folder":
        return datasets.pairs_from_folder(source.path, atlas=source.atlas, role=role), []
    if source.kind == "dataset_json":
        return datasets.pairs_from_dataset_json(source.path)
    return datasets.pairs_from_csv(source.path), []


#: The generated datasets :func:`build_data` has made, by source (kind, path, synthesis options).
_Made = dict[str, "SyntheticPairDataset | TemplateAugmentDataset"]


def _generated(source: DataSource, config: TrainingConfig, seed: int, length: int, made: _Made,
               progress: ProgressCallback) -> SyntheticPairDataset | TemplateAugmentDataset:
    """The dataset of a generated ``source``; a source already in ``made`` (validation pairs generated from the
    training data) shares its label maps or templates instead of reading them again."""
    from svreg_core.training import datasets, sources
    from svreg_core.training.synthesis import SynthesisConfig

    key = json.dumps([source.kind, source.path, source.synthesis], sort_keys=True)
    if key in made:
        return made[key].with_draws(length, seed)
    synthesis = SynthesisConfig.from_dict(source.synthesis)
    dataset: SyntheticPairDataset | TemplateAugmentDataset
    if source.kind == "synthetic":
        assert source.path is not None  # DataSource requires it of every kind but 'templates'
        dataset = datasets.SyntheticPairDataset(sources.synthseg_label_maps(source.path), config.network_spacing_mm,
                                                config.grid_shape, length=length, synthesis=synthesis, seed=seed,
                                                progress=progress)
    else:
        dataset = datasets.TemplateAugmentDataset(sources.builtin_templates(), config.network_spacing_mm,
                                                  config.grid_shape, length=length, synthesis=synthesis, seed=seed)
    made[key] = dataset
    return dataset


def _pair_dataset(pairs: list, config: TrainingConfig, alignments: dict, *, augment: bool,
                  seed: int) -> PairListDataset:
    from svreg_core.training.datasets import PairListDataset

    return PairListDataset(pairs, config.network_spacing_mm, config.grid_shape, prealign=config.data.prealign,
                           augment=augment, seed=seed, alignments=alignments)


class _First(Dataset):
    """The first ``n`` samples of a dataset (the validation subset evaluated every epoch)."""

    def __init__(self, dataset: SourceDataset | ConcatDataset, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.dataset[index]


class _Passes(Dataset):
    """The training sources, read with an epoch plan's passes: index ``i + p·N`` (``N`` samples in all) is sample
    ``i`` in the ``p``-th pass of the epoch over its source. A generated source draws new samples in every pass
    (its :meth:`draw` ``i + p·length``: other random draws), so an epoch longer than its length (``steps_per_epoch``,
    several DDP ranks) never repeats a pair; a real pair is the same pair in every pass."""

    def __init__(self, sources: ConcatDataset) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Any:
        passes, flat = divmod(index, len(self.sources))
        if not passes:
            return self.sources[flat]
        from svreg_core.training.datasets import PairListDataset

        source = bisect.bisect_right(self.sources.cumulative_sizes, flat)
        dataset = cast("SourceDataset", self.sources.datasets[source])
        local = flat - (self.sources.cumulative_sizes[source - 1] if source else 0)
        if isinstance(dataset, PairListDataset):
            return dataset[local]
        return dataset.draw(local + passes * len(dataset))


def with_passes(plan: Sequence[int], total: int) -> list[int]:
    """``plan``'s indices (into ``total`` samples) with the pass each belongs to: the ``p``-th use of an index in
    the plan becomes ``index + p·total`` (:class:`_Passes`; :func:`epoch_plan` uses every index of a source once
    before any again, so that is the source's ``p``-th pass)."""
    uses: Counter[int] = Counter()
    out = []
    for index in plan:
        out.append(index + uses[index] * total)
        uses[index] += 1
    return out


def build_data(config: TrainingConfig, alignments: dict[tuple[str, str], np.ndarray] | None = None,
               progress: ProgressCallback = no_progress) -> TrainingData:
    """The training and validation datasets ``config`` describes; missing or empty data raise InputError.

    Validation pairs: ``config.validation.sources`` if any; else the pairs a ``dataset.json`` designates
    plus a held-out ``fraction`` of the other real sources' subjects
    (:func:`svreg_core.training.datasets.split_pairs`); else, for generated data only, pairs generated
    with a seed of their own. A ``fraction`` of 0 without sources turns validation off.

    ``alignments``: known affine pre-alignments (:func:`load_alignments`), keyed by (fixed, moving) path.
    ``progress``: one ``"label maps"`` event per label map read for synthesis (each is read once).
    """
    alignments = alignments or {}
    from svreg_core.training.datasets import split_pairs

    if not config.data.sources:
        raise InputError("no training data: give --data FOLDER, --dataset-json FILE, --csv FILE, "
                         "--synthetic LABEL_DIR or --templates (or data sources in the configuration file).")
    val_cfg = config.validation
    hold_out = not val_cfg.sources and val_cfg.fraction > 0 and val_cfg.pairs > 0
    train_sets: list[SourceDataset] = []
    pair_sets: list[Dataset] = []
    held_out: list = []
    made: _Made = {}
    for index, source in enumerate(config.data.sources):
        seed = epoch_seed(config.seed, index, STREAM_DATASET)
        if source.kind in GENERATED_KINDS:
            train_sets.append(_generated(source, config, seed, source.length or DEFAULT_GENERATED_LENGTH, made,
                                         progress))
            continue
        pairs, designated = _real_pairs(source, "training")
        if hold_out and designated:
            held_out.extend(designated)
        elif hold_out:
            pairs, val_pairs = split_pairs(pairs, val_fraction=val_cfg.fraction, seed=config.seed)
            held_out.extend(val_pairs)
        train_sets.append(_pair_dataset(pairs, config, alignments, augment=config.data.augment, seed=seed))
        pair_sets.append(train_sets[-1])
    validation = None
    if val_cfg.pairs > 0:
        validation, val_pair_sets = _validation(config, held_out, alignments, made, progress)
        pair_sets += val_pair_sets
    if config.label_weight > 0:  # before any training: the step needs labels with every pair it sees
        _require_labels([*train_sets, *_parts(validation)])
    _warn_validation_on_training_images(train_sets, _parts(validation))
    _warn_validation_without_labels(_parts(validation))
    weights = [s.weight for s in config.data.sources]
    description = " + ".join(s.describe() + (f" (weight {s.weight:g})" if len(weights) > 1 else "")
                             for s in config.data.sources)
    return TrainingData(ConcatDataset(train_sets), [len(d) for d in train_sets], weights, validation, description,
                        pair_sets)


def _parts(dataset: Dataset | None) -> list[Dataset]:
    """The source datasets inside ``dataset`` (a :class:`_First` or a concatenation of them)."""
    if dataset is None:
        return []
    if isinstance(dataset, _First):
        return _parts(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [part for inner in dataset.datasets for part in _parts(inner)]
    return [dataset]


def _warn_validation_on_training_images(train_sets: Sequence[Dataset], validation_sets: Sequence[Dataset]) -> None:
    """Warn when validation pairs use images the network trains on (``--val-data`` listing training subjects): their
    Dice is then no held-out score, and ``best/`` is chosen on training data. An image in every pair of a training
    source (its atlas) is shared by design, as :func:`~svreg_core.training.datasets.split_pairs` shares it."""
    from svreg_core.training.datasets import PairListDataset

    trained: set[Path] = set()
    shared: set[Path] = set()
    for dataset in train_sets:
        if isinstance(dataset, PairListDataset):
            images = [{p.fixed.resolve(), p.moving.resolve()} for p in dataset.pairs]
            trained.update(*images)
            shared.update(set.intersection(*images))
    pairs = [p for d in validation_sets if isinstance(d, PairListDataset) for p in d.pairs]
    seen = [p for p in pairs if {p.fixed.resolve(), p.moving.resolve()} & (trained - shared)]
    if seen:
        image = next(f for f in (seen[0].fixed, seen[0].moving) if f.resolve() in trained - shared)
        warnings.warn(f"{len(seen)} of the {len(pairs)} validation pairs use images the network trains on (e.g. "
                      f"{image}): their Dice is not a held-out score and best/ is chosen on training data; validate "
                      "on subjects that are not in the training data.", stacklevel=3)


def _warn_validation_without_labels(validation_sets: Sequence[Dataset]) -> None:
    """Warn when no real validation pair has label maps for both images (an ``--atlas`` without a label map beside
    it, subjects whose label maps are not named after them): every epoch then goes without a validation Dice and
    ``best/`` is chosen by the validation loss."""
    from svreg_core.training.datasets import PairListDataset

    pairs = [p for d in validation_sets if isinstance(d, PairListDataset) for p in d.pairs]
    if pairs and all(p.fixed_labels is None or p.moving_labels is None for p in pairs):
        lacking = next(f for f, labels in ((pairs[0].fixed, pairs[0].fixed_labels),
                                           (pairs[0].moving, pairs[0].moving_labels)) if labels is None)
        warnings.warn(f"no validation pair has label maps for both images ({lacking} has none): every epoch goes "
                      "without a validation Dice and best/ is chosen by the validation loss; to score Dice, give "
                      "label maps named after their images (atlas_seg.nii.gz beside atlas.nii.gz).", stacklevel=3)


def _require_labels(datasets: Sequence[Dataset]) -> None:
    """Raise :class:`InputError` naming the first pair or template without label maps (``label_weight > 0``)."""
    from svreg_core.training.datasets import PairListDataset, TemplateAugmentDataset

    for dataset in datasets:
        if isinstance(dataset, PairListDataset):
            missing = next((f"the pair {p.fixed} / {p.moving}" for p in dataset.pairs
                            if p.fixed_labels is None or p.moving_labels is None), None)
        elif isinstance(dataset, TemplateAugmentDataset):
            missing = next((f"the template {t.name}" for t in dataset.templates if t.labels is None), None)
        else:  # synthetic pairs are made from label maps
            missing = None
        if missing is not None:
            raise InputError(f"label_weight > 0 needs label maps with every training and validation pair, and "
                             f"{missing} has none; set label_weight: 0, or give labels for every image.")


def spread(pairs: Sequence[Any], n: int) -> list[Any]:
    """``n`` of ``pairs`` spread evenly over the list, in its order (all when there are no more): the validation
    pairs evaluated every epoch. The first ``n`` of an inter-subject list, ordered by fixed subject, would all
    share one fixed image."""
    if len(pairs) <= n:
        return list(pairs)
    return [pairs[i * len(pairs) // n] for i in range(n)]


def _validation(config: TrainingConfig, held_out: list, alignments: dict, made: _Made,
                progress: ProgressCallback) -> tuple[_First | None, list[Dataset]]:
    cfg = config.validation
    sets: list[SourceDataset] = []
    pair_sets: list[Dataset] = []
    if cfg.sources:
        for index, source in enumerate(cfg.sources):
            seed = epoch_seed(config.seed, index, STREAM_VALIDATION)
            if source.kind in GENERATED_KINDS:
                sets.append(_generated(source, config, seed, source.length or cfg.pairs, made, progress))
            else:  # a dataset.json's own validation pairs when it names some (its training pairs otherwise);
                # only the pairs evaluated are built (and pre-aligned)
                pairs, designated = _real_pairs(source, "validation")
                sets.append(_pair_dataset(spread(designated or pairs, cfg.pairs), config, alignments,
                                          augment=False, seed=seed))
                pair_sets.append(sets[-1])
    elif held_out:
        sets.append(_pair_dataset(spread(held_out, cfg.pairs), config, alignments, augment=False, seed=config.seed))
        pair_sets.append(sets[-1])
    elif cfg.fraction > 0:  # generated training data only: generate validation pairs with a seed of their own
        for index, source in enumerate(s for s in config.data.sources if s.kind in GENERATED_KINDS):
            seed = epoch_seed(config.seed, index, STREAM_VALIDATION)
            sets.append(_generated(source, config, seed, cfg.pairs, made, progress))
    if not sets:
        return None, []
    return _First(sets[0] if len(sets) == 1 else ConcatDataset(sets), cfg.pairs), pair_sets


def load_alignments(cache: Path) -> dict[tuple[str, str], np.ndarray]:
    """Affine pre-alignments saved by :func:`prepare_alignments` (``{}`` if none or unreadable)."""
    try:
        saved = json.loads(Path(cache).read_text())
        return {tuple(key.split("|", 1)): np.asarray(matrix, dtype=np.float64) for key, matrix in saved.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


#: How :func:`data_fingerprint` identifies a file (recorded with it: a record made another way is not compared).
FILE_IDENTITY = "name, size and sampled bytes"
#: :func:`_file_identity` reads this many blocks of ``SAMPLE_BYTES`` bytes, spread evenly over the file.
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 4096


def relocate_alignments(alignments: dict[tuple[str, str], np.ndarray], before: TrainingConfig,
                        now: TrainingConfig) -> dict[tuple[str, str], np.ndarray]:
    """``alignments`` of a run whose data sources were at other places in its configuration ``before``, keyed by the
    places ``now`` names: a path below a source's earlier folder (a ``folder`` source's own, a ``dataset_json`` or
    ``csv`` file's folder) is moved below its folder now, an earlier atlas becomes the atlas now (sources are matched
    in order, training then validation). Which files they are is :func:`data_fingerprint`'s to check."""
    moves: dict[str, str] = {}
    pairs = zip((*before.data.sources, *before.validation.sources), (*now.data.sources, *now.validation.sources))
    for old, new in pairs:
        if old.kind != new.kind or old.path is None or new.path is None:
            continue
        places = [(Path(old.path).expanduser(), Path(new.path).expanduser())]
        if old.kind != "folder":
            places = [(a.parent, b.parent) for a, b in places]
        if old.atlas is not None and new.atlas is not None:
            places.append((Path(old.atlas).expanduser(), Path(new.atlas).expanduser()))
        moves.update({str(a): str(b) for a, b in places if a != b})

    def moved(path: str) -> str:
        for a, b in moves.items():
            if path == a or path.startswith(a + os.sep):
                return b + path[len(a):]
        return path

    return {(moved(fixed), moved(moving)): matrix for (fixed, moving), matrix in alignments.items()}


def _file_identity(path: str | Path) -> list:
    """What identifies a data file for :func:`data_fingerprint` (:data:`FILE_IDENTITY`): its name, its size in bytes
    and a SHA-256 of :data:`SAMPLE_BLOCKS` blocks of its bytes spread evenly over it (``None`` when it cannot be read).
    Not its folder: a run whose data moved (to a cluster's node-local scratch, a renamed project folder) resumes on
    the same files, while other files of the same names (relative paths given in another folder, another cohort's
    folder) differ in their bytes even where their sizes agree (uncompressed images of one shape), at the cost of
    64 KiB read per file."""
    try:
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in range(SAMPLE_BLOCKS):
                file.seek(block * max(size - SAMPLE_BYTES, 0) // (SAMPLE_BLOCKS - 1))
                digest.update(file.read(SAMPLE_BYTES))
    except OSError:
        return [Path(path).name, None, None]
    return [Path(path).name, size, digest.hexdigest()]


def data_fingerprint(data: TrainingData) -> dict[str, Any]:
    """What a resumed run must find again: ``training_pairs`` and ``validation_pairs``, the numbers of real pairs, and
    ``sha256``, a digest of every real pair's files and of the label maps or templates each generated source
    draws from, in order (the epoch plans index them, and a held-out validation split depends on them), each file
    identified by :func:`_file_identity` (``files``: :data:`FILE_IDENTITY`)."""
    from svreg_core.training.datasets import PairListDataset, SyntheticPairDataset, TemplateAugmentDataset

    digest = hashlib.sha256()
    counts = {"training_pairs": 0, "validation_pairs": 0}
    for key, datasets in (("training_pairs", data.train.datasets), ("validation_pairs", _parts(data.validation))):
        for dataset in datasets:
            items: list = []
            if isinstance(dataset, PairListDataset):
                counts[key] += len(dataset.pairs)
                items = [[path and _file_identity(path)
                          for path in (pair.fixed, pair.moving, pair.fixed_labels, pair.moving_labels)]
                         for pair in dataset.pairs]
            elif isinstance(dataset, SyntheticPairDataset):
                items = [_file_identity(path) for path in dataset.paths]
            elif isinstance(dataset, TemplateAugmentDataset):
                items = [template.name for template in dataset.templates]
            digest.update(json.dumps([key, type(dataset).__name__, items]).encode())
    return {**counts, "sha256": digest.hexdigest(), "files": FILE_IDENTITY}


def check_pair_files(data: TrainingData, progress: ProgressCallback = no_progress,
                     labels: Sequence[int] | None = None) -> None:
    """Read every label map of the real pairs, and every image that no pre-alignment reads, once before training.

    A pair's files are otherwise read only when a batch draws it (a validation pair after the first epoch, a pair
    that is not pre-aligned at any step), so an unreadable or unusable file (not 3-D, a label map holding values that
    are not whole numbers, ...) would stop the run hours in. Images that are pre-aligned are read (and refused) by
    :func:`prepare_alignments`, before training too. Progress events have the stage ``"check"``.

    ``labels``: the label values validation scores (``validation.labels``; ``None``: those present in both maps).

    Raises:
        InputError: naming the first unusable file; or ``labels`` of which none occurs in the real validation pairs'
            label maps (a typo, another atlas's numbers), which would leave every epoch without a validation Dice.
    """
    from svreg_core.image import load_image
    from svreg_core.metrics.overlap import present_labels
    from svreg_core.training.datasets import PairListDataset

    validation_maps = {path for dataset in _parts(data.validation) if isinstance(dataset, PairListDataset)
                       for pair in dataset.pairs for path in (pair.fixed_labels, pair.moving_labels)
                       if path is not None}
    found: set[int] = set()  # the values of the validation label maps

    files: dict[tuple[Path, bool], None] = {}  # (path, read as a label map), in the order of the pairs
    for dataset in data.pair_datasets:
        for pair in dataset.pairs:
            images = () if dataset.prealign else (pair.fixed, pair.moving)
            files.update({(path, False): None for path in images})
            files.update({(path, True): None for path in (pair.fixed_labels, pair.moving_labels) if path is not None})
    for index, (path, is_labels) in enumerate(files):
        # the file's name in the name: some of load_image's messages give only the name (its NaN voxels)
        kind = "label map" if is_labels else "image"
        image = load_image(path, labels=is_labels, name=f"{kind} {path.name} in {path.parent}")
        if labels is not None and is_labels and path in validation_maps:
            found.update(int(v) for v in present_labels(image.data))
        progress(ProgressEvent("check", index + 1, len(files), (index + 1) / len(files), f"read {path.name}"))
    if labels is not None and validation_maps and not found & set(labels):
        held = ", ".join(str(v) for v in sorted(found - {0})[:8]) + (", …" if len(found - {0}) > 8 else "")
        raise InputError(f"none of the validation labels {', '.join(map(str, labels))} occurs in the validation "
                         f"pairs' label maps (they hold {held or 'only 0'}), so no epoch would get a validation Dice; "
                         "correct the labels of the configuration's validation section.")


#: Seconds between two saves of the alignment cache while the pre-alignments are computed.
ALIGNMENT_SAVE_INTERVAL_S = 30.0


def prepare_alignments(data: TrainingData, cache: Path, *, write: bool,
                       progress: ProgressCallback = no_progress) -> None:
    """Compute the affine pre-alignment of every real pair once, in this process, before loading starts.

    DataLoader workers get copies of the datasets at every epoch, so alignments computed inside them
    would be lost. The matrices are saved in ``cache`` (JSON ``{"<fixed path>|<moving path>": 4x4}``;
    only by the process with ``write``) and handed to :func:`build_data` by a resumed run: at the end, every
    :data:`ALIGNMENT_SAVE_INTERVAL_S` seconds meanwhile, so a run killed while aligning a large cohort (a few
    seconds a pair) loses at most that much of it, and when it is stopped (Ctrl-C, SIGTERM, an unusable image).

    ``progress`` gets one ``"prealign"`` event per registration (a pair's, or an image's to its dataset's hub:
    :class:`~svreg_core.training.datasets.PairListDataset`), counted over the training and validation pairs together.
    """
    known: dict[str, list] = {}
    saved = time.monotonic()
    aligned = [d for d in data.pair_datasets if d.prealign]
    total, done = sum(d.registrations for d in aligned), 0

    def save() -> None:
        with replaced_when_complete(cache) as tmp:
            tmp.write_text(json.dumps(known))

    for dataset in aligned:

        def step(event: ProgressEvent, dataset: Any = dataset) -> None:
            nonlocal saved, done
            done += 1
            progress(ProgressEvent(event.stage, done, total, done / total, event.message))
            if write and time.monotonic() - saved >= ALIGNMENT_SAVE_INTERVAL_S:
                known.update(_keyed(dataset.alignments))
                save()
                saved = time.monotonic()

        try:
            known.update(_keyed(dataset.precompute_alignments(step)))
        except BaseException:  # stopped: what was computed is kept for the same command run again
            known.update(_keyed(dataset.alignments))
            if write and known:
                save()
            raise
    if write and known:
        save()


def _keyed(alignments: dict[tuple[str, str], np.ndarray]) -> dict[str, list]:
    """Alignments keyed as the cache stores them, ``"<fixed path>|<moving path>"``."""
    return {f"{f}|{m}": matrix.tolist() for (f, m), matrix in alignments.items()}


def steps_per_epoch(config: TrainingConfig, data: TrainingData, world_size: int) -> int:
    """``config.steps_per_epoch``, or one pass over all training samples with the global batch."""
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    return max(1, math.ceil(sum(data.sizes) / (config.batch_size * world_size)))


def epoch_plan(sizes: Sequence[int], weights: Sequence[float], count: int, seed: int) -> list[int]:
    """``count`` indices into the concatenated sources for one epoch (see the module docstring).

    Each sample picks a source with probability proportional to its weight (a single source is always
    picked), then takes the next index of that source's random permutation, drawing a new permutation
    whenever the current one is used up.
    """
    generator = torch.Generator().manual_seed(seed)
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    if len(sizes) == 1:
        choice = [0] * count
    else:
        choice = torch.multinomial(torch.tensor(weights, dtype=torch.float64), count, replacement=True,
                                   generator=generator).tolist()
    queues: list[list[int]] = [[] for _ in sizes]
    plan = []
    for source in choice:
        if not queues[source]:
            queues[source] = torch.randperm(sizes[source], generator=generator).tolist()[::-1]
        plan.append(offsets[source] + queues[source].pop())
    return plan


def rank_batches(plan: Sequence[int], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """The batches of ``rank``: step ``s`` takes ``plan[(s·W + r)·B : (s·W + r + 1)·B]``."""
    global_batch = batch_size * world_size
    return [list(plan[start + rank * batch_size:start + (rank + 1) * batch_size])
            for start in range(0, len(plan) - global_batch + 1, global_batch)]


def collate_pairs(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: images ``(N, 1, I, J, K)``; label maps ``(N, I, J, K)`` when every
    sample has them; ``name``: the samples' names."""
    batch: dict[str, Any] = {}
    for key in _TENSOR_KEYS:
        if all(key in s for s in samples):
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    batch["name"] = [str(s.get("name", "")) for s in samples]
    return batch


def epoch_loader(data: TrainingData, config: TrainingConfig, epoch: int, steps: int, rank: int = 0,
                 world_size: int = 1) -> DataLoader:
    """The DataLoader of this rank's training batches in ``epoch`` (``steps`` batches)."""
    data.set_epoch(epoch)
    plan = with_passes(epoch_plan(data.sizes, data.weights, steps * config.batch_size * world_size,
                                  epoch_seed(config.seed, epoch, STREAM_PLAN)), len(data.train))
    # an explicit generator: DataLoader would otherwise draw its workers' base seed from torch's global RNG
    workers_seed = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, STREAM_WORKERS))
    return DataLoader(_Passes(data.train), batch_sampler=rank_batches(plan, config.batch_size, rank, world_size),
                      num_workers=config.num_workers, collate_fn=collate_pairs, generator=workers_seed,
                      pin_memory=False)


def validation_loader(data: TrainingData, config: TrainingConfig, rank: int = 0, world_size: int = 1
                      ) -> DataLoader | None:
    """One pair per batch; in DDP each rank evaluates every ``world_size``-th pair."""
    if data.validation is None or len(data.validation) == 0:
        return None
    indices = [[i] for i in range(rank, len(data.validation), world_size)]
    return DataLoader(data.validation, batch_sampler=indices, num_workers=min(config.num_workers, len(indices)),
                      collate_fn=collate_pairs)
