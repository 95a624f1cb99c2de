"""``benchmarks/cohort.py`` refuses what it cannot finish before its first registration (each pair takes minutes,
and nothing is written until every pair is done)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _cohort(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "cohort.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cohort_names_a_missing_subject_before_registering(tmp_path: Path) -> None:
    """A mistyped subject (``--subjects 11 12 31``) used to end the run in a traceback when its first pair came up,
    after the pairs before it had been registered, and with no results file."""
    data = tmp_path / "mindboggle"
    for subject in ("11", "12"):
        (data / f"sub-{subject}").mkdir(parents=True)
        for name in ("t1.nii.gz", "labels.nii.gz"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(data / f"sub-{subject}" / name))
    out = tmp_path / "runs"
    # `false` stands in for svreg: a pair that were registered fails at once
    proc = _cohort("--data", str(data), "--subjects", "11", "12", "31", "--variants", "pairwise", "--out", str(out),
                   "--svreg", "false")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "", "a pair was registered before the missing subject was noticed"
    sub31 = data / "sub-31"
    assert proc.stderr.strip() == (f"cohort: missing {sub31 / 't1.nii.gz'}, {sub31 / 'labels.nii.gz'}; nothing was "
                                   "registered")
    proc = _cohort("--data", str(data), "--subjects", "11", "--svreg", "false")
    assert proc.returncode == 2
    assert "--subjects needs at least two different subjects" in proc.stderr
