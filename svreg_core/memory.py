"""Host memory a CPU registration needs, checked against the machine before any work starts.

The pairwise registration's peak memory grows with the voxel counts of its two images: the outputs
are composed on the fixed grid, and every working level is no finer than the fixed image's voxel.
Measured (``ru_maxrss`` of ``svreg register``, whole process with torch, all outputs): the 1 mm brain
pair, 2 × 182×218×182 voxels (14.4 M), 2.6 GB (≈ 190 B per voxel) on 2026-11-25; 1.7–1.8 GiB (≈ 130 B
per voxel) since the outputs make fewer whole-grid copies (``benchmarks/peak_memory.py``, 2026-11-27).
:data:`BYTES_PER_VOXEL` rounds the older figure up: a margin for other images and thread interleavings.
GPU memory is not estimated here: CUDA's out-of-memory error already comes before long work and is
reported in one line by the command line.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from svreg_core.errors import InputError

#: Peak host bytes per voxel of the fixed plus the moving image (see the module docstring).
BYTES_PER_VOXEL = 200


def estimated_peak_bytes(fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> int:
    """Peak host memory (bytes) of registering a ``fixed_shape`` image to a ``moving_shape`` one on a CPU."""
    return BYTES_PER_VOXEL * (int(np.prod(fixed_shape)) + int(np.prod(moving_shape)))


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Memory available to a new process without swapping (Linux ``MemAvailable``), else ``None``."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(fixed_shape: Sequence[int], moving_shape: Sequence[int], *, physical: int | None,
                 available: int | None) -> str | None:
    """Refuse a registration that cannot fit in the machine's memory; warn when it may swap.

    Args:
        physical: the machine's memory in bytes (:func:`physical_memory_bytes`; ``None``: unknown).
        available: the memory free now in bytes (:func:`available_memory_bytes`; ``None``: unknown).

    Returns:
        A one-line warning when the estimate exceeds ``available``, else ``None``.

    Raises:
        InputError: the estimate exceeds ``physical``.
    """
    needed = estimated_peak_bytes(fixed_shape, moving_shape)
    gb = 1024 ** 3
    if physical is not None and needed > physical:
        raise InputError(f"registering these images needs about {needed / gb:.1f} GB of memory and this machine "
                         f"has {physical / gb:.1f} GB; crop or downsample them (the images have "
                         f"{int(np.prod(fixed_shape))} and {int(np.prod(moving_shape))} voxels).")
    if available is not None and needed > available:
        return (f"registering these images needs about {needed / gb:.1f} GB of memory and {available / gb:.1f} GB "
                "are free now: the machine may swap.")
    return None
