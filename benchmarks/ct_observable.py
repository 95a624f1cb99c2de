"""Where on the motion boundary does the image show the slip? SPR against uniform, split by visibility.

One command (main venv), after ``benchmarks/ct_known_warp.py --sweep`` has left its runs in ``.bench/ct/runs``::

    .venv/bin/python benchmarks/ct_observable.py [--cases lung aorta] [--out FILE.md]

The CT known-warp cases slide a structure *tangentially* along its surface. A tangential slip changes the
image only where the intensity varies along the slip direction: along a smooth, homogeneous wall (the
contrast-filled aorta, the lung surface) no registration can see it. For each motion-boundary voxel
(``band`` of ``truth.npz``, valid voxels) this script measures how visible the slip is:

* ``t``: the direction of the true slip, the tangential part of the true displacement inside the moving
  region (``u − (u·n) n``, ``n`` the unit gradient of the signed distance), carried to the band voxels
  outside the region from their nearest region voxel;
* visibility ``|∂I/∂t|``: the fixed image's derivative along ``t`` (HU per mm, Gaussian derivatives with
  σ = 1 voxel along each axis).

The band is split at a quantile of the visibility (``--split``, default the median) into a *visible* and a
*barely visible* part, and each run's end-point error is averaged in each part. SPR is compared with the
uniform regulariser at equal SDlogJ (the uniform curve's EPE in the same part interpolated linearly in
SDlogJ, as ``ct_known_warp.py`` does for the whole band). Reads the runs only; registers nothing. Data: the
CT evaluation cases (nothing is chosen here).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import ct_cases  # noqa: E402
import evaluate as ev  # noqa: E402

from svreg_core import metrics  # noqa: E402

CT_DIR = REPO / ".bench" / "ct"


def slip_visibility(case_dir: Path, truth: dict[str, np.ndarray]) -> np.ndarray:
    """``|∂I/∂t|`` (HU/mm) of the fixed image along the true slip direction, at every voxel (NaN where the
    slip direction is undefined)."""
    fixed = nib.load(str(case_dir / "fixed.nii.gz"))
    image = np.asarray(fixed.dataobj, dtype=np.float64)
    linear = fixed.affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    # world-space gradients (RAS mm): voxel-axis derivatives through the inverse of the affine's linear part
    sdf_vox = np.stack(np.gradient(truth["sdf"].astype(np.float64)), axis=-1)
    image_vox = np.stack([ndimage.gaussian_filter(image, 1.0, order=tuple(int(a == b) for b in range(3)))
                          for a in range(3)], axis=-1)
    inverse_t = np.linalg.inv(linear).T  # d/dx = inv(M)^T d/dijk
    grad_sdf = sdf_vox @ inverse_t.T
    grad_image = image_vox @ inverse_t.T
    normal = grad_sdf / np.maximum(np.linalg.norm(grad_sdf, axis=-1, keepdims=True), 1e-9)
    u = truth["u"].astype(np.float64)
    tangential = u - np.sum(u * normal, axis=-1, keepdims=True) * normal
    region = truth["region"]
    # outside the moving region the true field is the normal push: take the slip of the nearest region voxel
    _, nearest = ndimage.distance_transform_edt(~region, sampling=spacing, return_indices=True)
    slip = tangential[tuple(nearest)]
    length = np.linalg.norm(slip, axis=-1)
    direction = slip / np.maximum(length, 1e-9)[..., None]
    visibility = np.abs(np.sum(grad_image * direction, axis=-1))
    return np.where(length > 1e-6, visibility, np.nan)


def run_rows(case: str, truth: dict[str, np.ndarray], visible: np.ndarray, hidden: np.ndarray,
             spr_suffix: str = "") -> list[dict]:
    """EPE in the two parts of the band, SDlogJ and λ_max of the SPR runs named with ``spr_suffix`` and the
    plain uniform runs of ``case``."""
    case_dir = CT_DIR / "cases" / case
    fixed = nib.load(str(case_dir / "fixed.nii.gz"))
    rows = []
    for run in sorted((CT_DIR / "runs" / case).glob("svreg-*-x*")):
        parts = run.name.split("-", 3)
        suffix = parts[3] if len(parts) == 4 else ""
        if suffix != (spr_suffix if parts[1] == "spr" else "") or not (run / "displacement.nii.gz").exists():
            continue  # other sweeps (smoothing passes, α′, --quick or other iterations / pyramid) are left out
        disp = ev.load_displacement_ras(run / "displacement.nii.gz", fixed)
        err = np.linalg.norm(disp - truth["u"], axis=-1)
        det = metrics.jacobian_determinant(disp, fixed.affine)
        band = truth["band"] & truth["valid"]
        rows.append({"variant": parts[1], "factor": float(parts[2][1:]),
                     "sdlogj": metrics.sdlogj(det, truth["body"]),
                     "epe_band": float(err[band].mean()),
                     "epe_visible": float(err[visible].mean()), "epe_hidden": float(err[hidden].mean())})
    return rows


def at_equal_sdlogj(rows: list[dict], key: str) -> list[tuple[float, float, float, float]]:
    """(λ_max factor, SDlogJ, SPR's ``key``, uniform's ``key`` interpolated at that SDlogJ) for each SPR run
    inside the uniform curve's SDlogJ range (:func:`evaluate.uniform_at_equal_sdlogj`)."""
    spr_first = sorted(rows, key=lambda r: r["factor"])
    return [(r["factor"], r["sdlogj"], r[key], uniform) for r, uniform in ev.uniform_at_equal_sdlogj(spr_first, key)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(ct_cases.SPECS), choices=list(ct_cases.ALL_SPECS))
    ap.add_argument("--spr-suffix", default="", metavar="S",
                    help="the SPR runs named svreg-spr-xF-S (e.g. ls: ct_known_warp.py --lambda-smoothing) against "
                         "the plain uniform runs")
    ap.add_argument("--split", type=float, default=0.5,
                    help="visibility quantile that splits the band (0.5: halves; 0.75: the top quarter is 'visible')")
    ap.add_argument("--out", type=Path, help="also write the tables as markdown")
    args = ap.parse_args(argv)
    lines = [f"# SPR against uniform where the slip is visible ({_dt.date.today()})", "",
             f"`.venv/bin/python benchmarks/ct_observable.py --split {args.split:g}"
             + (f" --spr-suffix {args.spr_suffix}" if args.spr_suffix else "") + "` on the runs of "
             "`ct_known_warp.py --sweep` (module "
             "docstring: visibility = the fixed image's derivative along the true slip direction; the motion "
             f"boundary split at its visibility quantile {args.split:g}). EPE in mm; Δ = SPR against uniform "
             "interpolated at SDlogJ.", ""]
    for case in args.cases:
        case_dir = CT_DIR / "cases" / case
        truth = ct_cases.load_truth(case_dir)
        band = truth["band"] & truth["valid"]
        visibility = slip_visibility(case_dir, truth)
        band &= np.isfinite(visibility)
        cut = float(np.quantile(visibility[band], args.split))
        visible, hidden = band & (visibility >= cut), band & (visibility < cut)
        rows = run_rows(case, truth, visible, hidden, args.spr_suffix)
        lines += [f"## {case}", "",
                  f"Band voxels {int(band.sum())}, split at the visibility quantile {args.split:g}, {cut:.1f} HU/mm "
                  f"(visible part: mean {visibility[visible].mean():.1f}, barely visible part: "
                  f"{visibility[hidden].mean():.1f}).", "",
                  "| λ_max factor | SDlogJ | band: SPR / uniform (Δ) | visible part (Δ) | barely visible part (Δ) |",
                  "|---:|---:|---|---|---|"]
        whole = {f: (s, a, b) for f, s, a, b in at_equal_sdlogj(rows, "epe_band")}
        vis = {f: (a, b) for f, _, a, b in at_equal_sdlogj(rows, "epe_visible")}
        hid = {f: (a, b) for f, _, a, b in at_equal_sdlogj(rows, "epe_hidden")}
        for factor, (sd, a, b) in whole.items():
            cells = [f"{x:.3f} / {y:.3f} ({100 * (x - y) / y:+.1f} %)" for x, y in (
                (a, b), vis[factor], hid[factor])]
            lines.append(f"| {factor:g} | {sd:.3f} | " + " | ".join(cells) + " |")
        if not whole:
            lines.append("| – | – | no SPR run inside the uniform curve's SDlogJ range | | |")
        u = np.linalg.norm(truth["u"], axis=-1)
        lines += ["", "Every run (EPE mm; the identity's error is the true displacement):", "",
                  "| run | SDlogJ | band | visible part | barely visible part |", "|---|---:|---:|---:|---:|",
                  f"| identity | – | {u[band].mean():.3f} | {u[visible].mean():.3f} | {u[hidden].mean():.3f} |"]
        lines += [f"| {r['variant']} × {r['factor']:g} | {r['sdlogj']:.3f} | {r['epe_band']:.3f} | "
                  f"{r['epe_visible']:.3f} | {r['epe_hidden']:.3f} |"
                  for r in sorted(rows, key=lambda r: (r["variant"], r["factor"]))]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
