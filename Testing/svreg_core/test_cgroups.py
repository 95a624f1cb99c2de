"""A container's or batch job's CPU quota read from hand-made control-group trees (v2 and v1)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svreg_core.cgroups import cpu_limit, groups
from svreg_core.cli import threads_within_cpu_limit


def _tree(tmp_path: Path, v2: bool, quotas: dict[str, str], where: str) -> tuple[Path, Path]:
    """A cgroup tree with the CPU quota files ``quotas`` (group path -> "QUOTA PERIOD", µs) and this process's
    membership file placing it at ``where``; returns ``(root, membership)``."""
    root = tmp_path / "cgroup"
    tree = root if v2 else root / "cpu"
    for group, value in quotas.items():
        folder = tree / group.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        quota, period = value.split()
        if v2:
            (folder / "cpu.max").write_text(f"{quota} {period}\n")
        else:
            (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
            (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    membership = tmp_path / "cgroup-of-this-process"
    membership.write_text(f"0::{where}\n" if v2 else f"4:memory:/elsewhere\n2:cpu,cpuacct:{where}\n")
    return root, membership


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_the_smallest_quota_of_the_process_group_and_those_above_it(tmp_path: Path, v2: bool) -> None:
    """Docker --cpus=2.5 on the container's group, a Slurm step below it with 1.5 CPUs, a sibling with 0.5 that is
    not this process's: 1.5."""
    no_quota = "max 100000" if v2 else "-1 100000"
    root, membership = _tree(tmp_path, v2, {"/": no_quota, "/docker/4f2a": "250000 100000",
                                            "/docker/4f2a/job_12/step_0": "75000 50000",
                                            "/docker/4f2a/job_13": "50000 100000"}, "/docker/4f2a/job_12/step_0")
    assert cpu_limit(root, membership) == pytest.approx(1.5)
    assert (root if v2 else root / "cpu") / "docker/4f2a/job_12" in groups("cpu", root, membership)


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_no_quota_is_no_limit(tmp_path: Path, v2: bool) -> None:
    root, membership = _tree(tmp_path, v2, {"/": "max 100000" if v2 else "-1 100000"}, "/")
    assert cpu_limit(root, membership) is None
    assert cpu_limit(tmp_path / "nothing", tmp_path / "no-membership") is None  # no cgroup files at all


def test_torch_threads_follow_the_quota_unless_omp_num_threads_says(tmp_path: Path, monkeypatch) -> None:
    """A quota of 0.5 CPU leaves 1 thread, 1.5 CPUs 2 of 3 (rounded up); never more threads than before; with
    OMP_NUM_THREADS set, torch's count stays."""
    before = torch.get_num_threads()
    try:
        for quota, threads in (("50000 100000", 1), ("150000 100000", 2), ("800000 100000", 3)):
            root, membership = _tree(tmp_path / quota.split()[0], True, {"/": quota}, "/")
            torch.set_num_threads(3)
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            threads_within_cpu_limit(root, membership)
            assert torch.get_num_threads() == threads, quota
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        threads_within_cpu_limit(root, membership)
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        threads_within_cpu_limit(tmp_path / "nothing", tmp_path / "no-membership")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
