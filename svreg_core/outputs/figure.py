"""The at-a-glance report figure: images, differences, λ map and Jacobian on three orthogonal slices."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from svreg_core.image.image import Image
from svreg_core.image.normalize import FOREGROUND_LEVEL, intensity_window

#: Views: name, the RAS axis fixed by the slice, (left, right, bottom, top) orientation letters.
_VIEWS = (("axial", 2, ("L", "R", "P", "A")), ("coronal", 1, ("L", "R", "I", "S")),
          ("sagittal", 0, ("P", "A", "I", "S")))

#: Colour of the folded voxels (det J ≤ 0) on the det J panels: none of the blue-white-red scale's colours.
FOLD_COLOUR = "lime"

#: Smallest half-range of the log₂ det J colour scale (a range of det J from 0.84 to 1.19 at least).
_MIN_LOG2_RANGE = 0.25


def to_ras_array(image: Image) -> np.ndarray:
    """The image's array flipped/permuted to the closest RAS axis order (for display only)."""
    ornt = nib.orientations.io_orientation(image.affine)
    return nib.orientations.apply_orientation(np.asarray(image.data), ornt)


def ras_array_affine(image: Image) -> np.ndarray:
    """Voxel-to-RAS affine of :func:`to_ras_array`'s array."""
    ornt = nib.orientations.io_orientation(image.affine)
    return image.affine @ nib.orientations.inv_ornt_aff(ornt, image.shape)


