"""SIGTERM (a cluster scheduler's or the Slicer module's stop request) handled like Ctrl-C.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`KeyboardInterrupt` in the main thread,
so a stopped run takes the same clean path as Ctrl-C: the output being written is removed, an
earlier output folder stays intact, and the command line prints ``svreg: interrupted``.

Code that must not be cut in the middle (a database transaction that creates a tuning trial) runs
inside :func:`interrupts_deferred`: a SIGTERM there is remembered and raised at the next
:func:`interruptible` block or when the deferred block ends.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class _State:
    deferred = 0      # depth of interrupts_deferred blocks not inside an interruptible block
    pending = False   # a SIGTERM arrived while deferred


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM (schedulers often repeat it) must not interrupt the clean-up of the first;
    # SIGKILL, which schedulers send after a grace period, still ends the process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _State.deferred:
        _State.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, the first SIGTERM raises :class:`KeyboardInterrupt` in the main thread; later ones
    are ignored. The previous handler is restored on exit.

    Python handles signals only in the main thread: called from another thread this does nothing.
    Installing it is explicit (importing svreg_core changes no signal handler).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_pending() -> None:
    if _State.pending:
        _State.pending = False
        raise KeyboardInterrupt


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGTERM inside is recorded instead of raised; it is raised as :class:`KeyboardInterrupt` on
    entering the next :func:`interruptible` block, or on leaving this block."""
    _State.deferred += 1
    try:
        yield
    finally:
        _State.deferred -= 1
    if not _State.deferred:
        _raise_pending()


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside an :func:`interrupts_deferred` block: raise a recorded SIGTERM now, and let one arriving
    inside raise at once. Outside any deferred block this changes nothing."""
    saved = _State.deferred
    _State.deferred = 0
    try:
        _raise_pending()
        yield
    finally:
        _State.deferred = saved
