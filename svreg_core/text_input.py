"""Reading the small text files users write or export by hand: pair lists, presets, configurations, point files."""
from __future__ import annotations

from pathlib import Path

from svreg_core.errors import InputError


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
