"""The validation set of ``svreg tune``: image pairs with label maps or landmarks, from a folder or a list file.

Folder layout (one sub-folder per pair, sorted by name; the folder itself may also be one pair)::

    validation/
      case01/  fixed.nii.gz  moving.nii.gz  fixed_labels.nii.gz  moving_labels.nii.gz
      case02/  fixed.nii.gz  moving.nii.gz  fixed_landmarks.csv  moving_landmarks.csv
      ...

Accepted file names (case-insensitive; images with an ending of :data:`svreg_core.image.io.IMAGE_SUFFIXES`:
``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``): ``fixed`` /
``fixed_image``, ``moving`` / ``moving_image``, ``fixed_labels`` / ``fixed_label`` / ``fixed_seg``,
``moving_labels`` / ``moving_label`` / ``moving_seg``; landmarks (point files read by
:func:`svreg_core.apply.read_points`: ``.csv`` with x, y, z columns in RAS mm, Slicer ``.fcsv`` or
``.mrk.json``) ``fixed_landmarks`` / ``fixed_points`` / ``fixed_keypoints`` and the ``moving_`` ones:
the n-th fixed point corresponds to the n-th moving point.

Which of labels and landmarks a pair needs depends on the objective (``needs``: Dice needs labels, the
target registration error landmarks); the other kind is optional and not read.

List file: a CSV with a header ``fixed,moving`` plus ``fixed_labels,moving_labels`` and/or
``fixed_landmarks,moving_landmarks`` (and optionally ``name``), or a JSON list of objects with the same
keys (or ``{"pairs": [...]}``). Relative paths are relative to the list file.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from svreg_core.apply import points_suffix, read_landmarks
from svreg_core.errors import InputError
from svreg_core.image import Image, load_image
from svreg_core.image.image import conform_to_grid
from svreg_core.image.io import image_stem
from svreg_core.text_input import read_table, read_text, table_path

#: Accepted file stems (lower case) per role, in role order: images, label maps, landmarks.
ROLE_STEMS: dict[str, tuple[str, ...]] = {
    "fixed": ("fixed", "fixed_image", "fixed_img"),
    "moving": ("moving", "moving_image", "moving_img"),
    "fixed_labels": ("fixed_labels", "fixed_label", "fixed_seg", "fixed_segmentation"),
    "moving_labels": ("moving_labels", "moving_label", "moving_seg", "moving_segmentation"),
    "fixed_landmarks": ("fixed_landmarks", "fixed_points", "fixed_keypoints"),
    "moving_landmarks": ("moving_landmarks", "moving_points", "moving_keypoints"),
}
ROLES = tuple(ROLE_STEMS)
#: The roles a pair needs for each kind of objective (``needs`` of :func:`discover_pairs`).
NEEDS: dict[str, tuple[str, ...]] = {"labels": ("fixed", "moving", "fixed_labels", "moving_labels"),
                                     "landmarks": ("fixed", "moving", "fixed_landmarks", "moving_landmarks")}
T = TypeVar("T")
P = TypeVar("P")


@dataclass(frozen=True)
class Pair(Generic[T, P]):
    """One pair: its files (:data:`ValidationPair`) or its contents (:data:`LoadedPair`: images, and landmarks
    as ``(N, 3)`` RAS mm arrays). Labels and landmarks are ``None`` where the pair has none."""

    name: str
    fixed: T
    moving: T
    fixed_labels: T | None = None
    moving_labels: T | None = None
    fixed_landmarks: P | None = None
    moving_landmarks: P | None = None


ValidationPair = Pair[Path, Path]
LoadedPair = Pair[Image, np.ndarray]


def _stem(name: str, role: str) -> str | None:
    """``name`` (lower case) without its extension if it has one of ``role``'s file kinds."""
    if not role.endswith("landmarks"):
        return image_stem(name)
    suffix = points_suffix(name)
    return None if suffix is None else name[: -len(suffix)]


