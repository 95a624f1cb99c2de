"""Python packages the engine needs, checked without importing them and installed only on request.

Nothing here runs at import time. The checks read package metadata (``importlib.metadata``) and
``importlib.util.find_spec``: torch is never imported into the Slicer process by a check.

* torch comes from Slicer's **PyTorch** extension (declared as a dependency of this extension): it
  picks the CUDA or CPU build that fits the computer's driver.
* The other packages (``Resources/requirements.txt``; ``requirements-tuning.txt`` for tuning) are
  installed with ``slicer.packaging.pip_ensure`` (Slicer 5.12) or, after asking, with
  ``slicer.util.pip_install`` (Slicer 5.10).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

#: The minimum torch version the engine supports.
TORCH_REQUIREMENT = ">=2.1"

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
    """Whether torch is installed (metadata and an importable spec), without importing it."""
    try:
        importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("torch") is not None


def _testing(slicer) -> bool:
    app = getattr(slicer, "app", None)
    return bool(app is not None and app.testingEnabled())


TORCH_MISSING_MESSAGE = (
    "PyTorch is not installed in Slicer. SpatialVaryingReg needs it to compute registrations. "
    "It is installed by the PyTorch extension (Extension Manager), which chooses the CUDA (GPU) or CPU "
    "build that fits this computer. Install it now? (download of a few hundred MB to a few GB)")


def ensure_torch(ask: bool = True) -> bool:
    """Inside Slicer: offer to install torch through the PyTorch extension; ``True`` when torch is there.

    Raises ``RuntimeError`` with a plain message when the PyTorch extension is missing.
    """
    if torch_installed():
        return True
    import slicer

    if _testing(slicer):
        return False  # a self-test never installs anything; it reports what is missing
    if ask and not slicer.util.confirmOkCancelDisplay(TORCH_MISSING_MESSAGE, windowTitle="SpatialVaryingReg"):
        return False
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("the PyTorch extension is not installed: open the Extension Manager, install "
                           "'PyTorch', restart Slicer, then press Register again.") from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=TORCH_REQUIREMENT)
    return torch is not None


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
