"""Exceptions whose message is meant for the user as-is (one plain-language line)."""
from __future__ import annotations


class SvregError(Exception):
    """Base class for errors reported to the user without a traceback."""


class InputError(SvregError):
    """An input file or array is unusable (wrong dimensionality, NaNs, empty, unreadable, mismatched)."""


class OutputError(SvregError):
    """An output location cannot be written (exists without overwrite, not writable)."""
