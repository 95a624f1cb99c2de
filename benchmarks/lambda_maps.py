"""Figure of the λ maps (and Jacobians) of several svreg runs on one fixed image.

    .venv/bin/python benchmarks/lambda_maps.py docs/figures/lambda_maps.png FIXED.nii.gz \\
        "pairwise=.bench/runs/1mm/ours" "learned=.bench/runs/1mm/ours_model" ...

Each run folder holds ``regularization.nii.gz`` and ``jacobian.nii.gz`` on the fixed grid. Rows: runs;
columns: λ on an axial, coronal and sagittal slice through the brain's centre (one colour scale per
row, fitted to that run's range inside the brain and printed), then log2 det J on the axial slice.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure


def _ras(path: Path) -> np.ndarray:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    out, fixed_path, runs = Path(argv[0]), Path(argv[1]), [a.split("=", 1) for a in argv[2:]]
    fixed = _ras(fixed_path)
    brain = fixed > 0.05 * fixed.max()
    idx = np.argwhere(brain)
    ci, cj, ck = ((idx.min(0) + idx.max(0)) // 2).tolist()
    fig = Figure(figsize=(13, 3.2 * len(runs)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), 4, squeeze=False)
    for row, (name, folder) in enumerate(runs):
        lam = _ras(Path(folder) / "regularization.nii.gz")
        jac = _ras(Path(folder) / "jacobian.nii.gz")
        inside = lam[brain]
        lo, hi = float(np.percentile(inside, 1)), float(inside.max())
        slices = [lam[:, :, ck].T, lam[:, cj, :].T, lam[ci, :, :].T]
        masks = [brain[:, :, ck].T, brain[:, cj, :].T, brain[ci, :, :].T]
        for col, (sl, m) in enumerate(zip(slices, masks)):
            ax = axes[row, col]
            ax.imshow(np.where(m, sl, np.nan), origin="lower", cmap="viridis", vmin=lo, vmax=max(hi, lo + 1e-6))
            ax.set_xticks([])
            ax.set_yticks([])
        im = axes[row, 0].images[0]
        fig.colorbar(im, ax=axes[row, :3], shrink=0.8, label="λ(x)")
        axes[row, 0].set_ylabel(name, fontsize=11)
        axes[row, 1].set_title(f"λ in the brain: 1st percentile {lo:.3f}, median {np.median(inside):.3f}, "
                               f"min {inside.min():.3f}, max {hi:.3f}", fontsize=9)
        logj = np.log2(np.clip(jac[:, :, ck].T, 1e-3, None))
        ax = axes[row, 3]
        j = ax.imshow(np.where(brain[:, :, ck].T, logj, np.nan), origin="lower", cmap="RdBu_r",
                      norm=TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"log2 det J (axial), folded {100 * float((jac[brain] <= 0).mean()):.4f} %", fontsize=9)
        fig.colorbar(j, ax=ax, shrink=0.8)
    fig.suptitle(f"λ maps and Jacobians on {fixed_path.name} (RAS display, slices through the brain centre)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), dpi=80)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
