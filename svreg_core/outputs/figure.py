"""The at-a-glance report figure: images, differences, λ map and Jacobian on three orthogonal slices."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from svreg_core.image.image import Image


def to_ras_array(image: Image) -> np.ndarray:
    """The image's array flipped/permuted to the closest RAS axis order (for display only)."""
    ornt = nib.orientations.io_orientation(image.affine)
    return nib.orientations.apply_orientation(np.asarray(image.data), ornt)


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS-ordered volume, oriented for ``imshow(origin='lower')``."""
    i, j, k = centre
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def write_report_figure(path: str | Path, *, fixed: Image, moving_before: Image, warped: Image,
                        weight: Image, jacobian: Image, title: str = "") -> Path:
    """Save a PNG: rows = axial/coronal/sagittal; columns = fixed, moving (before), warped,
    |fixed − moving|, |fixed − warped|, λ(x), det J. All inputs must be on the fixed grid.

    Slices pass through the centre of the fixed image's bounding box of non-zero voxels, in
    neurological display (subject's right on the right of each panel, anterior/superior up).
    """
    arrays = {name: to_ras_array(img) for name, img in
              (("fixed", fixed), ("moving", moving_before), ("warped", warped), ("lambda", weight),
               ("jacobian", jacobian))}
    f = arrays["fixed"]
    nz = np.argwhere(f > f.min())
    centre = tuple(((nz.min(0) + nz.max(0)) // 2) if len(nz) else np.asarray(f.shape) // 2)
    scale = lambda a: a / (np.percentile(a[a > a.min()], 99.5) if np.any(a > a.min()) else 1.0)  # noqa: E731
    fn, mn, wn = (scale(arrays[n]) for n in ("fixed", "moving", "warped"))
    columns = [
        ("fixed", fn, dict(cmap="gray", vmin=0, vmax=1)),
        ("moving (before)", mn, dict(cmap="gray", vmin=0, vmax=1)),
        ("warped", wn, dict(cmap="gray", vmin=0, vmax=1)),
        ("|fixed − moving|", np.abs(fn - mn), dict(cmap="magma", vmin=0, vmax=0.5)),
        ("|fixed − warped|", np.abs(fn - wn), dict(cmap="magma", vmin=0, vmax=0.5)),
        ("λ(x) regularization", arrays["lambda"], dict(cmap="viridis", vmin=0, vmax=1)),
        ("det J", arrays["jacobian"], dict(cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=1.0, vmin=0.0, vmax=2.0))),
    ]
    # an explicit Agg figure: no pyplot, so importing or calling this never touches matplotlib's global backend
    fig = Figure(figsize=(2.4 * len(columns), 7.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(columns))
    for c, (name, vol, style) in enumerate(columns):
        for r, sl in enumerate(_slices(vol, centre)):
            im = axes[r, c].imshow(sl, origin="lower", interpolation="nearest", **style)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[0, c].set_title(name, fontsize=9)
        if name.startswith(("λ", "det", "|")):
            fig.colorbar(im, ax=axes[:, c], shrink=0.6, location="bottom")
    for r, label in enumerate(("axial", "coronal", "sagittal")):
        axes[r, 0].set_ylabel(label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(str(path), dpi=90)
    return Path(path)
