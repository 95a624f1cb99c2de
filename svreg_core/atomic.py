"""Files that appear only when complete: written under a hidden temporary name next to them, then renamed.

A reader never sees a half-written file, and a failed or interrupted write (a full disk, ``Ctrl-C``, an error
while making the content) leaves an existing file as it was and nothing else behind. Folders that are written
whole (a registration's outputs, checkpoints, the training state) are swapped in the same way by their own
writers.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_when_complete(path: str | Path, ending: str = "") -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to: ``.NAME.partial-PID-TOKEN`` + ``ending`` in the same
    folder (``ending``, e.g. ``.nii.gz``, for writers that choose the format by the name). When the body
    completes it replaces ``path``; if the body raises (or is interrupted), the temporary file is removed and
    ``path`` is unchanged. A symbolic link ``path`` is followed: the file it points to is replaced."""
    path = Path(path)
    path = path.resolve() if path.is_symlink() else path
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}{ending}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
