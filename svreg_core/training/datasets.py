"""Training samples for registration networks, all on one training grid.

A *training grid* is RAS-aligned, isotropic (``grid_spacing`` mm) and of a fixed ``grid_shape``,
centred on the foreground of the sample's reference image (:func:`svreg_core.image.network_grid.network_grid`),
the same kind of grid a network sees at inference. A sample is a dict:

* ``"fixed"``, ``"moving"``: ``(1, I, J, K)`` float32 in ``[0, 1]``;
* ``"fixed_labels"``, ``"moving_labels"`` (when known): ``(I, J, K)`` int64 label maps on the same grid;
* ``"name"``: a string naming the sample.

Real images are normalised with :func:`svreg_core.image.normalize.robust_normalize` on their own grid,
smoothed and subsampled to the grid spacing (anti-aliasing), then resampled trilinearly onto the
training grid; label maps are resampled by trilinear one-hot voting
(:func:`svreg_core.image.sampling.sample_labels`).

Randomness: every random draw of sample ``index`` during epoch ``epoch`` comes from a
:class:`torch.Generator` seeded by ``(seed, epoch, index)`` (:func:`sample_generator`), so samples do
not depend on which DataLoader worker makes them, nor on the order. Call ``set_epoch`` before each
epoch (the DataLoader hands fresh copies of the dataset to its workers at every epoch unless
``persistent_workers=True``). Datasets hold only paths, numpy arrays and plain values, so they pickle
into worker processes; mix several with :class:`torch.utils.data.ConcatDataset`.
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from svreg_core.errors import InputError
from svreg_core.image import Grid, Image, load_image
from svreg_core.image.io import image_stem
from svreg_core.image.network_grid import network_grid
from svreg_core.image.normalize import robust_normalize
from svreg_core.image.resample import (
    downsample,
    resample,
    sample_at_points,
    source_coordinates,
    target_world_points,
    world_to_source_normalized,
)
from svreg_core.image.sampling import sample_labels
from svreg_core.optim.affine import affine_register
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress
from svreg_core.text_input import read_table, table_path
from svreg_core.training.sources import TemplateSpec, is_image_file
from svreg_core.training.synthesis import (
    SynthesisConfig,
    augment_intensity,
    random_deformation,
    skull_strip,
    synth_pair,
)

#: FreeSurfer's label of (extra-ventricular) CSF.
CSF_LABEL = 24

#: File-name patterns (lower case, :mod:`fnmatch` style) that mark a NIfTI file as a label map.
LABEL_PATTERNS: tuple[str, ...] = ("*seg*", "*label*", "*aseg*", "*parc*")

Sample = dict[str, Any]


# ------------------------------------------------------------------------------------ pair lists


@dataclass(frozen=True)
class PairSpec:
    """File paths of one training pair; label maps are optional and may lie on any grid of their image's world."""

    fixed: Path
    moving: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None

    def __post_init__(self) -> None:
        for role in ("fixed", "moving", "fixed_labels", "moving_labels"):
            value = getattr(self, role)
            if value is not None:
                object.__setattr__(self, role, Path(value))

    @property
    def name(self) -> str:
        return f"{_short_name(self.fixed)}<-{_short_name(self.moving)}"

    def files(self) -> list[Path]:
        return [p for p in (self.fixed, self.moving, self.fixed_labels, self.moving_labels) if p is not None]


def _stem(path: Path) -> str:
    """File name without its image ending (``.nii.gz``, ``.nrrd``, …; :func:`~svreg_core.image.io.image_stem`)."""
    return image_stem(path.name) or path.stem


def _short_name(path: Path) -> str:
    return f"{path.parent.name}/{_stem(path)}"


def _check_files(pairs: list[PairSpec], source: Path) -> list[PairSpec]:
    """``pairs`` if every file exists; otherwise :class:`InputError` naming the first missing one."""
    if not pairs:
        raise InputError(f"{source} lists no image pairs.")
    checked: set[Path] = set()
    for pair in pairs:
        for path in pair.files():
            if path not in checked:
                if not path.is_file():
                    raise InputError(f"{source}: file not found: {path}")
                checked.add(path)
    return pairs


def is_label_file(path: Path, patterns: Sequence[str] = LABEL_PATTERNS) -> bool:
    """True when the (lower-case) file name matches one of ``patterns``."""
    return any(fnmatch.fnmatch(path.name.lower(), p) for p in patterns)


def _matching_labels(image: Path, labels: list[Path]) -> Path | None:
    """The label map of ``image`` among ``labels``: its stem starts with the image's stem and a separator."""
    stem = _stem(image)
    found = [p for p in labels if _stem(p) != stem and _stem(p).startswith(stem)
             and _stem(p)[len(stem)] in "_-."]
    return min(found, key=lambda p: len(p.name)) if found else None


