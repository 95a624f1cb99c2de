"""Python packages the engine needs, checked without importing them and installed only on request.

Nothing here runs at import time, and torch never enters Slicer's own process:

* torch is checked and installed by ``torch_env.py`` run in a ``PythonSlicer`` child process
  (:func:`start_torch_check`, :func:`start_torch_install`; blocking :func:`check_torch` for the
  console). The check refuses a torch older than :data:`TORCH_MINIMUM` and one that does not work
  with Slicer's NumPy, and lists the CUDA GPUs. The installation uses light-the-torch, the installer
  of Slicer's **PyTorch** extension (a dependency of this extension), which picks the CUDA or CPU
  build that fits the computer's driver; torchvision is not installed.
* The other packages (``Resources/requirements.txt``; ``requirements-tuning.txt`` for tuning) are
  installed with ``slicer.packaging.pip_ensure`` (Slicer 5.12) or, after asking, with
  ``slicer.util.pip_install`` (Slicer 5.10).
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runner

#: The minimum torch version the engine supports (checked for an installed torch too).
TORCH_MINIMUM = "2.1"
#: The first torch release whose installation into Slicer's Python is known to fail (see
#: :func:`install_requirement`); installs stay below it.
TORCH_FIRST_BROKEN = "2.13"

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?$")


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements file (comments, blanks and pip options skipped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def _satisfies(installed: str, spec: str) -> bool:
    """A small ``>=, >, ==, <, <=, !=`` check (enough for our own requirement files)."""
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.match(r"(>=|<=|==|!=|>|<|~=)\s*(.+)", clause)
        if not m:
            continue
        op, ver = m.groups()
        a, b = _version_tuple(installed), _version_tuple(ver)
        ok = {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b,
              "~=": a >= b}[op]
        if not ok:
            return False
    return True


def is_satisfied(requirement: str) -> bool:
    """Whether ``requirement`` (e.g. ``"nibabel>=5.0"``) is installed, judged from package metadata."""
    m = _REQ.match(requirement)
    if not m:
        return False
    name, spec = m.group(1), m.group(2)
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    try:
        from packaging.specifiers import SpecifierSet

        return not spec or SpecifierSet(spec).contains(installed, prereleases=True)
    except ImportError:
        return _satisfies(installed, spec)
    except Exception:  # an exotic version string: fall back to the simple comparison
        return _satisfies(installed, spec)


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements of the list that are not satisfied."""
    return [r for r in requirements if not is_satisfied(r)]


def torch_installed() -> bool:
    """Whether torch's package metadata is there (a quick hint for the panel; :func:`check_torch` decides)."""
    try:
        importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _testing(slicer) -> bool:
    app = getattr(slicer, "app", None)
    return bool(app is not None and app.testingEnabled())


# --------------------------------------------------------------------------------------------------
# torch: checked and installed only in a PythonSlicer child process (torch_env.py)


@dataclass
class TorchStatus:
    """What ``torch_env.py check`` found in the child interpreter.

    Attributes:
        status: ``"ok"``, ``"missing"``, ``"too_old"``, ``"numpy_abi"``, ``"broken"``, ``"install_failed"``
            (the installation stopped; ``message`` names the failed step and the installer's last output line)
            or ``"unknown"`` (the check itself could not run).
        torch, numpy: installed versions (``None`` when absent).
        message: the plain reason when not ok.
        devices: CUDA GPUs as ``{"name", "memory_gb"}`` (empty without a usable GPU).
    """

    status: str
    torch: str | None = None
    numpy: str | None = None
    message: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def installable(self) -> bool:
        """Whether pressing *Install* can fix it: not the numpy/torch clash on an Intel Mac, nor a torch that cannot be
        loaded unless it is a release the installation replaces (from :data:`TORCH_FIRST_BROKEN` on): pip keeps an
        installed version that satisfies the requirement, broken or not."""
        if self.status == "broken":
            return self.torch is not None and _version_tuple(self.torch.split("+", 1)[0]) >= _version_tuple(
                TORCH_FIRST_BROKEN)
        return self.status in ("missing", "too_old", "install_failed") or (
            self.status == "numpy_abi" and not _intel_mac())

    def advice(self) -> str:
        """One plain paragraph: what is wrong and what to do."""
        if self.ok:
            return ""
        if self.status == "numpy_abi" and _intel_mac():
            return (f"{self.message} The last PyTorch for Intel Macs (2.2) needs NumPy 1.x: run "
                    "slicer.util.pip_install('numpy<2') in the Python console, restart Slicer and register again.")
        if self.status == "numpy_abi":
            return (f"{self.message} Press 'Install' to replace it with a PyTorch built for NumPy 2, "
                    "then restart Slicer.")
        if self.status == "unknown":
            return f"PyTorch could not be checked: {self.message}"
        if self.status == "broken" and not self.installable:
            return (f"{self.message} Restart Slicer and register again; if it still fails, remove it: run "
                    "slicer.util.pip_uninstall('torch') in the Python console, restart Slicer and press 'Install'.")
        if self.status == "install_failed":
            return (f"{self.message} The installer's full output is in the module's Log section (in Slicer's log "
                    "when installed from the Python console). Check that this "
                    "computer reaches the internet (pypi.org and download.pytorch.org; a proxy or firewall may block "
                    "them) and has a few GB of free disk space, then press 'Install' to try again.")
        return (f"{self.message} Press 'Install' (downloads the CUDA or CPU build that fits this computer, a few "
                "hundred MB to a few GB; it runs in a separate process, Slicer stays usable).")

    def devices_text(self) -> str:
        """``"GPU: NVIDIA A100 (80.0 GB)"`` or ``"no CUDA GPU: the CPU is used"``."""
        if not self.devices:
            return "no CUDA GPU: the CPU is used"
        return "GPU: " + ", ".join(f"{d.get('name', '?')} ({d.get('memory_gb', '?')} GB)" for d in self.devices)