def _slices(volume: np.ndarray, centre: tuple[int, ...]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS-ordered volume, oriented for ``imshow(origin='lower')``."""
    i, j, k = centre
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def slice_aspects(image: Image) -> tuple[float, float, float]:
    """``imshow`` aspects of :func:`_slices`' axial, coronal and sagittal slices of ``image``: the mm per voxel of
    the axis shown upwards over that of the axis shown across, so anisotropic voxels keep their shape."""
    s = np.linalg.norm(ras_array_affine(image)[:3, :3], axis=0)
    return float(s[1] / s[0]), float(s[2] / s[0]), float(s[2] / s[1])


def lambda_range(weight: np.ndarray) -> tuple[float, float]:
    """The colour range of the λ panel: λ's minimum and maximum (widened to 1e-3 when λ is constant)."""
    low, high = float(np.min(weight)), float(np.max(weight))
    if high - low < 1e-3:
        mid = 0.5 * (low + high)
        low, high = mid - 5e-4, mid + 5e-4
    return low, high


def lambda_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """The λ colour bar's ticks (the ends and the middle of its range ``low``-``high``) and their labels, with
    just enough decimals (at least 2) to tell neighbours apart: a nearly constant λ would otherwise get
    matplotlib's offset notation (``+1``) and crowded labels."""
    ticks = [low, 0.5 * (low + high), high]
    step = 0.5 * (high - low)
    decimals = min(6, max(2, math.ceil(-math.log10(step)))) if step > 0 else 2
    return ticks, [f"{t:.{decimals}f}" for t in ticks]


def log2_jacobian(jacobian: np.ndarray, foreground: np.ndarray) -> np.ma.MaskedArray:
    """log₂ det J, masked outside ``foreground`` and where det J ≤ 0 (those drawn by :func:`folded`)."""
    jac = np.asarray(jacobian, dtype=np.float64)
    valid = foreground & (jac > 0)
    return np.ma.masked_array(np.log2(np.where(valid, jac, 1.0)), mask=~valid)


def folded(jacobian: np.ndarray, foreground: np.ndarray) -> np.ma.MaskedArray:
    """Ones where det J ≤ 0 inside ``foreground`` (drawn in :data:`FOLD_COLOUR`), masked elsewhere."""
    fold = np.asarray(foreground) & (np.asarray(jacobian) <= 0)
    return np.ma.masked_array(np.ones(fold.shape, np.float32), mask=~fold)


def log2_range(jacobian: np.ndarray, foreground: np.ndarray) -> float:
    """Half-range of the symmetric log₂ det J colour scale: the largest |log₂ det J| over the foreground voxels
    with det J > 0 (the extremes of det J give it: no log of the whole volume is formed), at least
    :data:`_MIN_LOG2_RANGE`."""
    jac = np.asarray(jacobian)
    valid = foreground & (jac > 0)
    if not valid.any():
        return _MIN_LOG2_RANGE
    extremes = np.array([jac.min(where=valid, initial=np.inf), jac.max(where=valid, initial=-np.inf)], np.float64)
    return max(float(np.abs(np.log2(extremes)).max()), _MIN_LOG2_RANGE)


def orientation_letter(ax: Any, text: str, xy: tuple[float, float], align: tuple[str, str]) -> None:
    """Draw an orientation letter at ``xy`` (axes fraction) of the panel ``ax``: yellow outlined in black, readable
    on every panel's colours (white, viridis' yellow), and bold: at 7 points and 90 dpi a regular "L"'s foot is
    thinner than a pixel and Agg's pixel snapping of straight outlines erased it at a third of the positions, so
    on a black background it read as "I"."""
    from matplotlib.patheffects import withStroke

    ax.text(*xy, text, transform=ax.transAxes, ha=align[0], va=align[1], fontsize=7, fontweight="bold",
            color="yellow", path_effects=[withStroke(linewidth=1.5, foreground="black")])


def write_report_figure(path: str | Path, *, fixed: Image, moving_before: Image, warped: Image,
                        weight: Image, jacobian: Image, title: str = "",
                        dice: tuple[float, float] | None = None) -> Path:
    """Save a PNG: rows = axial/coronal/sagittal; columns = fixed, moving (before), warped,
    |fixed − moving|, |fixed − warped|, λ(x), det J. All inputs must be on the fixed grid.
    Each grey-value image is shown over its own
    :func:`~svreg_core.image.normalize.intensity_window` (0 to 1), the differences in those units.

    The fixed image's foreground is its voxels above :data:`~svreg_core.image.normalize.FOREGROUND_LEVEL` of its
    grey window (MR: not the background; CT: not the air). Slices pass through the centre of its bounding box,
    in neurological display (subject's right on the right of each panel, anterior/superior up), with
    orientation letters (yellow outlined in black: readable on every panel's colours) and the slice position
    (RAS mm). λ is coloured over its own range (printed);
    det J on a log₂ scale symmetric around 1, inside the foreground only (the background left blank), its folded
    voxels (det J ≤ 0) in :data:`FOLD_COLOUR`. ``dice`` (mean Dice before, after) goes in the title.
    """
    # imported here: matplotlib takes a third of a second to import, which every svreg command would pay
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap, TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    arrays = {name: to_ras_array(img) for name, img in
              (("fixed", fixed), ("moving", moving_before), ("warped", warped), ("lambda", weight),
               ("jacobian", jacobian))}
    # the grey windows come from the whole volumes; only the three slices of each panel are computed
    # (whole-volume temporaries of a 1 mm brain are 30-60 MB each)
    windows = {n: intensity_window(arrays[n]) for n in ("fixed", "moving", "warped")}
    f, (low, high) = arrays["fixed"], windows["fixed"]
    foreground = f > low + FOREGROUND_LEVEL * (high - low)
    nz = np.argwhere(foreground)
    centre = tuple(int(v) for v in (((nz.min(0) + nz.max(0)) // 2) if len(nz) else np.asarray(f.shape) // 2))
    position = ras_array_affine(fixed)[:3, :3] @ np.asarray(centre, float) + ras_array_affine(fixed)[:3, 3]
    fn, mn, wn = ([(sl - windows[n][0]) / (windows[n][1] - windows[n][0]) for sl in _slices(arrays[n], centre)]
                  for n in ("fixed", "moving", "warped"))
    lam_low, lam_high = lambda_range(arrays["lambda"])
    jac_slices, fg_slices = _slices(arrays["jacobian"], centre), _slices(foreground, centre)
    log_jac = [log2_jacobian(sl, fg) for sl, fg in zip(jac_slices, fg_slices)]
    folds = [folded(sl, fg) for sl, fg in zip(jac_slices, fg_slices)]
    half = log2_range(arrays["jacobian"], foreground)
    # title, the three slices, imshow style, colour-bar label (None: no colour bar)
    columns: list[tuple[str, Sequence[np.ndarray], dict[str, Any], str | None]] = [
        ("fixed", fn, dict(cmap="gray", vmin=0, vmax=1), None),
        ("moving (before)", mn, dict(cmap="gray", vmin=0, vmax=1), None),
        ("warped", wn, dict(cmap="gray", vmin=0, vmax=1), None),
        ("|fixed − moving|", [np.abs(a - b) for a, b in zip(fn, mn)], dict(cmap="magma", vmin=0, vmax=0.5),
         "|difference| (0–1: each image's grey window)"),
        ("|fixed − warped|", [np.abs(a - b) for a, b in zip(fn, wn)], dict(cmap="magma", vmin=0, vmax=0.5),
         "|difference| (0–1: each image's grey window)"),
        (f"λ(x): {lam_low:.3g} – {lam_high:.3g}", _slices(arrays["lambda"], centre),
         dict(cmap="viridis", vmin=lam_low, vmax=lam_high), "λ (dimensionless, own range)"),
        ("det J (foreground)", log_jac, dict(cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-half, vmax=half)),
         f"det J (log scale; <1 shrinks, >1 grows)\n{FOLD_COLOUR}: det J ≤ 0 (folded)"),
    ]
    # an explicit Agg figure: no pyplot, so importing or calling this never touches matplotlib's global backend;
    # a fixed grid (fractions of the figure) with a strip for the colour bars below it, not a layout engine
    # (constrained layout took a third of the figure's time)
    aspects = slice_aspects(fixed)
    fig = Figure(figsize=(2.5 * len(columns), 8.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(columns), gridspec_kw=dict(left=0.03, right=0.995, top=0.92, bottom=0.14,
                                                          wspace=0.06, hspace=0.06))
    for c, (name, views, style, unit) in enumerate(columns):
        for r, sl in enumerate(views):
            ax = axes[r, c]
            ax.set_facecolor("white")
            im = ax.imshow(sl, origin="lower", interpolation="nearest", aspect=aspects[r], **style)
            if name.startswith("det J"):  # the folds, which the log scale cannot show, over it
                ax.imshow(folds[r], origin="lower", interpolation="nearest", aspect=aspects[r],
                          cmap=ListedColormap([FOLD_COLOUR]), vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            left, right, bottom, top = _VIEWS[r][2]
            for text, xy, align in ((left, (0.02, 0.5), ("left", "center")), (right, (0.98, 0.5), ("right", "center")),
                                    (bottom, (0.5, 0.02), ("center", "bottom")), (top, (0.5, 0.98), ("center", "top"))):
                orientation_letter(ax, text, xy, align)
        axes[0, c].set_title(name, fontsize=9)
        if unit is not None:
            box = axes[-1, c].get_position()
            bar = fig.colorbar(im, cax=fig.add_axes((box.x0 + 0.2 * box.width, 0.085, 0.6 * box.width, 0.015)),
                               orientation="horizontal")
            bar.set_label(unit, fontsize=7)
            bar.ax.tick_params(labelsize=7)
            if name.startswith("det J"):
                bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{2.0 ** v:.2g}"))
            elif name.startswith("λ"):
                ticks, labels = lambda_ticks(lam_low, lam_high)
                bar.set_ticks(ticks, labels=labels)
    for r, (view, axis, _) in enumerate(_VIEWS):
        axes[r, 0].set_ylabel(f"{view}\n{'RAS'[axis]} = {position[axis]:.1f} mm", fontsize=8)
    if dice is not None:
        title = f"{title} — mean Dice {dice[0]:.3f} → {dice[1]:.3f}" if title else \
            f"mean Dice {dice[0]:.3f} → {dice[1]:.3f}"
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(str(path), dpi=90, pil_kwargs={"compress_level": 1})  # zlib level 1: 6x faster, 1.3x larger
    return Path(path)