def _subjects_in(folder: Path, patterns: Sequence[str]) -> list[tuple[Path, Path | None]]:
    """``(image, labels or None)`` of each subject: NIfTI files directly in ``folder`` (label maps matched
    by name) and sub-folders holding one image and at most one label map."""
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    labels = [p for p in files if is_label_file(p, patterns)]
    subjects = [(p, _matching_labels(p, labels)) for p in files if not is_label_file(p, patterns)]
    chosen = {lab for _, lab in subjects}
    for image, lab in subjects:  # e.g. sub01_aseg and sub01_aparc+aseg: the shortest name is taken
        others = [p.name for p in labels if p not in chosen and _matching_labels(image, [p]) is not None]
        if others:
            warnings.warn(f"folder {folder}: {image.name} has several label maps; {lab.name if lab else '?'} (the "
                          f"shortest name) is used, not {', '.join(others)}.", stacklevel=2)
            chosen.update(p for p in labels if p.name in others)
    stems = {_stem(p): p for p, _ in subjects}
    extending = {}  # image -> the subject image whose name it extends (sub01_brainmask.nii.gz -> sub01.nii.gz)
    for image, _ in subjects:
        stem = _stem(image)
        owner = next((stems[stem[:i]] for i, c in enumerate(stem) if c in "_-." and stem[:i] in stems), None)
        if owner is not None:
            extending[image] = owner
    if extending:  # e.g. a brain mask beside each image: trained on as a subject's image
        (image, owner), count = next(iter(extending.items())), len(extending) - 1
        names = ", ".join(p.strip("*") for p in patterns)
        also = f" (and {count} more)" if count else ""
        warnings.warn(f"folder {folder}: {image.name}{also} is taken as a subject's "
                      f"image, though its name extends {owner.name}'s: a mask or another file of that subject would "
                      f"be trained on as an image; move such files out of the folder (label maps are recognised by "
                      f"{names} in their names), or give each subject a sub-folder.", stacklevel=2)
    unmatched = [p.name for p in labels if p not in chosen]
    if unmatched:  # e.g. img01.nii.gz + seg01.nii.gz: trained without labels, validated without Dice
        more = f", … ({len(unmatched)} in all)" if len(unmatched) > 3 else ""
        warnings.warn(f"folder {folder}: the label map(s) {', '.join(unmatched[:3])}{more} match no image and are "
                      "not used (no label term, no validation Dice); name a label map after its image (sub01.nii.gz, "
                      "sub01_seg.nii.gz) or give each subject a sub-folder.", stacklevel=2)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        inner = sorted(p for p in sub.iterdir() if is_image_file(p))
        images = [p for p in inner if not is_label_file(p, patterns)]
        maps = [p for p in inner if is_label_file(p, patterns)]
        if not images:
            continue
        if len(images) > 1 or len(maps) > 1:
            raise InputError(f"subject folder {sub} must hold one image and at most one label map; "
                             f"it holds {', '.join(p.name for p in inner)}.")
        subjects.append((images[0], maps[0] if maps else None))
    return subjects