def _pair_files(folder: Path) -> dict[str, Path]:
    """Role -> file directly inside ``folder`` (only the roles found)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = path.name.lower()
        for role in (r for r, stems in ROLE_STEMS.items() if _stem(name, r) in stems):
            if role in found:
                raise InputError(f"pair folder {folder} has two {role} files: {found[role].name} and {path.name}.")
            found[role] = path
    return found


def _example(role: str) -> str:
    suffix = ".csv" if role.endswith("landmarks") else ".nii.gz"
    return " or ".join(f"{s}{suffix}" for s in ROLE_STEMS[role][:2])


def _complete(folder: Path, files: dict[str, Path], what: str, needs: str) -> ValidationPair:
    missing = [_example(r) for r in NEEDS[needs] if r not in files]
    if missing:
        raise InputError(f"{what} {folder} lacks {', '.join(missing)}.")
    return ValidationPair(folder.name, files["fixed"], files["moving"], **{r: files.get(r) for r in ROLES[2:]})


def _pairs_from_folder(folder: Path, needs: str) -> list[ValidationPair]:
    own = _pair_files(folder)  # the folder itself may be one pair
    if own:
        return [_complete(folder, own, "validation folder", needs)]
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    pairs = [_complete(sub, files, "pair folder", needs) for sub in subs if (files := _pair_files(sub))]
    if not pairs:
        raise InputError(f"validation folder {folder} holds no pairs: expected sub-folders with "
                         f"{', '.join(_example(r) for r in NEEDS[needs])}.")
    return pairs


def _rows(path: Path, needs: str) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(read_text(path, "pair list"))
        except ValueError as exc:
            raise InputError(f"pair list {path} is not valid JSON ({exc}).") from None
        doc = doc.get("pairs") if isinstance(doc, dict) else doc
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise InputError(f"pair list {path} must be a JSON list of objects (or {{\"pairs\": [...]}}).")
        return doc
    return [row for _, row in read_table(path, "pair list", NEEDS[needs], known=ROLES)]


def _pairs_from_list_file(path: Path, needs: str) -> list[ValidationPair]:
    pairs = []
    for index, row in enumerate(_rows(path, needs), start=1):
        for role in NEEDS[needs]:
            if not row.get(role):
                raise InputError(f"pair list {path}, entry {index}: no '{role}' path.")
        files = {r: table_path(str(row[r]), path) for r in ROLES if row.get(r)}
        pairs.append(ValidationPair(str(row.get("name") or f"pair{index:03d}"), files["fixed"], files["moving"],
                                    **{r: files.get(r) for r in ROLES[2:]}))
    if not pairs:
        raise InputError(f"pair list {path} lists no pairs.")
    return pairs


def discover_pairs(source: str | Path, needs: str = "labels") -> list[ValidationPair]:
    """The validation pairs of a folder or a list file (``.csv``, ``.tsv``, ``.json``), checked to exist.

    ``needs``: ``"labels"`` (every pair must have label maps) or ``"landmarks"`` (landmark files).
    """
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(NEEDS)}, not {needs!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        pairs = _pairs_from_folder(path, needs)
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".json", ".txt"):
        pairs = _pairs_from_list_file(path, needs)
    elif path.is_file():
        raise InputError(f"{path} is neither a folder of pairs nor a .csv/.tsv/.json pair list.")
    else:
        raise InputError(f"validation set not found: {path} (expected a folder of pairs or a pair list file).")
    pairs = [ValidationPair(p.name, p.fixed, p.moving, **{r: getattr(p, r) if r in NEEDS[needs] else None
                                                           for r in ROLES[2:]})  # the other kind is never read
             for p in pairs]
    names = [p.name for p in pairs]
    for pair in pairs:
        if names.count(pair.name) > 1:
            raise InputError(f"two validation pairs are named {pair.name!r}; pair names must be unique.")
        for role in (r for r in ROLES if getattr(pair, r) is not None):
            if not getattr(pair, role).is_file():
                raise InputError(f"validation pair {pair.name!r}: {role} file not found: {getattr(pair, role)}")
    return pairs


def load_pair(pair: ValidationPair) -> LoadedPair:
    """Read ``pair``'s images, label maps and landmarks (those it has); :class:`InputError` (naming the pair) for
    unreadable files, label maps off their image's grid, or landmark files that do not correspond
    (:func:`~svreg_core.apply.read_landmarks`)."""
    images = {r: load_image(getattr(pair, r), labels="labels" in r, name=f"pair {pair.name!r} {r}")
              for r in ROLES[:4] if getattr(pair, r) is not None}
    for role in ("fixed", "moving"):
        if images.get(f"{role}_labels") is not None:
            images[f"{role}_labels"] = conform_to_grid(images[f"{role}_labels"], images[role].grid,
                                                       f"pair {pair.name!r}: the {role} labels", f"{role} image")
    try:
        landmarks = read_landmarks(pair.fixed_landmarks, pair.moving_landmarks)
    except InputError as exc:
        raise InputError(f"pair {pair.name!r}: {exc}") from None
    points = {} if landmarks is None else dict(zip(ROLES[4:], landmarks))
    return LoadedPair(pair.name, images["fixed"], images["moving"], images.get("fixed_labels"),
                      images.get("moving_labels"), **points)


def check_pairs(pairs: Sequence[ValidationPair],
                check: Callable[[LoadedPair], None] | None = None) -> dict[str, str]:
    """Before any trial: read every pair once (:func:`load_pair`'s checks and ``check``'s, the objective's, so an
    unusable file is refused before trials register the pairs before it) and return each pair's fingerprint,
    ``{name: sha256}`` of its arrays and their geometry: a study resumed on other images (the same names) is
    refused by comparing them."""
    fingerprints = {}
    for pair in pairs:
        data = load_pair(pair)
        if check is not None:
            check(data)
        digest = hashlib.sha256()
        for part in (data.fixed, data.moving, data.fixed_labels, data.moving_labels):
            if part is not None:
                digest.update(np.ascontiguousarray(part.data).tobytes())
                digest.update(np.asarray(part.affine, dtype=np.float64).tobytes())
        for points in (data.fixed_landmarks, data.moving_landmarks):
            if points is not None:
                digest.update(np.ascontiguousarray(points, dtype=np.float64).tobytes())
        fingerprints[pair.name] = digest.hexdigest()
    return fingerprints
