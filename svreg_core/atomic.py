"""Files and folders that appear only when complete: written under a hidden temporary name next to them, then
renamed.

A reader never sees a half-written file, and a failed or interrupted write (a full disk, ``Ctrl-C``, an error
while making the content) leaves an existing file as it was and nothing else behind. Folders (checkpoints, the
training state) are swapped in by :func:`replace_directory`, and a swap cut short by a kill is undone by
:func:`recover_directory`. (A registration's output folder has its own swap, with the safety checks of
``--overwrite``: :mod:`svreg_core.outputs.writer`.)
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from svreg_core.interrupts import interrupts_deferred


def _followed(path: str | Path) -> Path:
    """``path``, or where it points when it is a symbolic link (also a dangling one: what a killed swap left)."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


@contextmanager
def replaced_when_complete(path: str | Path, ending: str = "") -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to: ``.NAME.partial-PID-TOKEN`` + ``ending`` in the same
    folder (``ending``, e.g. ``.nii.gz``, for writers that choose the format by the name). When the body
    completes it replaces ``path``; if the body raises (or is interrupted), the temporary file is removed and
    ``path`` is unchanged. A symbolic link ``path`` is followed: the file it points to is replaced."""
    path = _followed(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}{ending}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_directory(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Create the folder ``target`` afresh through ``write(tmp_folder)``, then swap it into place; returns ``target``
    (as given).

    The new folder is written as ``.NAME.partial-PID-TOKEN``; it and its files get the permissions the umask
    gives (whatever mode the writer created them with), and the files are synced to disk. The old folder, if any,
    is renamed to ``.NAME.old`` before the new one takes its name, then deleted. A SIGTERM during the swap is held
    back until it is done (:func:`~svreg_core.interrupts.interrupts_deferred`); a failing second rename puts the
    old folder back; :func:`recover_directory` undoes a swap cut by a kill. A failed or interrupted ``write``
    leaves ``target`` as it was and nothing else behind. A symbolic link ``target`` is followed: the folder it
    points to is replaced.
    """
    given, target = Path(target), _followed(target)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    old = target.with_name(f".{target.name}.old")
    tmp.mkdir(parents=True)
    file_mode = tmp.stat().st_mode & 0o666  # a new folder's mode is 0o777 less the umask
    try:
        write(tmp)
        for path in tmp.iterdir():
            path.chmod(file_mode)  # as a plain write would make it: some writers (safetensors) make files 0600
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        with interrupts_deferred():
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                try:
                    tmp.rename(target)
                except OSError:
                    old.rename(target)
                    raise
            else:
                tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone once it became ``target``; else a failure's leftover
    return given


def recover_directory(target: str | Path) -> None:
    """Undo a :func:`replace_directory` that was killed: bring ``.NAME.old`` back if ``target`` is missing, and
    remove the hidden folders it was writing. Call it before writing ``target`` again."""
    target = _followed(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        old.rename(target)
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