def pairs_from_folder(folder: str | Path, atlas: str | Path | None = None, *,
                      atlas_labels: str | Path | None = None,
                      label_patterns: Sequence[str] = LABEL_PATTERNS, role: str = "training") -> list[PairSpec]:
    """Training pairs from a folder of subjects.

    Subjects are the NIfTI images directly in ``folder`` whose names do not match ``label_patterns``
    (``sub01.nii.gz``; its label map is a matching file whose stem starts with the image's stem and
    ``_``, ``-`` or ``.``: ``sub01_seg.nii.gz``), and every sub-folder holding one image and at most
    one label map (``sub-01/t1.nii.gz`` + ``sub-01/labels.nii.gz``).

    Args:
        atlas: an atlas image: pairs are atlas-to-subject, the atlas **fixed** and each subject moving
            (the atlas is left out of the subjects if it lies in ``folder``). Without an atlas: all
            ordered inter-subject pairs ``(i, j)``, ``i != j`` (fixed ``i``, moving ``j``).
        atlas_labels: the atlas's label map; by default the label file next to the atlas whose name
            matches it as above, if any.
        role: what the folder holds (``"training"`` or ``"validation"``), as the error messages name it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{role} folder not found: {folder}")
    subjects = _subjects_in(folder, label_patterns)
    if atlas is None:
        if len(subjects) < 2:
            raise InputError(f"{role} folder {folder} holds {len(subjects)} image(s); inter-subject pairs "
                             f"need at least 2 (NIfTI files or sub-folders with one image each).")
        return _check_files([PairSpec(f, m, fl, ml) for i, (f, fl) in enumerate(subjects)
                             for j, (m, ml) in enumerate(subjects) if i != j], folder)
    atlas = Path(atlas).expanduser()
    if not atlas.is_file():
        raise InputError(f"atlas image not found: {atlas}")
    labels = (Path(atlas_labels) if atlas_labels is not None else
              _matching_labels(atlas, [p for p in atlas.parent.iterdir()
                                       if is_image_file(p) and is_label_file(p, label_patterns)]))
    subjects = [(m, ml) for m, ml in subjects if m.resolve() != atlas.resolve()]
    if not subjects:
        raise InputError(f"{role} folder {folder} holds no subject image besides the atlas.")
    return _check_files([PairSpec(atlas, m, labels, ml) for m, ml in subjects], folder)


def _json_path(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where} must be a file path, not {value!r}.")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def pairs_from_dataset_json(path: str | Path) -> tuple[list[PairSpec], list[PairSpec]]:
    """``(train, validation)`` pairs of a Learn2Reg / Medical Segmentation Decathlon ``dataset.json``.

    Subjects: ``"training"``, a list of ``{"image": ..., "label": ...}`` (``label`` optional), or the
    parallel lists ``"imagesTr"`` and ``"labelsTr"``. Training pairs: the ``"training_paired_images"``
    ``{"fixed", "moving"}`` entries if present (intra-subject tasks), else all ordered pairs of
    training subjects. Validation pairs: the ``"registration_val"`` ``{"fixed", "moving"}`` entries
    (empty list if absent); their subjects are left out of the training pairs. Labels are those
    listed for the same image. Relative paths are relative to the JSON file's folder.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"dataset description not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read {path} as JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path} must hold a JSON object with a 'training' list.")
    base = path.parent
    if isinstance(doc.get("training"), list):
        entries = doc["training"]
        if not all(isinstance(e, dict) and "image" in e for e in entries):
            raise InputError(f"{path}: every 'training' entry must be an object with an 'image' path.")
        images = [_json_path(e["image"], base, f"{path} training image") for e in entries]
        labels = [None if e.get("label") is None else _json_path(e["label"], base, f"{path} training label")
                  for e in entries]
    elif isinstance(doc.get("imagesTr"), list):
        images = [_json_path(v, base, f"{path} imagesTr entry") for v in doc["imagesTr"]]
        labels = [_json_path(v, base, f"{path} labelsTr entry") for v in doc.get("labelsTr", [])]
        labels = labels or [None] * len(images)
        if len(labels) != len(images):
            raise InputError(f"{path}: 'imagesTr' and 'labelsTr' list different numbers of files.")
    else:
        raise InputError(f"{path} has no 'training' (or 'imagesTr') list of images.")
    label_of = dict(zip(images, labels))

    def listed_pairs(key: str) -> list[PairSpec]:
        entries = doc.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) and {"fixed", "moving"} <= set(e)
                                                    for e in entries):
            raise InputError(f"{path}: '{key}' must be a list of {{\"fixed\": ..., \"moving\": ...}} objects.")
        out = []
        for e in entries:
            f, m = (_json_path(e[r], base, f"{path} {key} {r}") for r in ("fixed", "moving"))
            out.append(PairSpec(f, m, label_of.get(f), label_of.get(m)))
        return out

    val = listed_pairs("registration_val")
    held_out = {p for pair in val for p in (pair.fixed, pair.moving)}
    if "training_paired_images" in doc:
        train = [p for p in listed_pairs("training_paired_images") if not {p.fixed, p.moving} & held_out]
    else:
        subjects = [s for s in images if s not in held_out]
        train = [PairSpec(f, m, label_of[f], label_of[m]) for f in subjects for m in subjects if f != m]
    return _check_files(train, path), (_check_files(val, path) if val else [])


def pairs_from_csv(path: str | Path) -> list[PairSpec]:
    """Pairs listed in a CSV file with header ``fixed,moving[,fixed_labels,moving_labels]``.

    Relative paths are relative to the CSV file's folder; an empty label cell means no labels.
    """
    path = Path(path).expanduser()
    pairs = []
    for line, row in read_table(path, "pair list", ("fixed", "moving"),
                                known=("fixed", "moving", "fixed_labels", "moving_labels")):
        files = {role: table_path(row[role], path) for role in ("fixed", "moving", "fixed_labels", "moving_labels")
                 if row.get(role)}
        if "fixed" not in files or "moving" not in files:
            raise InputError(f"pair list {path}, line {line}: a fixed and a moving path are needed.")
        pairs.append(PairSpec(**files))
    return _check_files(pairs, path)


