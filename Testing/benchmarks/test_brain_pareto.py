"""``benchmarks/brain_pareto.py`` refuses a sweep it cannot run before its first registration."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_brain_pareto_refuses_a_factor_that_is_not_positive(tmp_path: Path) -> None:
    """``--factors 0 1`` used to start the sweep and end in a CalledProcessError traceback when svreg refused
    λ_max 0; now one line, before anything runs."""
    for name in ("fixed.nii.gz", "moving.nii.gz", "fixed_seg.nii.gz", "moving_seg.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / name))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "brain_pareto.py"), "--data", str(tmp_path),
                           "--factors", "0", "1"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "", "a registration was started"
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "error: --factors must be positive (multiples of the preset's λ_max) and --threads at least 1")
