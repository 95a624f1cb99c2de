"""Running independent work items on threads: NumPy, SciPy and torch release the GIL in their C loops."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

#: Most threads one call uses.
MAX_THREADS = 8


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_threads(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[function(item) for item in items]``, on up to :data:`MAX_THREADS` threads (no more than the usable
    CPUs, nor torch's thread count: what ``svreg --threads`` or ``OMP_NUM_THREADS`` allow), in order. The items
    must be independent; the first error raised by an item (in item order), or a ``Ctrl-C``, is re-raised once
    the items already running have finished; items not yet started are not run."""
    items = list(items)
    workers = max(1, min(MAX_THREADS, usable_cpus(), torch.get_num_threads(), len(items)))
    if workers == 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # ``map`` cancels the items not started when one fails
        return list(pool.map(function, items))
