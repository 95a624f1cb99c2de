"""Write a registration's outputs into a folder, atomically.

Everything is written into a hidden sibling folder first and renamed into place only when complete,
so an interrupted or failed run never leaves a folder that looks finished.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from svreg_core.errors import InputError, OutputError
from svreg_core.image import Image, save_image
from svreg_core.image.resample import resample
from svreg_core.metrics import dice, folding_percent, hd95, jacobian_determinant, ndv_percent, sdlogj
from svreg_core.outputs.figure import write_report_figure
from svreg_core.outputs.itk import displacement_nifti, write_transform
from svreg_core.registration import RegistrationResult, summarize

#: gzip level for NIfTI outputs: level 1 is ~5x faster than the default 9 and only slightly larger.
nib.openers.Opener.default_compresslevel = 1

#: Threads compressing and writing files (zlib and HDF5 release the GIL) and computing the metrics while
#: the main thread computes the next outputs.
_WORKER_THREADS = 3

OUTPUT_FILES = ("warped.nii.gz", "displacement.nii.gz", "transform.h5", "inverse_displacement.nii.gz",
                "regularization.nii.gz", "jacobian.nii.gz", "report.json", "report.png")


def prepare_output_dir(outdir: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = (),
                       create_parent: bool = True) -> Path:
    """Check ``outdir`` can be (re)created; refuse to overwrite without ``overwrite`` or to touch inputs.

    With ``create_parent`` a missing parent folder is created; without, nothing is created (an
    early check that must leave no trace if the run fails later).
    """
    out = Path(outdir).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output folder {out} already exists and is not empty; use --overwrite to replace it.")
    for p in inputs:
        p = Path(p).absolute()
        if out == p or out in p.parents:
            raise OutputError(f"output folder {out} contains the input {p}; choose another folder.")
    parent = out.parent
    existing = parent
    while not existing.exists():  # the nearest existing ancestor must be a writable folder
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {out}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {existing}: permission denied.")
    if create_parent and not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create {parent}: {exc.strerror}.") from None
    return out


def _versions() -> dict[str, str]:
    import SimpleITK
    import torch

    from svreg_core import __version__
    return {"svreg_core": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "nibabel": nib.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
            "python": platform.python_version()}


def compute_metrics(result: RegistrationResult, jac: np.ndarray, *, fixed_labels: Image | None = None,
                    warped_labels: Image | None = None, labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Regularity metrics of the mapping (inside the fixed foreground) and, with labels, overlap metrics."""
    fg = np.asarray(result.fixed.data) > float(np.min(result.fixed.data))
    metrics: dict[str, Any] = {
        "folding_percent": folding_percent(jac, fg),
        "ndv_percent": ndv_percent(result.displacement, result.fixed.affine, fg),
        "sdlogj": sdlogj(jac, fg),
        "jacobian_min": float(jac[fg].min()) if fg.any() else float(jac.min()),
    }
    if fixed_labels is not None and warped_labels is not None:
        d = dice(fixed_labels.data, warped_labels.data, labels)
        h = hd95(fixed_labels.data, warped_labels.data, labels, spacing=tuple(result.fixed.spacing))
        metrics["dice_mean"] = float(np.mean(list(d.values()))) if d else float("nan")
        metrics["dice"] = {str(k): float(v) for k, v in d.items()}
        finite = [v for v in h.values() if np.isfinite(v)]
        metrics["hd95_mean"] = float(np.mean(finite)) if finite else float("nan")
        metrics["hd95"] = {str(k): float(v) for k, v in h.items()}
    return metrics


def write_outputs(result: RegistrationResult, outdir: str | Path, *, fixed_labels: Image | None = None,
                  moving_labels: Image | None = None, labels: Sequence[int] | None = None,
                  label_mode: str = "linear", overwrite: bool = False, inputs: Sequence[str | Path] = (),
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write all outputs of ``result`` into ``outdir`` and return the report (also ``report.json``).

    Args:
        fixed_labels: label map on the fixed grid (scores Dice/HD95 when ``moving_labels`` is given).
        moving_labels: label map on the moving grid; written warped as ``warped_labels.nii.gz``.
        labels: label values to score (default: all labels present in both maps).
        label_mode: ``"linear"`` (one-hot trilinear + argmax) or ``"nearest"``.
        inputs: input file paths, which the output folder must not contain.
        extra: additional top-level report entries (e.g. input file names).
    """
    out = prepare_output_dir(outdir, overwrite=overwrite, inputs=inputs)
    if fixed_labels is not None and (fixed_labels.shape != result.fixed.shape
                                     or not np.allclose(fixed_labels.affine, result.fixed.affine, atol=1e-3)):
        raise InputError("fixed labels must be on the fixed image's grid (same shape and affine).")
    if moving_labels is not None and (moving_labels.shape != result.moving.shape
                                      or not np.allclose(moving_labels.affine, result.moving.affine, atol=1e-3)):
        raise InputError("moving labels must be on the moving image's grid (same shape and affine).")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        with ThreadPoolExecutor(max_workers=_WORKER_THREADS) as pool:
            pending = []

            def save(function, *args, **kwargs) -> None:
                pending.append(pool.submit(function, *args, **kwargs))

            fixed_grid = result.fixed.grid
            warped = result.warped
            save(save_image, warped, tmp / "warped.nii.gz")
            save(nib.save, displacement_nifti(result.displacement, fixed_grid), str(tmp / "displacement.nii.gz"))
            save(write_transform, tmp / "transform.h5", result.affine, result.deformable_displacement, fixed_grid)
            jac = jacobian_determinant(result.displacement, result.fixed.affine)
            jac_image = Image(jac.astype(np.float32), result.fixed.affine)
            save(save_image, jac_image, tmp / "jacobian.nii.gz")
            warped_labels = None
            if moving_labels is not None:
                warped_labels = result.warp_image(moving_labels, labels=True, label_mode=label_mode)
                save(save_image, warped_labels, tmp / "warped_labels.nii.gz", dtype=np.int32)
            # the metrics (NumPy/SciPy, mostly one core) run while the inverse is integrated (torch)
            metrics_job = pool.submit(compute_metrics, result, jac, fixed_labels=fixed_labels,
                                      warped_labels=warped_labels, labels=labels)
            save(nib.save, displacement_nifti(result.inverse_displacement(), result.moving.grid),
                 str(tmp / "inverse_displacement.nii.gz"))
            weight = result.regularization_map()
            save(save_image, weight, tmp / "regularization.nii.gz")
            before = resample(torch.as_tensor(np.asarray(result.moving.data, np.float32))[None, None],
                              result.moving.grid, fixed_grid)[0, 0].numpy()
            metrics = metrics_job.result()
            title = f"SPR registration — Jacobian ≤ 0: {metrics['folding_percent']:.4f} %"
            if "dice_mean" in metrics:
                title += f" — mean Dice {metrics['dice_mean']:.3f}"
            write_report_figure(tmp / "report.png", fixed=result.fixed,
                                moving_before=Image(before, result.fixed.affine), warped=warped, weight=weight,
                                jacobian=jac_image, title=title)
            for future in pending:
                future.result()  # re-raises the first failed write
        report = {**summarize(result), "metrics": metrics, "label_interpolation": label_mode,
                  "versions": _versions(), **(extra or {})}
        report["timing"]["outputs_s"] = time.perf_counter() - t0
        report["timing"]["total_s"] = report["timing"]["registration_s"] + report["timing"]["outputs_s"]
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing an existing ``out`` only at the end."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)