def split_pairs(pairs: Sequence[PairSpec], *, val_fraction: float | None = None, val_count: int | None = None,
                seed: int = 0) -> tuple[list[PairSpec], list[PairSpec]]:
    """Split pairs into ``(train, validation)`` by subject, so no validation image appears in training.

    Subjects are image paths. An image found in every pair (an atlas) is shared by both sides and
    never held out. ``val_count`` subjects (or ``round(val_fraction × subjects)``, at least 1) are
    drawn with ``seed``; more are taken, one at a time, while they form no pair among themselves
    (inter-subject pairs need two), with a warning. Validation pairs are those made of held-out subjects (and shared
    images) only, training pairs those without any; pairs mixing both are dropped.
    """
    if (val_fraction is None) == (val_count is None):
        raise ValueError("give exactly one of val_fraction and val_count")
    pairs = list(pairs)
    images = [{p.fixed, p.moving} for p in pairs]
    shared = set.intersection(*images) if images else set()
    candidates = sorted({p for s in images for p in s} - shared, key=str)
    if val_count is not None:
        wanted = val_count
    else:
        assert val_fraction is not None  # exactly one of the two is given
        wanted = round(float(val_fraction) * len(candidates))
    order = [candidates[i] for i in np.random.default_rng(seed).permutation(len(candidates))]
    for n in range(max(1, int(wanted)), len(candidates)):
        held = set(order[:n])
        val = [p for p, s in zip(pairs, images) if s - shared and s - shared <= held]
        if val:
            train = [p for p, s in zip(pairs, images) if not s & held]
            if not train:
                break
            if n > max(1, int(wanted)):  # the held-out subjects formed no pair until now
                asked = f"val_count {val_count}" if val_count is not None else f"val_fraction {val_fraction:g}"
                warnings.warn(f"{n} of {len(candidates)} subjects are held out for validation, not the "
                              f"{max(1, int(wanted))} that {asked} asks for: fewer formed no validation pair (an "
                              "inter-subject pair needs two held-out subjects).", stacklevel=2)
            return train, val
    every = f" ({len(shared)} of them in every pair, never held out)" if shared else ""
    raise InputError(f"cannot hold out validation subjects from {len(pairs)} pair{'s' * (len(pairs) != 1)} of "
                     f"{len(candidates) + len(shared)} images{every} and keep both training and validation pairs; "
                     "add subjects, or give validation data of its own (--val-data).")


# --------------------------------------------------------------------------------- grid helpers


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, index)`` (the same in every process)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def normalized_tensor(image: Image) -> torch.Tensor:
    """``image`` robust-normalised to ``[0, 1]`` as a ``(1, 1, I, J, K)`` float32 tensor."""
    return torch.from_numpy(robust_normalize(image.data))[None, None]


def to_training_grid(tensor: torch.Tensor, grid: Grid, target: Grid,
                     world_transform: np.ndarray | None = None) -> torch.Tensor:
    """``(1, 1, ...)`` ``tensor`` on ``grid`` anti-aliased to ``target``'s spacing and resampled onto it.

    ``world_transform``: 4x4 RAS->RAS map from ``target`` world points to ``grid`` world points.
    Returns ``(1, I, J, K)``.
    """
    smooth, smooth_grid = downsample(tensor, grid, float(target.spacing.min()))
    return resample(smooth, smooth_grid, target, world_transform)[0]


def labels_to_training_grid(labels: Image, target: Grid, world_transform: np.ndarray | None = None) -> torch.Tensor:
    """Label map ``labels`` resampled onto ``target`` by trilinear one-hot voting; ``(I, J, K)`` int64."""
    coords = source_coordinates(target, labels.grid, world_transform, dtype=torch.float64)
    return sample_labels(torch.from_numpy(np.asarray(labels.data)), coords)


def _flip(sample: Sample, generator: torch.Generator) -> Sample:
    """Flip every image and label map of ``sample`` along each axis with probability 1/2 (the same axes)."""
    axes = [a for a in range(3) if float(torch.rand((), generator=generator)) < 0.5]
    if not axes:
        return sample
    out = dict(sample)
    for key in ("fixed", "moving"):
        out[key] = sample[key].flip([a + 1 for a in axes])
    for key in ("fixed_labels", "moving_labels"):
        if key in sample:
            out[key] = sample[key].flip(axes)
    return out


class _EpochSeededDataset(Dataset):
    """A dataset whose sample ``index`` draws from :func:`sample_generator` ``(seed, epoch, index)``."""

    def __init__(self, grid_spacing: float, grid_shape: Sequence[int], seed: int) -> None:
        if grid_spacing <= 0 or len(grid_shape) != 3 or min(grid_shape) < 2:
            raise ValueError("grid_spacing must be positive and grid_shape three sizes of at least 2")
        self.grid_spacing = float(grid_spacing)
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random draws of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        return sample_generator(self.seed, self.epoch, index)

    def training_grid(self, image: Image) -> Grid:
        """The training grid centred on ``image``'s foreground."""
        return network_grid(image, self.grid_spacing, shape=self.grid_shape)


