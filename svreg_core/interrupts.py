"""SIGTERM (a cluster scheduler's or the Slicer module's stop request) handled like Ctrl-C.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`KeyboardInterrupt` in the main thread,
so a stopped run takes the same clean path as Ctrl-C: the output being written is removed, an
earlier output folder stays intact, and the command line prints ``svreg: interrupted``.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM (schedulers often repeat it) must not interrupt the clean-up of the first;
    # SIGKILL, which schedulers send after a grace period, still ends the process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
