"""Shared helpers for the peer runners (run inside each peer's own virtual environment).

Only numpy and nibabel are assumed here. Every runner is called as

    python run_<peer>.py FIXED MOVING MOVING_SEG OUTDIR
    python run_<peer>.py --check          (import check; prints the tool's version)

and writes into OUTDIR:

* ``warped_seg.nii.gz``   moving labels warped onto the fixed grid, nearest neighbour, int16/int32
* ``displacement.nii.gz`` the mapping as a displacement on the fixed grid in the ITK convention:
  5-D NIfTI ``(I, J, K, 1, 3)``, intent VECTOR, **LPS millimetres**, a fixed-space point ``x`` maps to
  ``x + u(x)`` in moving space (the resampling / pull direction)
* ``runner.json``         tool, version, registration wall seconds (excluding I/O) and settings
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
# Same thread budget for every tool (the orchestrator also exports these).
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))

#: diagonal RAS <-> LPS flip (self-inverse)
RAS_LPS = np.array([-1.0, -1.0, 1.0])


def parse_args(description: str) -> argparse.Namespace | None:
    """Parse the runner CLI. Returns None for ``--check``."""
    if "--check" in sys.argv[1:]:
        return None
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("fixed")
    ap.add_argument("moving")
    ap.add_argument("moving_seg")
    ap.add_argument("outdir")
    args = ap.parse_args()
    Path(args.outdir).mkdir(parents=True, exist_ok=True)
    return args


class Timer:
    """Wall-clock timer for the registration call itself (no file I/O inside)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def voxel_to_lps_mm(disp_vox_ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel-index displacement ``(..., 3)`` in (i, j, k) order -> LPS millimetres via the RAS affine."""
    ras = disp_vox_ijk.astype(np.float64) @ np.asarray(affine, dtype=np.float64)[:3, :3].T
    return ras * RAS_LPS


def save_displacement_lps(disp_lps: np.ndarray, fixed_img: nib.Nifti1Image, path: str | Path) -> None:
    """Write an ``(I, J, K, 3)`` LPS-mm displacement on the fixed grid as ITK's 5-D vector NIfTI."""
    disp_lps = np.asarray(disp_lps, dtype=np.float32)
    if disp_lps.shape != tuple(fixed_img.shape[:3]) + (3,):
        raise ValueError(f"displacement shape {disp_lps.shape} does not match fixed {fixed_img.shape[:3]}")
    img = nib.Nifti1Image(disp_lps[:, :, :, None, :], fixed_img.affine)
    img.header.set_intent("vector", (), "")
    img.header.set_xyzt_units("mm")
    img.set_qform(fixed_img.affine, code=1)
    img.set_sform(fixed_img.affine, code=1)
    nib.save(img, str(path))


def save_labels(labels: np.ndarray, fixed_img: nib.Nifti1Image, path: str | Path) -> None:
    """Write an integer label map on the fixed grid."""
    labels = np.rint(np.asarray(labels)).astype(np.int32)
    if labels.shape != tuple(fixed_img.shape[:3]):
        raise ValueError(f"label shape {labels.shape} does not match fixed {fixed_img.shape[:3]}")
    img = nib.Nifti1Image(labels, fixed_img.affine)
    img.set_qform(fixed_img.affine, code=1)
    img.set_sform(fixed_img.affine, code=1)
    nib.save(img, str(path))


def write_runner_json(outdir: str | Path, tool: str, version: str, seconds: float, **settings) -> None:
    info = {
        "tool": tool,
        "version": version,
        "registration_seconds": round(float(seconds), 3),
        "threads": THREADS,
        "python": platform.python_version(),
        "settings": settings,
    }
    Path(outdir, "runner.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def itk_array_to_ijk(arr: np.ndarray) -> np.ndarray:
    """ITK/SimpleITK numpy views are (k, j, i[, c]); return (i, j, k[, c])."""
    if arr.ndim == 4:
        return np.ascontiguousarray(arr.transpose(2, 1, 0, 3))
    return np.ascontiguousarray(arr.transpose(2, 1, 0))
