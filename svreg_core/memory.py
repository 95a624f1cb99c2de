"""Host memory a CPU registration (and ``svreg apply``) needs, checked against the machine before any work.

The pairwise registration's peak memory grows with the voxels of the fixed image (the outputs are composed on
its grid), of the moving image, and of the finest working grid (similarity, e.g. MIND's descriptors, gradients
and Adam's state live there). Measured on 2026-11-28 (``ru_maxrss`` of ``svreg register``, whole process with
torch, all outputs; fixed / moving / finest working-grid voxels → peak): the 1 mm brain pair 7.2 M / 6.9 M /
0.90 M → 1.57 GB; its fixed image at 0.75 mm 17.2 M / 6.9 M / 0.90 M → 2.65 GB; the two swapped 6.9 M / 17.2 M /
0.86 M → 1.93 GB; CT with MIND (``lung-ct``, ``ct``) 0.51 M / 0.51 M / 0.51 M → 0.75 GB and 0.54 M each → 0.72 GB;
a 40 x 48 x 40 pair → 0.40 GB. A least-squares fit gives 392 MB + 95 B per fixed voxel + 28 B per moving voxel +
446 B per working voxel (every case within 10 %); the constants below round it up, a margin for other images and
thread interleavings (the estimate is 1–25 % above each measurement). Until then the estimate was 200 B per voxel
of the two images: 1.8 times the brain's need, a quarter of the CT cases', and it would have refused a
512 x 512 x 400 CT pair on a 32 GB machine (42 GB estimated; now 20 GB). GPU memory is not estimated here: CUDA's
out-of-memory error already comes before long work and is reported in one line by the command line.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from svreg_core.cgroups import CGROUP_MEMBERSHIP, CGROUP_ROOT, groups, read_int
from svreg_core.errors import InputError

#: Peak host bytes of the process before the images count (Python, torch, the engine).
BASE_BYTES = 400_000_000
#: Peak host bytes per voxel of the fixed image, of the moving image and of the finest working grid.
FIXED_BYTES_PER_VOXEL = 110
MOVING_BYTES_PER_VOXEL = 40
WORKING_BYTES_PER_VOXEL = 600


def estimated_peak_bytes(fixed_shape: Sequence[int], moving_shape: Sequence[int], working_voxels: int) -> int:
    """Peak host memory (bytes) of registering a ``fixed_shape`` image to a ``moving_shape`` one on a CPU whose
    finest working grid has ``working_voxels`` voxels (see the module docstring)."""
    return (BASE_BYTES + FIXED_BYTES_PER_VOXEL * int(np.prod(fixed_shape))
            + MOVING_BYTES_PER_VOXEL * int(np.prod(moving_shape)) + WORKING_BYTES_PER_VOXEL * int(working_voxels))


#: A cgroup v1 limit at or above this (the kernel's "no limit" is 2^63 rounded down to a page) is no limit.
_NO_LIMIT = 1 << 60


def _inactive_file(stat: Path) -> int:
    """Reclaimable page cache of a cgroup and the groups below it in bytes (v2 ``inactive_file``, v1
    ``total_inactive_file``: v1's ``inactive_file`` counts the group's own pages only), else 0."""
    try:
        values = dict(line.partition(" ")[::2] for line in stat.read_text().splitlines())
    except OSError:
        return 0
    value = values.get("total_inactive_file", values.get("inactive_file", "")).strip()
    return int(value) if value.isdigit() else 0


def cgroup_memory(root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> tuple[int, int] | None:
    """The memory limit of this process's control group and what that limit leaves free now (the group's use
    without reclaimable page cache subtracted), in bytes; ``None`` without a limit. The limit is a container's
    or a batch job's (Docker ``--memory``, Kubernetes, Slurm), above which the kernel kills the process with
    no message; where groups above this process's have limits too, the smallest limit and the least free count.
    """
    limits, free = [], []
    for group in groups("memory", root, membership):
        for limit_file, usage_file in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit = read_int(group / limit_file)
            if limit is not None and limit < _NO_LIMIT:
                usage = max(0, (read_int(group / usage_file) or 0) - _inactive_file(group / "memory.stat"))
                limits.append(limit)
                free.append(max(0, limit - usage))
    return (min(limits), min(free)) if limits else None


def physical_memory_bytes(cgroup: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> int | None:
    """The memory this process may use in bytes: the machine's physical memory, or its control group's limit
    when lower (:func:`cgroup_memory`); ``None`` where the OS does not say."""
    try:
        physical: int | None = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        physical = None
    limited = cgroup_memory(cgroup, membership)
    return limited[0] if limited is not None and (physical is None or limited[0] < physical) else physical


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = CGROUP_ROOT,
                           membership: Path = CGROUP_MEMBERSHIP) -> int | None:
    """Memory available to a new process without swapping (Linux ``MemAvailable``, or what its control group's
    limit leaves when less), else ``None``."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    limited = cgroup_memory(cgroup, membership)
    if limited is not None:
        available = limited[1] if available is None else min(available, limited[1])
    return available


