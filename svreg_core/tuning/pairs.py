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
from typing import Any, Iterable

import numpy as np

from svreg_core.errors import InputError
from svreg_core.image import Image, load_image

#: Roles of the four files of a pair, in this order.
ROLES = ("fixed", "moving", "fixed_labels", "moving_labels")

#: Accepted file stems per role (lower case).
ROLE_STEMS: dict[str, tuple[str, ...]] = {
    "fixed": ("fixed", "fixed_image", "fixed_img"),
    "moving": ("moving", "moving_image", "moving_img"),
    "fixed_labels": ("fixed_labels", "fixed_label", "fixed_seg", "fixed_segmentation"),
    "moving_labels": ("moving_labels", "moving_label", "moving_seg", "moving_segmentation"),
}

#: Image file extensions recognised in a pair folder.
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".mgh")


@dataclass(frozen=True)
class ValidationPair:
    """Paths of one labelled pair; ``name`` identifies it in progress, reports and the study."""

    name: str
    fixed: Path
    moving: Path
    fixed_labels: Path
    moving_labels: Path


@dataclass(frozen=True)
class LoadedPair:
    """The images of one pair, read from disk."""

    name: str
    fixed: Image
    moving: Image
    fixed_labels: Image
    moving_labels: Image


def _stem(path: Path) -> str | None:
    """Lower-case name without a recognised image extension, or ``None`` for other files."""
    name = path.name.lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def _pair_in_folder(folder: Path) -> dict[str, Path]:
    """Role -> file of the images directly inside ``folder`` (only roles found)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _stem(path) if path.is_file() else None
        if stem is None:
            continue
        for role, stems in ROLE_STEMS.items():
            if stem in stems:
                if role in found:
                    raise InputError(f"pair folder {folder} has two {role} files: {found[role].name} and {path.name}.")
                found[role] = path
    return found


def _expected(role: str) -> str:
    return " or ".join(f"{s}.nii.gz" for s in ROLE_STEMS[role][:2])


def pairs_from_folder(folder: Path) -> list[ValidationPair]:
    """Pairs in ``folder``: the folder itself if it holds a pair's files, else each sub-folder."""
    own = _pair_in_folder(folder)
    if own:
        missing = [r for r in ROLES if r not in own]
        if missing:
            raise InputError(f"validation folder {folder} lacks {', '.join(_expected(r) for r in missing)}.")
        return [ValidationPair(folder.name, *(own[r] for r in ROLES))]
    pairs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _pair_in_folder(sub)
        if not files:
            continue
        missing = [r for r in ROLES if r not in files]
        if missing:
            raise InputError(f"pair folder {sub} lacks {', '.join(_expected(r) for r in missing)}.")
        pairs.append(ValidationPair(sub.name, *(files[r] for r in ROLES)))
    if not pairs:
        raise InputError(f"validation folder {folder} holds no pairs: expected sub-folders with "
                         f"fixed, moving, fixed_labels and moving_labels images (.nii.gz).")
    return pairs


def _rows_from_list_file(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the pair list {path} ({exc}).") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InputError(f"pair list {path} is not valid JSON ({exc}).") from None
        if isinstance(doc, dict):
            doc = doc.get("pairs")
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise InputError(f"pair list {path} must be a JSON list of objects (or {{\"pairs\": [...]}}).")
        return doc
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [r for r in ROLES if r not in header]
    if missing:
        raise InputError(f"pair list {path} needs a header with columns {', '.join(ROLES)} "
                         f"(missing: {', '.join(missing)}).")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader
            if any((v or "").strip() for v in row.values())]


def pairs_from_list_file(path: Path) -> list[ValidationPair]:
    """Pairs listed in a CSV/TSV or JSON file (paths relative to the file's folder)."""
    rows = _rows_from_list_file(path)
    pairs = []
    for index, row in enumerate(rows, start=1):
        files = []
        for role in ROLES:
            value = row.get(role)
            if not value:
                raise InputError(f"pair list {path}, entry {index}: no '{role}' path.")
            p = Path(str(value)).expanduser()
            files.append(p if p.is_absolute() else path.parent / p)
        name = str(row.get("name") or f"pair{index:03d}")
        pairs.append(ValidationPair(name, *files))
    if not pairs:
        raise InputError(f"pair list {path} lists no pairs.")
    return pairs


def check_pairs(pairs: Iterable[ValidationPair]) -> list[ValidationPair]:
    """Raise :class:`InputError` for duplicate names or missing files; return the pairs as a list."""
    pairs = list(pairs)
    seen: set[str] = set()
    for pair in pairs:
        if pair.name in seen:
            raise InputError(f"two validation pairs are named {pair.name!r}; pair names must be unique.")
        seen.add(pair.name)
        for role in ROLES:
            p = getattr(pair, role)
            if not p.is_file():
                raise InputError(f"validation pair {pair.name!r}: {role} file not found: {p}")
    return pairs


def discover_pairs(source: str | Path) -> list[ValidationPair]:
    """The validation pairs of a folder or a list file (``.csv``, ``.tsv``, ``.json``), checked to exist."""
    path = Path(source).expanduser()
    if path.is_dir():
        return check_pairs(pairs_from_folder(path))
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv", ".json", ".txt"):
            raise InputError(f"{path} is neither a folder of pairs nor a .csv/.tsv/.json pair list.")
        return check_pairs(pairs_from_list_file(path))
    raise InputError(f"validation set not found: {path} (expected a folder of pairs or a pair list file).")


def load_pair(pair: ValidationPair) -> LoadedPair:
    """Read the four images of ``pair``; label maps must share their image's grid.

    Raises :class:`InputError` (message names the pair) for unreadable or mismatched files.
    """
    def read(role: str, labels: bool) -> Image:
        return load_image(getattr(pair, role), labels=labels, name=f"pair {pair.name!r} {role}")

    fixed, moving = read("fixed", False), read("moving", False)
    fixed_labels, moving_labels = read("fixed_labels", True), read("moving_labels", True)
    for lab, img, role in ((fixed_labels, fixed, "fixed"), (moving_labels, moving, "moving")):
        if lab.shape != img.shape or not np.allclose(lab.affine, img.affine, atol=1e-3):
            raise InputError(f"pair {pair.name!r}: the {role} labels are not on the {role} image's grid "
                             f"({lab.shape} vs {img.shape} or different affines).")
    return LoadedPair(pair.name, fixed, moving, fixed_labels, moving_labels)
