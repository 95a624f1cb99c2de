"""Reading the small text files users write or export by hand: pair lists, presets, configurations, point files.

One way for all of them: UTF-8 (a spreadsheet's byte-order mark dropped), tables with a header line whose file
names are relative to the table's folder, and one plain error line for anything else."""
from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Sequence
from pathlib import Path

from svreg_core.errors import InputError, shortened


def read_text(path: str | Path, what: str) -> str:
    """The text of the user's file ``path``, UTF-8 (a leading byte-order mark, which spreadsheet programs write
    into their UTF-8 exports, is dropped).

    Args:
        what: what the file is, for the messages (e.g. ``"pair list"``).

    Raises:
        InputError: one line naming ``what`` and ``path`` when the file is missing, unreadable or not UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}).") from None
    except OSError as exc:
        raise InputError(f"cannot read the {what} {path} ({exc.strerror or exc}).") from None


#: Every column a pair list of some svreg command reads: a column named so is never taken for a misspelling
#: (a tuning pair list's ``fixed_landmarks`` given to ``svreg train``), only ignored where unused.
PAIR_LIST_COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask",
                     "fixed_landmarks", "moving_landmarks", "initial_transform", "output")


def read_table(path: str | Path, what: str, required: Sequence[str],
               known: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """The rows of the user's table file (pair lists): comma-separated values with a header line, tab-separated
    for ``.tsv``; semicolon-separated when the header line holds semicolons and no comma (what spreadsheet
    programs export as CSV where the decimal separator is a comma, e.g. German or French settings).

    Returns:
        ``(line number, {column: value})`` per row, column names and values stripped of surrounding spaces, rows
        without any value left out; a missing cell is ``""`` and cells beyond the header are dropped.

    Args:
        known: the columns the caller reads (``required`` among them); a header column that is none of
            :data:`PAIR_LIST_COLUMNS` but close to one of these (``moving_label``, ``Output``) is refused: its
            files would be left out without a word. Other columns (a cohort's ``subject``, ``age``) are ignored.

    Raises:
        InputError: as :func:`read_text`, naming the ``required`` columns the header lacks and the columns its
            first line was read as, or a column that misspells one of ``known``.
    """
    text = read_text(path, what)
    first = text.split("\n", 1)[0]
    if Path(path).suffix.lower() == ".tsv":
        reader, separator = csv.DictReader(io.StringIO(text, newline=""), dialect="excel-tab"), "tabs"
    elif ";" in first and "," not in first:
        reader, separator = csv.DictReader(io.StringIO(text, newline=""), dialect="excel", delimiter=";"), "semicolons"
    else:
        reader, separator = csv.DictReader(io.StringIO(text, newline=""), dialect="excel"), "commas"
    header = [(name or "").strip() for name in (reader.fieldnames or [])]
    missing = [column for column in required if column not in header]
    if missing:  # what the first line was read as: a title or blank line first, another separator
        found = [f'"{name}"' for name in header if name]
        read = (f"the columns of its first line, separated by {separator}, are {shortened(found, 6)}" if found
                else "its first line is empty")
        raise InputError(f"{what} {path} needs a header line with the columns {', '.join(required)} "
                         f"(missing: {', '.join(missing)}); {read}.")
    for column in header:
        if column and column not in PAIR_LIST_COLUMNS and column not in known:
            near = difflib.get_close_matches(column.lower().replace(" ", "_").replace("-", "_"), known, n=1,
                                             cutoff=0.8)
            if near:
                raise InputError(f"{what} {path}: the column {column!r} is not one svreg reads; did you mean "
                                 f"{near[0]}? (columns: {', '.join(known)}; others are ignored)")
    rows = []
    for row in reader:
        cells = {(key or "").strip(): (value or "").strip() for key, value in row.items() if key is not None}
        if any(cells.values()):
            rows.append((reader.line_num, cells))
    return rows


def table_path(value: str, table: str | Path) -> Path:
    """A file named in a table file: ``~`` expanded, a relative path taken from the table's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(table).parent / path