def check_memory(fixed_shape: Sequence[int], moving_shape: Sequence[int], working_voxels: int, *,
                 physical: int | None, available: int | None) -> str | None:
    """Refuse a registration that cannot fit in the machine's memory; warn when it may swap.

    Args:
        fixed_shape, moving_shape, working_voxels: as :func:`estimated_peak_bytes`.
        physical: the memory this process may use in bytes (:func:`physical_memory_bytes`; ``None``: unknown).
        available: the memory free now in bytes (:func:`available_memory_bytes`; ``None``: unknown).

    Returns:
        A one-line warning when the estimate exceeds ``available``, else ``None``.

    Raises:
        InputError: the estimate exceeds ``physical``.
    """
    return _check(estimated_peak_bytes(fixed_shape, moving_shape, working_voxels), "registering these images",
                  f"crop or downsample them (the images have {int(np.prod(fixed_shape))} and "
                  f"{int(np.prod(moving_shape))} voxels)", physical, available)


#: Peak host bytes of ``svreg apply`` per voxel of the output (reference) grid, and per voxel of the transform's
#: field and of the input image. Measured on 2026-11-29 (``ru_maxrss`` of ``svreg apply``, the 1 mm brain pair's
#: output folder: a 7.2 M-voxel field, a 6.9 M-voxel input): onto a 0.9 M / 7.2 M / 17.2 M-voxel reference 0.71 /
#: 0.98 / 2.17 GB (labels 2.22 GB, B-spline on the field's grid 1.03 GB). Going from 7.2 M to 17.2 M reference voxels
#: took 120 B per voxel; the rest is the field, the input and the process (0.25 GB with torch). The estimate is
#: 0–55 % above each (the field's own grid is read without interpolation: the cheapest case).
APPLY_BASE_BYTES = 300_000_000
APPLY_OUTPUT_BYTES_PER_VOXEL = 125
APPLY_INPUT_BYTES_PER_VOXEL = 25


def estimated_apply_bytes(output_voxels: int, field_voxels: int, input_voxels: int) -> int:
    """Peak host memory (bytes) of resampling an ``input_voxels`` image through a transform whose displacement
    fields hold ``field_voxels`` voxels (0 for a linear one) onto an ``output_voxels`` grid."""
    return (APPLY_BASE_BYTES + APPLY_OUTPUT_BYTES_PER_VOXEL * int(output_voxels)
            + APPLY_INPUT_BYTES_PER_VOXEL * (int(field_voxels) + int(input_voxels)))


def check_apply_memory(output_voxels: int, field_voxels: int, input_voxels: int, *, physical: int | None,
                       available: int | None) -> str | None:
    """:func:`check_memory` for ``svreg apply`` (:func:`estimated_apply_bytes`)."""
    return _check(estimated_apply_bytes(output_voxels, field_voxels, input_voxels), "resampling this image",
                  f"give a coarser --reference (the output grid has {int(output_voxels)} voxels)", physical, available)


def _check(needed: int, what: str, remedy: str, physical: int | None, available: int | None) -> str | None:
    """:class:`InputError` when ``needed`` bytes exceed ``physical``; the warning when they exceed ``available``."""
    gb = 1024 ** 3
    if physical is not None and needed > physical:
        raise InputError(f"{what} needs about {needed / gb:.1f} GB of memory and this process may use "
                         f"{physical / gb:.1f} GB (the machine's memory, or its container's or job's limit); {remedy}.")
    if available is not None and needed > available:
        return (f"{what} needs about {needed / gb:.1f} GB of memory and {available / gb:.1f} GB are free now: the "
                "machine may swap, or stop the run for lack of memory.")
    return None
