"""The memory pre-flight of a CPU registration: estimate, refusal, warning, the machine's figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.memory import (
    FIXED_BYTES_PER_VOXEL,
    MOVING_BYTES_PER_VOXEL,
    available_memory_bytes,
    check_apply_memory,
    check_memory,
    estimated_apply_bytes,
    estimated_peak_bytes,
    physical_memory_bytes,
)

GB = 1024 ** 3


@pytest.mark.parametrize("fixed, moving, working, measured_gb", [
    ((182, 218, 182), (160, 192, 224), 91 * 109 * 91, 1.572),  # the 1 mm brain pair
    ((243, 291, 243), (160, 192, 224), 91 * 109 * 91, 2.646),  # its fixed image at 0.75 mm
    ((160, 192, 224), (243, 291, 243), 80 * 96 * 112, 1.933),  # the two swapped
    ((117, 91, 48), (117, 91, 48), 117 * 91 * 48, 0.748),  # chest CT 2.5 x 2.5 x 5 mm, lung-ct (MIND)
    ((72, 76, 98), (72, 76, 98), 72 * 76 * 98, 0.717),  # CT 2.5 mm, ct (MIND)
])
def test_estimate_is_above_each_measured_peak_by_a_margin(fixed, moving, working, measured_gb: float) -> None:
    """The peaks measured on 2026-11-28 (memory.py's docstring): the estimate is 0–30 % above each."""
    estimate = estimated_peak_bytes(fixed, moving, working) / 1e9
    assert measured_gb <= estimate <= 1.3 * measured_gb


def test_estimate_adds_the_fixed_moving_and_working_voxels() -> None:
    assert estimated_peak_bytes((10, 10, 10), (20, 10, 10), 500) == 400_000_000 + 110 * 1000 + 40 * 2000 + 600 * 500
    # a 512 x 512 x 400 CT pair at 0.7 x 0.7 x 1 mm, finest working grid 2 mm: 20 GB, not the 42 GB of the older
    # per-voxel estimate that refused it on a 32 GB machine
    big = estimated_peak_bytes((512, 512, 400), (512, 512, 400), 179 * 179 * 200)
    assert 19e9 < big < 21e9


def test_refused_when_larger_than_the_machine_warned_when_larger_than_free() -> None:
    shape = (100, 100, 100)  # 2 x 1e6 voxels and a 1e6-voxel working grid: 1.15 GB
    assert check_memory(shape, shape, 10 ** 6, physical=8 * GB, available=4 * GB) is None
    note = check_memory(shape, shape, 10 ** 6, physical=8 * GB, available=GB // 10)
    assert note is not None and "swap" in note and "\n" not in note
    with pytest.raises(InputError, match=r"needs about 1\.1 GB of memory and this process may use 0\.2 GB") as info:
        check_memory(shape, shape, 10 ** 6, physical=GB // 5, available=None)
    assert "\n" not in str(info.value)
    assert check_memory(shape, shape, 10 ** 6, physical=None, available=None) is None  # unknown: no check


@pytest.mark.parametrize("output, measured_gb", [(902_629, 0.722), (7_221_032, 1.006), (17_183_259, 2.224)])
def test_apply_estimate_is_above_each_measured_peak(output: int, measured_gb: float) -> None:
    """svreg apply's peaks measured on 2026-11-29 (memory.py): the brain pair's 7.2 M-voxel field, a 6.9 M-voxel
    input, onto references of 0.9 M, 7.2 M (the field's own grid) and 17.2 M voxels; the estimate is 0-55 % above."""
    estimate = estimated_apply_bytes(output, 182 * 218 * 182, 160 * 192 * 224) / 1e9
    assert measured_gb <= estimate <= 1.55 * measured_gb


def test_apply_refused_when_larger_than_the_machine() -> None:
    assert estimated_apply_bytes(1000, 0, 2000) == 300_000_000 + 125 * 1000 + 25 * 2000
    with pytest.raises(InputError, match=r"resampling this image needs about 7\.8 GB .* may use 4\.0 GB .* give a "
                                         r"coarser --reference \(the output grid has 64000000 voxels\)"):
        check_apply_memory(400 ** 3, 10 ** 6, 10 ** 6, physical=4 * GB, available=None)
    note = check_apply_memory(400 ** 3, 10 ** 6, 10 ** 6, physical=16 * GB, available=4 * GB)
    assert note is not None and note.startswith("resampling this image needs about 7.8 GB of memory and 4.0 GB")


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
    assert available_memory_bytes(tmp_path / "absent", cgroup=tmp_path / "no-cgroup") is None


@pytest.mark.parametrize("v2", [True, False])
def test_a_container_memory_limit_is_the_memory(tmp_path: Path, v2: bool) -> None:
    """Under a control group's memory limit (Docker --memory, Slurm), the limit counts, not the host's memory,
    and what is free is the limit less the group's use without reclaimable page cache (cgroup v2 and v1 files
    as Linux writes them)."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       64000000 kB\nMemAvailable:    60000000 kB\n")
    group = tmp_path / "cgroup"
    files = group if v2 else group / "memory"
    files.mkdir(parents=True)
    limit, usage = ("memory.max", "memory.current") if v2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (files / limit).write_text(f"{2 * GB}\n")
    (files / usage).write_text(f"{GB}\n")
    (files / "memory.stat").write_text(f"anon 1000\n{'' if v2 else 'total_'}inactive_file {GB // 2}\n")
    assert physical_memory_bytes(group) == 2 * GB
    assert available_memory_bytes(meminfo, group) == 2 * GB - GB // 2
    with pytest.raises(InputError, match=r"this process may use 2\.0 GB"):
        shape = (100, 100, 100)
        check_memory(shape, shape, 10 ** 6 * 3, physical=physical_memory_bytes(group), available=None)
    # no limit ("max"; v1's 2^63 rounded down to a page): the machine's figures
    (files / limit).write_text("max\n" if v2 else "9223372036854771712\n")
    assert physical_memory_bytes(group) == physical_memory_bytes(tmp_path / "no-cgroup")
    assert available_memory_bytes(meminfo, group) == 60000000 * 1024


@pytest.mark.parametrize("v2", [True, False])
def test_the_limit_of_a_batch_job_deeper_in_the_tree_counts(tmp_path: Path, v2: bool) -> None:
    """A Slurm job (or a systemd service) is not at the top of the control group tree: /proc/self/cgroup names
    its group, and the limit is on the job's group above the step's. The top group and the step have none;
    the host has 64 GB. Before, only the top was read and a job limited to 2 GB was told it had 64 GB."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       64000000 kB\nMemAvailable:    60000000 kB\n")
    tree = tmp_path / "cgroup" if v2 else tmp_path / "cgroup" / "memory"
    job = tree / "system.slice" / "slurmstepd.scope" / "job_12"
    step = job / "step_0"
    step.mkdir(parents=True)
    limit, usage = ("memory.max", "memory.current") if v2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    for folder, value in ((tree, "max" if v2 else "9223372036854771712"), (job, str(2 * GB)),
                          (step, "max" if v2 else "9223372036854771712")):
        (folder / limit).write_text(value + "\n")
    (job / usage).write_text(f"{GB}\n")
    # v1 lists the group's own page cache first, then that of the group and the groups below it (the usage's)
    (job / "memory.stat").write_text(f"anon 1000\ninactive_file {GB // 4}\n" if v2 else
                                     f"inactive_file {GB // 8}\ntotal_inactive_file {GB // 4}\n")
    membership = tmp_path / "cgroup-of-this-process"
    membership.write_text("0::/system.slice/slurmstepd.scope/job_12/step_0\n" if v2 else
                          "5:cpu,cpuacct:/slurm/uid_1/job_12/step_0\n4:memory:/system.slice/slurmstepd.scope/"
                          "job_12/step_0\n0::/\n")
    assert physical_memory_bytes(tmp_path / "cgroup", membership) == 2 * GB
    assert available_memory_bytes(meminfo, tmp_path / "cgroup", membership) == 2 * GB - (GB - GB // 4)
    # a container: its own group is the top of the tree it sees, listed by the host's path (no such folder)
    membership.write_text("0::/docker/4f2a\n" if v2 else "4:memory:/docker/4f2a\n")
    (tree / limit).write_text(f"{3 * GB}\n")
    assert physical_memory_bytes(tmp_path / "cgroup", membership) == 3 * GB


def test_register_refuses_before_any_work_under_a_memory_limit(tmp_path: Path) -> None:
    """An image too large for this machine (a strided view, so the test itself needs no memory) is
    refused by ``register`` with one line, in a child process."""
    physical = physical_memory_bytes()
    if physical is None:
        pytest.skip("the OS does not report its physical memory")
    side = int(np.ceil((physical / (FIXED_BYTES_PER_VOXEL + MOVING_BYTES_PER_VOXEL)) ** (1 / 3))) + 8
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
    assert "this process may use" in out.stdout