_Generated = TypeVar("_Generated", bound="_GeneratedDataset")


class _GeneratedDataset(_EpochSeededDataset):
    """``length`` samples per epoch, each drawn by :meth:`sample` from its own generator (:meth:`draw` draws
    further ones, for an epoch that passes over the source more than once)."""

    def __init__(self, grid_spacing: float, grid_shape: Sequence[int], seed: int, length: int) -> None:
        super().__init__(grid_spacing, grid_shape, seed)
        if length < 1:
            raise ValueError("length must be positive")
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.draw(index)

    def draw(self, index: int) -> Sample:
        """Sample ``index``, any whole number from 0: beyond ``length`` other random draws of the same kind."""
        return self.sample(self.generator(index))

    def with_draws(self: _Generated, length: int, seed: int) -> _Generated:
        """This dataset with ``length`` samples drawn from ``seed``: other pairs from the same data, which are shared,
        not read again (the validation pairs generated from the training data)."""
        if length < 1:
            raise ValueError("length must be positive")
        other = copy.copy(self)
        other.length, other.seed, other.epoch = int(length), int(seed), 0
        return other

    def sample(self, generator: torch.Generator) -> Sample:
        raise NotImplementedError


# ----------------------------------------------------------------------------------- real pairs


def _connected(pairs: set[tuple[str, str]]) -> bool:
    """Whether the images of ``pairs`` form one group: each reached from any other through the pairs."""
    linked: dict[str, set[str]] = {}
    for a, b in pairs:
        linked.setdefault(a, set()).add(b)
        linked.setdefault(b, set()).add(a)
    seen: set[str] = set(list(linked)[:1])
    todo = list(seen)
    while todo:
        for other in linked.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return len(seen) >= len(linked)


def _prealigned(fixed: Image, fixed_path: str, moving: Image, moving_path: str) -> np.ndarray:
    """:func:`~svreg_core.optim.affine.affine_register` of a training pair; when the pose search aligned the images
    from a rotated start, a warning names the two files (which a cohort's many pairs otherwise leave unknown)."""
    def rotated(degrees: float) -> None:
        warnings.warn(f"{moving_path} and {fixed_path}: their orientations disagree by about {degrees:.0f}° (a wrong "
                      "or missing orientation in a header?); the pre-alignment started from a rotated pose. Check "
                      "the two images' headers (e.g. in 3D Slicer).", stacklevel=3)

    return affine_register(normalized_tensor(fixed), fixed.grid, normalized_tensor(moving), moving.grid,
                           on_rotated_pose=rotated)


