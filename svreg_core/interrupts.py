"""SIGTERM (a cluster scheduler's or the Slicer module's stop request) handled like Ctrl-C.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`Terminated` (a :class:`KeyboardInterrupt`)
in the main thread, so a stopped run takes the same clean path as Ctrl-C: the output being written is
removed, an earlier output folder stays intact, and the command line prints ``svreg: interrupted``; its
exit status tells the two apart (:func:`interrupted_status`: 130 for Ctrl-C, 143 for SIGTERM, the
statuses a shell gives a process those signals end).

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


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised like Ctrl-C's :class:`KeyboardInterrupt` (:func:`sigterm_as_interrupt`)."""


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by ``exc``: 128 + the signal's number, as a shell reports a
    process that signal ends (143 for SIGTERM, 130 for Ctrl-C's SIGINT), so that a scheduler or script
    tells a time limit from a user's Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


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
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, the first SIGTERM raises :class:`Terminated` in the main thread; later ones
    are ignored. The previous handler is restored on exit.

    Python handles signals only in the main thread: called from another thread this does nothing.
    Installing it is explicit (importing svreg_core changes no signal handler).
    """
    if not _main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _main_thread() -> bool:
    """Whether this is the main thread, the one Python runs signal handlers in."""
    return threading.current_thread() is threading.main_thread()


def _raise_pending() -> None:
    if _State.pending:
        _State.pending = False
        raise Terminated


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGTERM inside is recorded instead of raised; it is raised as :class:`Terminated` on
    entering the next :func:`interruptible` block, or on leaving this block. Python handles signals in
    the main thread only: in another thread this block, like :func:`interruptible`, changes nothing (the
    two threads' blocks would otherwise interleave on the one count and leave it wrong for good)."""
    if not _main_thread():
        yield
        return
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
    inside raise at once. Outside any deferred block, and outside the main thread, this changes nothing."""
    if not _main_thread():
        yield
        return
    saved = _State.deferred
    _State.deferred = 0
    try:
        _raise_pending()
        yield
    finally:
        _State.deferred = saved
