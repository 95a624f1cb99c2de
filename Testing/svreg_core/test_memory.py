"""The memory pre-flight of a CPU registration: estimate, refusal, warning, the machine's figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.memory import (
    BYTES_PER_VOXEL,
    available_memory_bytes,
    check_memory,
    estimated_peak_bytes,
    physical_memory_bytes,
)

GB = 1024 ** 3


def test_estimate_is_per_voxel_of_both_images() -> None:
    # the 1 mm brain pair: 2 x 182x218x182 voxels, measured peak 2.6 GB
    brain = estimated_peak_bytes((182, 218, 182), (182, 218, 182))
    assert brain == BYTES_PER_VOXEL * 2 * 182 * 218 * 182
    assert 2.6 * GB < brain < 3.5 * GB


def test_refused_when_larger_than_the_machine_warned_when_larger_than_free() -> None:
    shape = (100, 100, 100)  # 2 x 1e6 voxels: 0.37 GB
    assert check_memory(shape, shape, physical=8 * GB, available=4 * GB) is None
    note = check_memory(shape, shape, physical=8 * GB, available=GB // 10)
    assert note is not None and "swap" in note and "\n" not in note
    with pytest.raises(InputError, match=r"needs about 0\.4 GB of memory and this machine has 0\.2 GB") as info:
        check_memory(shape, shape, physical=GB // 5, available=None)
    assert "\n" not in str(info.value)
    assert check_memory(shape, shape, physical=None, available=None) is None  # unknown: no check


def test_machine_figures_are_read(tmp_path: Path) -> None:
    physical = physical_memory_bytes()
    if physical is None:
        pytest.skip("the OS does not report its physical memory")
    assert physical > 256 * 1024 ** 2
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n")
    assert available_memory_bytes(meminfo) == 2048 * 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")
    assert available_memory_bytes(meminfo) is None
    assert available_memory_bytes(tmp_path / "absent") is None


def test_register_refuses_before_any_work_under_a_memory_limit(tmp_path: Path) -> None:
    """An image too large for this machine (a strided view, so the test itself needs no memory) is
    refused by ``register`` with one line, in a child process."""
    physical = physical_memory_bytes()
    if physical is None:
        pytest.skip("the OS does not report its physical memory")
    side = int(np.ceil((physical / BYTES_PER_VOXEL / 2) ** (1 / 3))) + 8
    script = f"""
import numpy as np, time
from svreg_core import Image, register
from svreg_core.errors import InputError
ramp = np.arange({side}, dtype=np.float32)  # varies along k: not a constant image
big = Image(np.lib.stride_tricks.as_strided(ramp, ({side},) * 3, (0, 0, 4)), np.eye(4))
start = time.perf_counter()
try:
    register(big, big)
except InputError as exc:
    print("refused", round(time.perf_counter() - start, 1), exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("refused"), out.stdout + out.stderr
    assert "this machine has" in out.stdout
