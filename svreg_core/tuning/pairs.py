"""The validation set of ``svreg tune``: labelled image pairs from a folder or a list file.

Folder layout (one sub-folder per pair, sorted by name; the folder itself may also be one pair)::

    validation/
      case01/  fixed.nii.gz  moving.nii.gz  fixed_labels.nii.gz  moving_labels.nii.gz
      case02/  ...

Accepted file names (case-insensitive; extensions ``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``):
``fixed`` / ``fixed_image``, ``moving`` / ``moving_image``, ``fixed_labels`` / ``fixed_label`` /
``fixed_seg``, ``moving_labels`` / ``moving_label`` / ``moving_seg``.

List file: a CSV with a header ``fixed,moving,fixed_labels,moving_labels[,name]`` or a JSON list of
objects with the same keys (or ``{"pairs": [...]}``). Relative paths are relative to the list file.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from svreg_core.errors import InputError
from svreg_core.image import Image, load_image

#: Accepted file stems (lower case) per role, in role order.
ROLE_STEMS: dict[str, tuple[str, ...]] = {
    "fixed": ("fixed", "fixed_image", "fixed_img"),
    "moving": ("moving", "moving_image", "moving_img"),
    "fixed_labels": ("fixed_labels", "fixed_label", "fixed_seg", "fixed_segmentation"),
    "moving_labels": ("moving_labels", "moving_label", "moving_seg", "moving_segmentation"),
}
ROLES = tuple(ROLE_STEMS)
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".mgh")
T = TypeVar("T")


@dataclass(frozen=True)
class Pair(Generic[T]):
    """One labelled pair: its files (:data:`ValidationPair`) or its images (:data:`LoadedPair`)."""

    name: str
    fixed: T
    moving: T
    fixed_labels: T
    moving_labels: T


ValidationPair = Pair[Path]
LoadedPair = Pair[Image]


def _pair_files(folder: Path) -> dict[str, Path]:
    """Role -> image file directly inside ``folder`` (only the roles found)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = path.name.lower()
        stem = next((name[: -len(e)] for e in IMAGE_EXTENSIONS if name.endswith(e)), None)
        for role in (r for r, stems in ROLE_STEMS.items() if stem in stems):
            if role in found:
                raise InputError(f"pair folder {folder} has two {role} files: {found[role].name} and {path.name}.")
            found[role] = path
    return found


def _complete(folder: Path, files: dict[str, Path], what: str) -> ValidationPair:
    missing = [" or ".join(f"{s}.nii.gz" for s in ROLE_STEMS[r][:2]) for r in ROLES if r not in files]
    if missing:
        raise InputError(f"{what} {folder} lacks {', '.join(missing)}.")
    return ValidationPair(folder.name, *(files[r] for r in ROLES))


def _pairs_from_folder(folder: Path) -> list[ValidationPair]:
    own = _pair_files(folder)  # the folder itself may be one pair
    if own:
        return [_complete(folder, own, "validation folder")]
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    pairs = [_complete(sub, files, "pair folder") for sub in subs if (files := _pair_files(sub))]
    if not pairs:
        raise InputError(f"validation folder {folder} holds no pairs: expected sub-folders with "
                         f"fixed, moving, fixed_labels and moving_labels images (.nii.gz).")
    return pairs


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the pair list {path} ({exc}).") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InputError(f"pair list {path} is not valid JSON ({exc}).") from None
        doc = doc.get("pairs") if isinstance(doc, dict) else doc
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise InputError(f"pair list {path} must be a JSON list of objects (or {{\"pairs\": [...]}}).")
        return doc
    reader = csv.DictReader(text.splitlines(), dialect="excel-tab" if path.suffix.lower() == ".tsv" else "excel")
    missing = [r for r in ROLES if r not in [h.strip() for h in (reader.fieldnames or [])]]
    if missing:
        raise InputError(f"pair list {path} needs a header with columns {', '.join(ROLES)} "
                         f"(missing: {', '.join(missing)}).")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader
            if any((v or "").strip() for v in row.values())]


def _pairs_from_list_file(path: Path) -> list[ValidationPair]:
    pairs = []
    for index, row in enumerate(_rows(path), start=1):
        for role in ROLES:
            if not row.get(role):
                raise InputError(f"pair list {path}, entry {index}: no '{role}' path.")
        files = [path.parent / Path(str(row[r])).expanduser() for r in ROLES]  # an absolute path stays absolute
        pairs.append(ValidationPair(str(row.get("name") or f"pair{index:03d}"), *files))
    if not pairs:
        raise InputError(f"pair list {path} lists no pairs.")
    return pairs


def discover_pairs(source: str | Path) -> list[ValidationPair]:
    """The validation pairs of a folder or a list file (``.csv``, ``.tsv``, ``.json``), checked to exist."""
    path = Path(source).expanduser()
    if path.is_dir():
        pairs = _pairs_from_folder(path)
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".json", ".txt"):
        pairs = _pairs_from_list_file(path)
    elif path.is_file():
        raise InputError(f"{path} is neither a folder of pairs nor a .csv/.tsv/.json pair list.")
    else:
        raise InputError(f"validation set not found: {path} (expected a folder of pairs or a pair list file).")
    names = [p.name for p in pairs]
    for pair in pairs:
        if names.count(pair.name) > 1:
            raise InputError(f"two validation pairs are named {pair.name!r}; pair names must be unique.")
        for role in ROLES:
            if not getattr(pair, role).is_file():
                raise InputError(f"validation pair {pair.name!r}: {role} file not found: {getattr(pair, role)}")
    return pairs


def load_pair(pair: ValidationPair) -> LoadedPair:
    """Read the four images of ``pair``; :class:`InputError` (naming the pair) for unreadable files or
    label maps off their image's grid."""
    images = {r: load_image(getattr(pair, r), labels="labels" in r, name=f"pair {pair.name!r} {r}") for r in ROLES}
    for role in ("fixed", "moving"):
        lab, img = images[f"{role}_labels"], images[role]
        if lab.shape != img.shape or not np.allclose(lab.affine, img.affine, atol=1e-3):
            raise InputError(f"pair {pair.name!r}: the {role} labels are not on the {role} image's grid "
                             f"({lab.shape} vs {img.shape} or different affines).")
    return LoadedPair(pair.name, *(images[r] for r in ROLES))
