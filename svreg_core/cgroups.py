"""This process's Linux control groups (cgroup v1 and v2): the memory and CPU limits a container or a batch job
sets (Docker ``--memory``/``--cpus``, Kubernetes, Slurm, systemd), which the machine-wide figures do not show."""
from __future__ import annotations

from pathlib import Path

#: Where Linux mounts the control groups (cgroup v2: one tree; v1: a tree per controller, ``memory``, ``cpu``, ...).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Which control groups this process is in (``0::/PATH`` for v2, ``N:memory:/PATH`` for v1), relative to the trees.
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")


def read_int(path: Path) -> int | None:
    """The integer in a one-value cgroup file, ``None`` when absent, unreadable or ``max``."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def groups(controller: str, root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> list[Path]:
    """The folders of this process's control group for ``controller`` (``"memory"``, ``"cpu"``) and of every group
    above it (cgroup v2 and v1).

    Inside a container the process's group is the top of the trees it sees; a batch job (Slurm) or a systemd
    service sits deeper (``/system.slice/slurmstepd.scope/job_12/step_0``), and its limit may be set on any
    group above it. A group listed but not mounted here (a v1 container lists the host's path) has no files.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    found = [root, root / controller]
    for line in lines:
        _, controllers, where = (line.split(":", 2) + ["", ""])[:3]
        tree = root if not controllers else root / controller if controller in controllers.split(",") else None
        if tree is not None:
            group = tree / where.strip().lstrip("/")
            found += [folder for folder in (group, *group.parents) if folder.is_relative_to(tree)]
    return list(dict.fromkeys(found))


def cpu_limit(root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> float | None:
    """How many CPUs' worth of time this process's control groups allow (Docker ``--cpus``, a Kubernetes CPU limit:
    a quota of CPU time per period, v2 ``cpu.max`` ``QUOTA PERIOD``, v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``); the smallest where several groups set one, ``None`` without a quota. A quota is not an
    affinity mask: the process still sees every core, and threads beyond the quota wait for each other."""
    limits = []
    for group in groups("cpu", root, membership):
        quota, period = (text.strip() for text in _quota_and_period(group))
        if quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:  # "max", -1: no quota
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _quota_and_period(group: Path) -> tuple[str, str]:
    """A group's CPU quota and period (µs) as their files hold them (v2, else v1); empty without those files."""
    try:
        quota, _, period = (group / "cpu.max").read_text().partition(" ")
        return quota, period
    except OSError:
        pass
    try:
        return (group / "cpu.cfs_quota_us").read_text(), (group / "cpu.cfs_period_us").read_text()
    except OSError:
        return "", ""