class PairListDataset(_EpochSeededDataset):
    """Real image pairs read from disk at every access, on a training grid centred on the fixed image.

    With ``prealign``, the moving image is first aligned to the fixed one by
    :func:`svreg_core.optim.affine.affine_register` (12 parameters), computed once, when first needed, and kept in
    memory: for each ``(fixed, moving)`` file pair when the pairs are few (atlas-to-subject: one per subject) or fall
    into groups with no pair between them, else
    through one *hub* image (:attr:`hub`, the most frequent) that every other image is aligned to, the pair's
    matrix composed from the two (``M_moving @ inv(M_fixed)``): inter-subject pairs of N images take N - 1
    registrations, not N (N - 1). A pair's own matrix, when known (``alignments`` of a run that began before the
    hub), is used as it is. Call :meth:`precompute_alignments` before handing the dataset to DataLoader workers
    (each worker has its own copy and would otherwise recompute), and keep :attr:`alignments` to pass them back as
    ``alignments`` to a later run.

    With ``augment``, both images (and label maps) are flipped along each axis with probability 1/2
    (the same axes for both).
    """

    def __init__(self, pairs: Sequence[PairSpec], grid_spacing: float, grid_shape: Sequence[int], *,
                 prealign: bool = True, augment: bool = False, seed: int = 0,
                 alignments: dict[tuple[str, str], np.ndarray] | None = None) -> None:
        super().__init__(grid_spacing, grid_shape, seed)
        self.pairs = list(pairs)
        if not self.pairs:
            raise InputError("the list of training pairs is empty.")
        self.prealign = bool(prealign)
        self.augment = bool(augment)
        self._alignments = {k: np.asarray(v, dtype=np.float64) for k, v in (alignments or {}).items()}

    def __len__(self) -> int:
        return len(self.pairs)

    @staticmethod
    def _key(pair: PairSpec) -> tuple[str, str]:
        return str(pair.fixed), str(pair.moving)

    @property
    def alignments(self) -> dict[tuple[str, str], np.ndarray]:
        """The affine matrices computed so far, keyed by ``(fixed path, moving path)``."""
        return dict(self._alignments)

    @functools.cached_property
    def hub(self) -> str | None:
        """The image (path) every other one is aligned to, when that takes fewer registrations than aligning each
        distinct pair; ``None`` (each pair aligned) otherwise, without ``prealign``, or when the pairs fall into groups
        with no pair between them (e.g. a pair list of two cohorts: one's images are not registered to the other's).
        The most frequent image of the pairs, the first by path among equals."""
        if not self.prealign:
            return None
        counts = Counter(path for pair in self.pairs for path in self._key(pair))
        hub = min(counts, key=lambda path: (-counts[path], path))
        keys = {self._key(pair) for pair in self.pairs}
        return hub if len(keys) > len(counts) - 1 and _connected(keys) else None

    @property
    def registrations(self) -> int:
        """Affine registrations :meth:`precompute_alignments` runs (those already known included)."""
        if not self.prealign:
            return 0
        return len(self._hub_images()) if self.hub is not None else len(self.pairs)

    def _hub_images(self) -> list[str]:
        """The images aligned to :attr:`hub`, in the order of the pairs."""
        images = dict.fromkeys(path for pair in self.pairs for path in self._key(pair))
        return [path for path in images if path != self.hub]

    def _from_hub(self, path: str, image: Image | None = None) -> np.ndarray:
        """4x4 RAS->RAS matrix from hub-world to ``path``-world points (computed on first use)."""
        hub = self.hub
        assert hub is not None
        if path == hub:
            return np.eye(4)
        key = (hub, path)
        if key not in self._alignments:
            reference = load_image(hub)
            image = load_image(path) if image is None else image
            self._alignments[key] = _prealigned(reference, hub, image, path)
        return self._alignments[key]

    def alignment(self, index: int, fixed: Image | None = None, moving: Image | None = None) -> np.ndarray:
        """4x4 RAS->RAS matrix from fixed-world to moving-world points of pair ``index`` (identity
        without ``prealign``); computed on first use from the images (read from disk if not given)."""
        pair = self.pairs[index]
        if not self.prealign:
            return np.eye(4)
        key = self._key(pair)
        if key in self._alignments:
            return self._alignments[key]
        if self.hub is not None:
            return self._from_hub(key[1], moving) @ np.linalg.inv(self._from_hub(key[0], fixed))
        fixed = load_image(pair.fixed) if fixed is None else fixed
        moving = load_image(pair.moving) if moving is None else moving
        self._alignments[key] = _prealigned(fixed, str(pair.fixed), moving, str(pair.moving))
        return self._alignments[key]

    def precompute_alignments(self, progress: ProgressCallback = no_progress) -> dict[tuple[str, str], np.ndarray]:
        """Compute every affine pre-alignment not yet known (:attr:`registrations` of them, one progress event
        each); returns :attr:`alignments`."""
        if self.hub is not None:
            images, hub = self._hub_images(), _short_name(Path(self.hub))
            for index, path in enumerate(images):
                self._from_hub(path)
                progress(ProgressEvent("prealign", index + 1, len(images), (index + 1) / len(images),
                                       f"affine pre-alignment {_short_name(Path(path))} to {hub}"))
            return self.alignments
        for index in range(len(self)):
            self.alignment(index)
            progress(ProgressEvent("prealign", index + 1, len(self), (index + 1) / len(self),
                                   f"affine pre-alignment {self.pairs[index].name}"))
        return self.alignments

    def __getitem__(self, index: int) -> Sample:
        pair = self.pairs[index]
        fixed = load_image(pair.fixed, name=f"fixed image of {pair.name}")
        moving = load_image(pair.moving, name=f"moving image of {pair.name}")
        grid = self.training_grid(fixed)
        transform = self.alignment(index, fixed, moving)
        sample: Sample = {"fixed": to_training_grid(normalized_tensor(fixed), fixed.grid, grid),
                          "moving": to_training_grid(normalized_tensor(moving), moving.grid, grid, transform)}
        if pair.fixed_labels is not None:
            labels = load_image(pair.fixed_labels, labels=True, name=f"fixed labels of {pair.name}")
            sample["fixed_labels"] = labels_to_training_grid(labels, grid)
        if pair.moving_labels is not None:
            labels = load_image(pair.moving_labels, labels=True, name=f"moving labels of {pair.name}")
            sample["moving_labels"] = labels_to_training_grid(labels, grid, transform)
        if self.augment:
            sample = _flip(sample, self.generator(index))
        sample["name"] = pair.name
        return sample


# ------------------------------------------------------------------------------ synthetic pairs


