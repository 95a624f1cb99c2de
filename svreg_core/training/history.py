"""What a training run records per epoch: ``metrics.csv``, ``training_curve.png`` and TensorBoard scalars.

Both are rewritten from the whole history (kept in the resume state), so a resumed run never duplicates or
loses rows: the CSV after every epoch, the figure (about a second of drawing) after an epoch when
:data:`CURVE_INTERVAL_S` have passed since it was last drawn, and when the session ends (last epoch,
``Ctrl-C``, a pruned trial). TensorBoard events go to ``run_dir/tensorboard``
when the ``tensorboard`` package is installed, and are silently skipped otherwise.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svreg_core.atomic import replaced_when_complete

#: Columns of ``metrics.csv``, in order. Loss terms are means over the epoch's steps (train) or the
#: validation pairs (val); Dice is the mean over labels and pairs; folding is the share (%) of
#: voxels of the network grid with det J ≤ 0; ``lr`` is the AdamW step; ``seconds`` the epoch's
#: wall time (training + validation).
COLUMNS = ("epoch", "step", "lr", "seconds", "train_total", "train_similarity", "train_regularization",
           "train_prior", "train_labels", "val_total", "val_similarity", "val_regularization", "val_prior",
           "val_labels", "val_dice", "val_dice_identity", "val_folding_percent")

METRICS_FILE = "metrics.csv"
CURVE_FILE = "training_curve.png"
TENSORBOARD_DIR = "tensorboard"
#: Seconds between two drawings of the training curve while epochs finish (the CSV keeps every epoch); with
#: epochs of a few seconds, drawing every epoch would cost a fifth of the training time.
CURVE_INTERVAL_S = 30.0


def write_metrics_csv(history: Sequence[dict[str, float]], path: Path) -> Path:
    """``metrics.csv`` with one row per finished epoch (:data:`COLUMNS`; empty cells for missing values)."""
    path = Path(path)
    with replaced_when_complete(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float)
                                                              and math.isnan(row[k])) else row[k])
                             for k in COLUMNS})
    return path


def _series(history: Sequence[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if value is not None and math.isfinite(value):
            xs.append(row["epoch"])
            ys.append(value)
    return xs, ys


#: Loss terms of the training curve, in panel order, and their colours.
_CURVE_TERMS = (("total", "black"), ("similarity", "tab:blue"), ("regularization", "tab:orange"),
                ("prior", "tab:green"), ("labels", "tab:purple"))


def curve_terms(history: Sequence[dict[str, float]]) -> list[str]:
    """The loss terms the training curve draws: those with a non-zero value in some epoch (``labels`` is 0
    throughout without a label term, and a uniform network's prior too)."""
    return [term for term, _ in _CURVE_TERMS
            if any(v != 0 for split in ("train", "val") for v in _series(history, f"{split}_{term}")[1])]


def write_curve_png(history: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Training curves: one panel per loss term (:func:`curve_terms`; train solid, validation dashed, each
    term on its own scale: the similarity is about −1 while the regulariser changes in the third decimal),
    and the validation Dice (before registration dotted) with the folding percentage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    terms = curve_terms(history)
    columns = 3
    rows = max(1, math.ceil((len(terms) + 1) / columns))
    # an explicit Agg figure: no pyplot, so matplotlib's global backend is never touched
    fig = Figure(figsize=(4.0 * columns, 3.2 * rows), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    colours = dict(_CURVE_TERMS)
    for term, ax in zip(terms, axes):
        for split, style in (("train", "-"), ("val", "--")):
            xs, ys = _series(history, f"{split}_{term}")
            if xs:
                ax.plot(xs, ys, style, color=colours[term], marker="." if len(xs) < 30 else None, label=split)
        ax.set_title(f"{term} loss", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    dice_ax = axes[len(terms)]
    for ax in axes[len(terms) + 1:]:
        ax.set_visible(False)
    xs, ys = _series(history, "val_dice")
    if xs:
        dice_ax.plot(xs, ys, "-", color="tab:blue", marker="." if len(xs) < 30 else None, label="val Dice")
    xs, ys = _series(history, "val_dice_identity")
    if xs:
        dice_ax.plot(xs, ys, ":", color="gray", label="Dice before registration")
    dice_ax.set_xlabel("epoch")
    dice_ax.set_ylabel("mean Dice")
    dice_ax.set_title("validation", fontsize=10)
    fold_ax = dice_ax.twinx()
    xs, ys = _series(history, "val_folding_percent")
    if xs:
        fold_ax.plot(xs, ys, "-", color="tab:red", label="folding %")
    fold_ax.set_ylim(bottom=0.0)
    fold_ax.set_ylabel("det J ≤ 0 (%)", color="tab:red")
    handles = dice_ax.get_legend_handles_labels()[0] + fold_ax.get_legend_handles_labels()[0]
    if handles:
        dice_ax.legend(handles=handles, fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    with replaced_when_complete(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


class TensorBoardLog:
    """Scalars per epoch in ``run_dir/tensorboard`` when ``tensorboard`` is importable (a no-op otherwise).

    ``first_epoch`` (1-based) purges events a killed earlier session wrote for that epoch or later.
    """

    def __init__(self, run_dir: Path, first_epoch: int = 1) -> None:
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=first_epoch)

    def log(self, row: dict[str, float]) -> None:
        if self._writer is None:
            return
        for key in COLUMNS:
            value = row.get(key)
            if key != "epoch" and value is not None and math.isfinite(value):
                group, _, name = key.partition("_")
                tag = f"{group}/{name}" if group in ("train", "val") else key
                self._writer.add_scalar(tag, value, int(row["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