def _intel_mac() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "x86_64"


def torch_env_script() -> Path:
    """The checker/installer script run by the child interpreter."""
    return Path(__file__).resolve().with_name("torch_env.py")


def install_requirement(status: TorchStatus | None = None) -> str:
    """The torch requirement handed to light-the-torch.

    Bounded above: torch 2.13 changed its wheel's licence files and its installation into Slicer's Python
    fails (Slicer/light-the-torch#176, Slicer 5.12.2). After a NumPy ABI clash the lower bound is 2.3,
    the first release built for NumPy 2 (else pip keeps the installed, incompatible torch).
    """
    low = "2.3" if status is not None and status.status == "numpy_abi" else TORCH_MINIMUM
    return f"torch>={low},<{TORCH_FIRST_BROKEN}"


def start_torch_check(python: str | None = None, env: dict[str, str] | None = None,
                      on_log: Callable[[str], None] | None = None) -> runner.ChildProcess:
    """Start ``torch_env.py check`` in the child interpreter (``PythonSlicer``); poll it, then :func:`torch_status`."""
    args = [str(torch_env_script()), "check", "--minimum", TORCH_MINIMUM]
    return runner.ChildProcess(args, python=python, env=env if env is not None else runner.child_environment(),
                               on_log=on_log).start()


def start_torch_install(status: TorchStatus | None = None, python: str | None = None,
                        env: dict[str, str] | None = None,
                        on_log: Callable[[str], None] | None = None) -> runner.ChildProcess:
    """Start ``torch_env.py install`` (light-the-torch, then a fresh check) in the child interpreter."""
    args = [str(torch_env_script()), "install", "--minimum", TORCH_MINIMUM, "--requirement",
            install_requirement(status)]
    return runner.ChildProcess(args, python=python, env=env if env is not None else runner.child_environment(),
                               on_log=on_log).start()


def torch_status(child: runner.ChildProcess) -> TorchStatus:
    """The :class:`TorchStatus` reported by a finished check or install child."""
    result = child.result
    for event in reversed(child.events):
        if event.get("event") == "torch":
            status = TorchStatus(status=str(event.get("status", "unknown")), torch=event.get("torch"),
                                 numpy=event.get("numpy"), message=str(event.get("message", "")),
                                 devices=list(event.get("devices") or []))
            last = [line.strip() for line in (result.log_tail if result is not None else [])
                    if line.strip() and not line.lstrip().startswith("[notice]")]  # pip's upgrade notice says nothing
            if status.status == "install_failed" and last:
                status.message += f" Its last output line: '{last[-1]}'."
            return status
    reason = result.message if result is not None and result.message else "the check printed no result"
    return TorchStatus(status="unknown", message=reason)


def check_torch(python: str | None = None, env: dict[str, str] | None = None, timeout: float = 600.0) -> TorchStatus:
    """Blocking :func:`start_torch_check` (Python console, tests); the GUI polls the child instead."""
    child = start_torch_check(python, env)
    child.wait(timeout=timeout)
    return torch_status(child)


def install_torch(status: TorchStatus | None = None, python: str | None = None, env: dict[str, str] | None = None,
                  on_log: Callable[[str], None] | None = None, timeout: float | None = None) -> TorchStatus:
    """Blocking :func:`start_torch_install`; returns the status checked after the installation."""
    child = start_torch_install(status, python, env, on_log)
    child.wait(timeout=timeout)
    return torch_status(child)


def ensure_requirements(path: str | Path, ask: bool = True, requester: str = "SpatialVaryingReg") -> bool:
    """Inside Slicer: install what ``path`` lists and is missing, after asking; ``True`` when all are there."""
    requirements = read_requirements(path)
    missing = missing_requirements(requirements)
    if not missing:
        return True
    import slicer

    if _testing(slicer):
        return False
    try:
        import slicer.packaging as packaging  # Slicer >= 5.12
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(missing, prompt_install=ask, requester=requester)
        except RuntimeError:  # the user declined
            return False
        return not missing_requirements(requirements)
    if ask and not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages, which are not installed yet: {', '.join(missing)}.\n"
            "Install them now (internet connection needed)?", windowTitle=requester):
        return False
    slicer.util.pip_install(missing)
    return not missing_requirements(requirements)