def _smallest_int(data: np.ndarray) -> np.ndarray:
    """``data`` as int16 when its values fit, else int32 (label maps kept in memory)."""
    fits = data.min() >= np.iinfo(np.int16).min and data.max() <= np.iinfo(np.int16).max
    return data.astype(np.int16 if fits else np.int32)


#: Least share of a label map's non-zero voxels that have the label of the next voxel (along each axis): label maps
#: are piecewise constant (SynthSeg's and Mindboggle's: 81-89 % at 1 mm, 38-48 % subsampled to 6 mm), intensity
#: images stored as integers are not (Mindboggle's int16 T1: 0.4 %).
MIN_LABEL_COHERENCE = 0.2


def _label_coherence(data: np.ndarray) -> float:
    """Share of the non-zero voxels of ``data`` whose next voxel along an axis holds the same value (all axes)."""
    same = total = 0
    for axis in range(data.ndim):
        first = np.moveaxis(data, axis, 0)
        inside = first[:-1] != 0
        same += int(((first[1:] == first[:-1]) & inside).sum())
        total += int(inside.sum())
    return same / max(total, 1)


class SyntheticPairDataset(_GeneratedDataset):
    """SynthMorph pairs synthesised from label maps (:func:`svreg_core.training.synthesis.synth_pair`).

    The label maps are read once, at construction (one ``"label maps"`` event each for ``progress``), and resampled
    onto a training grid centred on each map's brain: its labels left after
    :func:`~svreg_core.training.synthesis.skull_strip`, less CSF (which runs down the spinal canal in whole-head
    maps); all non-zero labels if none is left.
    Sample ``index`` draws a first map uniformly, and with probability ``synthesis.same_map_probability``
    uses it for both images, else a different second map.

    Args:
        length: samples per epoch.
        synthesis: the ranges of the random synthesis.
    """

    def __init__(self, label_map_paths: Sequence[str | Path], grid_spacing: float, grid_shape: Sequence[int], *,
                 length: int, synthesis: SynthesisConfig = SynthesisConfig(), seed: int = 0,
                 progress: ProgressCallback = no_progress) -> None:
        super().__init__(grid_spacing, grid_shape, seed, length)
        paths = [Path(p) for p in label_map_paths]
        if not paths:
            raise InputError("no label maps were given for synthesis.")
        self.synthesis = synthesis
        self.paths = paths
        self.names = [_stem(p) for p in paths]
        self.maps = []
        for index, path in enumerate(paths):
            self.maps.append(self._on_grid(path))
            progress(ProgressEvent("label maps", index + 1, len(paths), (index + 1) / len(paths), f"read {path.name}"))

    def _on_grid(self, path: Path) -> np.ndarray:
        labels = load_image(path, labels=True, name=f"label map {path.name}")
        coherence = _label_coherence(labels.data)
        if coherence < MIN_LABEL_COHERENCE:
            raise InputError(f"label map {path.name} looks like an intensity image, not a label map: only "
                             f"{coherence:.0%} of its labelled voxels have the label of the next voxel (a label map: "
                             "most of them); give a folder that holds label maps only.")
        brain = (skull_strip(torch.from_numpy(labels.data)).numpy() != 0) & (labels.data != CSF_LABEL)
        if not brain.any():
            brain = labels.data != 0
        grid = self.training_grid(Image(brain.astype(np.float32), labels.affine))
        return _smallest_int(labels_to_training_grid(labels, grid).numpy())

    def sample(self, generator: torch.Generator) -> Sample:
        n = len(self.maps)
        a = int(torch.randint(n, (), generator=generator))
        b = a
        if n > 1 and float(torch.rand((), generator=generator)) >= self.synthesis.same_map_probability:
            b = int(torch.randint(n - 1, (), generator=generator))
            b += int(b >= a)
        pair = synth_pair(torch.from_numpy(self.maps[a]), torch.from_numpy(self.maps[b]), generator, self.synthesis)
        return {"fixed": pair["fixed"], "moving": pair["moving"], "fixed_labels": pair["fixed_labels"],
                "moving_labels": pair["moving_labels"], "name": f"synth:{self.names[a]}<-{self.names[b]}"}


# ---------------------------------------------------------------------------- augmented templates


#: The :class:`~svreg_core.training.synthesis.SynthesisConfig` options augmented templates use: the deformation and
#: the intensity augmentation (their images are real: no label intensities, blur, skull-stripping or second map).
TEMPLATE_SYNTHESIS_OPTIONS: tuple[str, ...] = ("velocity_std_max", "velocity_spacing", "integration_steps",
                                               "bias_std_max", "bias_spacing", "noise_std_max", "gamma_std")


