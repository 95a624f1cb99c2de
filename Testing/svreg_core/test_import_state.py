"""Importing svreg_core (every sub-package) changes no global state of matplotlib, nibabel, numpy or torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = r"""
import json, random
import matplotlib, numpy as np, torch, nibabel as nib
def snapshot():
    rc = matplotlib.rcParams
    return {"backend": rc._get_backend_or_none(),
            "rc": {k: str(dict.__getitem__(rc, k)) for k in rc if k != "backend"},
            "np": int(np.random.get_state()[1][:4].sum()), "torch": torch.get_rng_state()[:16].tolist(),
            "random": random.getstate()[1][:4], "threads": torch.get_num_threads(),
            "nib_log": nib.imageglobals.logger.level, "nib_err": nib.imageglobals.error_level,
            "nib_gzip": nib.openers.Opener.default_compresslevel,
            "grad": torch.is_grad_enabled(), "dtype": str(torch.get_default_dtype()),
            "pyplot": "matplotlib.pyplot" in __import__("sys").modules}
before = snapshot()
import pkgutil, importlib, svreg_core
for mod in pkgutil.walk_packages(svreg_core.__path__, "svreg_core."):
    importlib.import_module(mod.name)
after = snapshot()
print(json.dumps({"before": before, "after": after}))
"""


def test_importing_every_module_changes_no_global_state() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    states = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = states["before"], states["after"]
    for key in before:
        assert before[key] == after[key], f"importing svreg_core changed {key}"


def test_the_command_line_imports_no_plotting_or_optional_scipy_module() -> None:
    """Every ``svreg`` command imports :mod:`svreg_core.cli`; matplotlib (0.35 s), ``scipy.spatial`` (0.17 s) and
    ``scipy.ndimage`` (0.3 s) are imported only by the code that draws or uses them (``svreg --version``: 1.85 s
    instead of 2.5 s on 2 cores, 2026-11-28)."""
    probe = ("import sys, svreg_core.cli; "
             "print([m for m in ('matplotlib', 'scipy.spatial', 'scipy.ndimage') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
