"""Check (and install) PyTorch in the interpreter that runs this file: Slicer's ``PythonSlicer`` child.

Run as a script, never imported by Slicer's own process (torch must not enter it: a loaded torch also
locks its DLLs on Windows against later upgrades)::

    PythonSlicer torch_env.py check   --minimum 2.1
    PythonSlicer torch_env.py install --minimum 2.1 --requirement "torch>=2.1,<2.13"

Both print one JSON line ``{"event": "torch", ...}`` on standard output (see :func:`inspect`) after
their other output; after a failed installation its status is ``"install_failed"`` and its message names the
step that failed. ``install`` runs ``light-the-torch`` (the installer of Slicer's PyTorch extension,
which picks the CUDA or CPU build fitting the computer's driver) in this interpreter, installing
``light-the-torch`` with pip first when it is missing; torchvision is not installed (the engine
does not use it). The file uses the standard library only, and imports nothing of this package.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"2.4.1+cu121"`` -> ``(2, 4, 1)``."""
    parts = []
    for piece in text.split("+", 1)[0].split("."):
        found = re.match(r"\d+", piece)
        if not found:
            break
        parts.append(int(found.group()))
    return tuple(parts)


def inspect(minimum: str) -> dict:
    """Versions and devices of this interpreter's torch.

    Returns ``{"event": "torch", "status", "torch", "numpy", "minimum", "message", "devices"}`` where
    ``status`` is ``"ok"``, ``"missing"``, ``"too_old"``, ``"numpy_abi"`` (torch was built for another
    NumPy major version than the installed one) or ``"broken"`` (importing torch fails), ``message`` is
    the plain reason (empty when ok), and ``devices`` lists the CUDA GPUs as ``{"name", "memory_gb"}``
    (empty without a usable GPU).
    """
    info = {"event": "torch", "status": "ok", "torch": None, "numpy": None, "minimum": minimum, "message": "",
            "devices": []}
    try:
        info["numpy"] = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        info.update(status="missing", message="PyTorch is not installed in Slicer's Python.")
        return info
    if _version_tuple(info["torch"]) < _version_tuple(minimum):
        info.update(status="too_old", message=f"PyTorch {info['torch']} is installed; SpatialVaryingReg needs "
                                              f"{minimum} or newer.")
        return info
    try:
        import numpy
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is reported as one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        info.update(status="broken", message=f"PyTorch {info['torch']} cannot be loaded ({first}).")
        return info
    try:
        # the numpy <-> torch bridge fails when torch was compiled against another NumPy major version
        array = torch.from_numpy(numpy.arange(3, dtype=numpy.float32)).numpy()
        if float(array.sum()) != 3.0:
            raise RuntimeError("wrong values through torch.from_numpy")
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        info.update(status="numpy_abi", message=(
            f"PyTorch {info['torch']} does not work with NumPy {info['numpy']} ({first}); it was built for "
            "another NumPy major version."))
        return info
    try:
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                info["devices"].append({"name": str(props.name), "memory_gb": round(props.total_memory / 2**30, 1)})
    except Exception:  # noqa: BLE001 - a broken driver means no GPU, not a broken torch
        info["devices"] = []
    return info


def install(requirement: str) -> str:
    """Install ``requirement`` (e.g. ``"torch>=2.1,<2.13"``) with light-the-torch; ``""`` on success, else one plain
    sentence naming the step that failed and its exit status."""
    try:
        importlib.metadata.version("light-the-torch")
    except importlib.metadata.PackageNotFoundError:
        code = subprocess.call([sys.executable, "-m", "pip", "install", "light-the-torch>=0.7"])
        if code != 0:
            return (f"Installing PyTorch failed: pip could not install light-the-torch, the PyTorch installer "
                    f"(exit status {code}).")
    code = subprocess.call([sys.executable, "-m", "light_the_torch", "install", requirement])
    if code != 0:
        return f"Installing PyTorch failed: light-the-torch stopped with exit status {code} installing {requirement}."
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("check", "install"))
    parser.add_argument("--minimum", required=True)
    parser.add_argument("--requirement", default=None)
    args = parser.parse_args(argv)
    if args.action == "install":
        failure = install(args.requirement or f"torch>={args.minimum}")
        if failure:
            print(json.dumps({"event": "torch", "status": "install_failed", "torch": None, "numpy": None,
                              "minimum": args.minimum, "message": failure, "devices": []}), flush=True)
            return 1
        # the check runs in a fresh interpreter: this one may hold stale metadata caches
        return subprocess.call([sys.executable, __file__, "check", "--minimum", args.minimum])
    print(json.dumps(inspect(args.minimum)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