@dataclass(frozen=True)
class _Template:
    """A template kept in memory: normalised image anti-aliased to the training spacing, its labels."""

    name: str
    image: np.ndarray
    image_affine: np.ndarray
    grid_affine: np.ndarray
    labels: np.ndarray | None
    labels_affine: np.ndarray | None


class TemplateAugmentDataset(_GeneratedDataset):
    """Pairs made from real templates: the template and a randomly deformed, intensity-augmented copy.

    Sample ``index`` picks a template uniformly, draws a random diffeomorphism
    (:func:`~svreg_core.training.synthesis.random_deformation` on the training grid) and pulls the
    template through it (one interpolation from the anti-aliased template), then applies random
    bias, noise and gamma inside the template's support
    (:func:`~svreg_core.training.synthesis.augment_intensity`). The undeformed template is the fixed
    image and the copy the moving one; with probability ``swap_probability`` the roles are swapped.
    Label atlases (:class:`~svreg_core.training.sources.TemplateSpec.labels`) are deformed alike.

    Only the ``synthesis`` options of :data:`TEMPLATE_SYNTHESIS_OPTIONS` apply; another one set to anything but its
    default raises :class:`InputError`.
    """

    def __init__(self, templates: Sequence[TemplateSpec | str | Path], grid_spacing: float,
                 grid_shape: Sequence[int], *, length: int, seed: int = 0,
                 synthesis: SynthesisConfig = SynthesisConfig(), swap_probability: float = 0.5) -> None:
        super().__init__(grid_spacing, grid_shape, seed, length)
        specs = [t if isinstance(t, TemplateSpec) else TemplateSpec(Path(t)) for t in templates]
        if not specs:
            raise InputError("no template images were given.")
        default = SynthesisConfig()
        unused = [f.name for f in fields(SynthesisConfig) if f.name not in TEMPLATE_SYNTHESIS_OPTIONS
                  and getattr(synthesis, f.name) != getattr(default, f.name)]
        if unused:
            raise InputError(f"synthesis options that do not apply to augmented templates: {', '.join(unused)} "
                             "(real images: no label intensities, blur, skull-stripping or second map); they take "
                             f"{', '.join(TEMPLATE_SYNTHESIS_OPTIONS)}.")
        if not 0 <= swap_probability <= 1:
            raise ValueError("swap_probability must be in [0, 1]")
        self.synthesis = synthesis
        self.swap_probability = float(swap_probability)
        self.templates = [self._load(spec) for spec in specs]

    def _load(self, spec: TemplateSpec) -> _Template:
        image = load_image(spec.image, name=f"template {spec.image.name}")
        smooth, smooth_grid = downsample(normalized_tensor(image), image.grid, self.grid_spacing)
        labels = None if spec.labels is None else load_image(spec.labels, labels=True,
                                                             name=f"template labels {spec.labels.name}")
        return _Template(spec.name or _stem(spec.image), smooth[0, 0].numpy(), smooth_grid.affine,
                         self.training_grid(image).affine,
                         None if labels is None else _smallest_int(labels.data),
                         None if labels is None else labels.affine)

    def sample(self, generator: torch.Generator) -> Sample:
        template = self.templates[int(torch.randint(len(self.templates), (), generator=generator))]
        grid = Grid(self.grid_shape, template.grid_affine)
        displacement = random_deformation(self.grid_shape, generator, self.synthesis)
        linear = torch.as_tensor(grid.affine[:3, :3], dtype=torch.float64)
        points = target_world_points(grid, dtype=torch.float64)
        moved = points + displacement[0].permute(1, 2, 3, 0).double() @ linear.T
        source = torch.from_numpy(template.image)[None, None]
        source_grid = Grid(template.image.shape, template.image_affine)
        fixed = sample_at_points(source, source_grid, points)[0]
        moving = sample_at_points(source, source_grid, moved)[0]
        moving = augment_intensity(moving, generator, self.synthesis, mask=moving > 0).float()
        sample: Sample = {"fixed": fixed.float(), "moving": moving}
        if template.labels is not None:
            assert template.labels_affine is not None  # set with the labels (_load)
            labels = torch.from_numpy(template.labels)
            labels_grid = Grid(template.labels.shape, template.labels_affine)
            sample["fixed_labels"] = sample_labels(labels, world_to_source_normalized(points, labels_grid))
            sample["moving_labels"] = sample_labels(labels, world_to_source_normalized(moved, labels_grid))
        if float(torch.rand((), generator=generator)) < self.swap_probability:
            sample = {"fixed": sample["moving"], "moving": sample["fixed"],
                      **({"fixed_labels": sample["moving_labels"], "moving_labels": sample["fixed_labels"]}
                         if "fixed_labels" in sample else {})}
        sample["name"] = f"template:{template.name}"
        return sample

