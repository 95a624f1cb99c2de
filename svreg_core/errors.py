"""Exceptions whose message is meant for the user as-is (one plain-language line)."""
from __future__ import annotations

from collections.abc import Iterable


class SvregError(Exception):
    """Base class for errors reported to the user without a traceback."""


class InputError(SvregError):
    """An input file or array is unusable (wrong dimensionality, NaNs, empty, unreadable, mismatched)."""


class OutputError(SvregError):
    """An output location cannot be written (exists without overwrite, not writable)."""


def shortened(values: Iterable[object], limit: int) -> str:
    """The first ``limit`` of ``values`` for a one-line message, joined by commas, with how many more there are:
    ``"2, 3, 4 and 9 more"``."""
    items = [str(v) for v in values]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
