"""The affine stage on images whose headers disagree by large rotations, with and without the pose search. One
command (main venv)::

    .venv/bin/python benchmarks/pose_search.py [--data DIR] [--mindboggle DIR] [--ct-cases DIR] [--threads 2] \\
        [--sections brain mindboggle ct] [--out benchmarks/results/pose_search_DATE.md]

Brain pair (``../shared/data/brain_pair``, evaluation pair; nothing is tuned here): the subject in its own space
(``moving_native``, LIA) with its header turned about its centre by 17 rotations (12 random axes and angles of
20-180° from a fixed seed, and five chosen: 0°, 60° and 180° about S, 90° about R, 135° about R+A) is aligned
to the MNI152 fixed image by the affine stage alone (``prepare_pair(...).align()``, brain-mri preset), with and
without the search. Mindboggle (``../shared/data/mindboggle_oasis20``, native spaces): eight inter-subject pairs as
they are and with the moving header turned 110° about (0.5, -0.3, 0.8). CT (``ct`` section, when the known-warp
cases of ``benchmarks/ct_known_warp.py`` have been built): the ``lung`` case (2.5 x 2.5 x 5 mm, ``lung-ct``
preset: MIND) as it is and turned 90° about S and 70° about (0.3, 0.8, -0.5). Prints and writes the mean Dice of the
labels after the affine stage (nearest-neighbour; brain pair: the 30 evaluation labels, elsewhere every label
with at least 100 voxels in both maps), whether the search chose a rotated start, and the stage's time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from evaluate import eval_labels  # noqa: E402

from svreg_core import metrics  # noqa: E402
from svreg_core.image import Image, load_image  # noqa: E402
from svreg_core.optim.parameters import PRESETS  # noqa: E402
from svreg_core.optim.pose_search import rotation_degrees  # noqa: E402
from svreg_core.registration import prepare_pair  # noqa: E402

MINDBOGGLE_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (2, 9))
MINDBOGGLE_TURN = ((0.5, -0.3, 0.8), 110.0)
CT_TURNS = (((0.0, 0.0, 1.0), 90.0), ((0.3, 0.8, -0.5), 70.0))


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``degrees`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * cross + (1.0 - np.cos(a)) * cross @ cross


def brain_turns() -> list[tuple[tuple[float, float, float], float]]:
    rng = np.random.default_rng(1)
    turns = []
    for _ in range(12):
        axis = rng.normal(size=3)
        turns.append((tuple(float(v) for v in axis / np.linalg.norm(axis)), float(rng.uniform(20.0, 180.0))))
    return turns + [((0.0, 0.0, 1.0), 0.0), ((0.0, 0.0, 1.0), 60.0), ((0.0, 0.0, 1.0), 180.0),
                    ((1.0, 0.0, 0.0), 90.0), ((1.0, 1.0, 0.0), 135.0)]


def turned(image: Image, axis: tuple[float, float, float], degrees: float) -> Image:
    """``image`` with its header turned ``degrees`` about ``axis`` through its centre (the voxels unchanged)."""
    centre = image.grid.corner_points().mean(0)
    turn = np.eye(4)
    turn[:3, :3] = rotation(axis, degrees)
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    return Image(image.data, turn @ image.affine)


def affine_dice(matrix: np.ndarray, fixed_labels: Image, moving_labels: Image, labels: tuple[int, ...] | None) -> float:
    """Mean Dice (:func:`svreg_core.metrics.dice`) of the moving labels pulled through ``matrix`` (nearest neighbour)
    against the fixed labels, over ``labels`` (``None``: those with >= 100 voxels in both maps); a label the warp
    erased scores 0."""
    from scipy import ndimage

    points = fixed_labels.grid.world_points().reshape(-1, 3)
    voxels = moving_labels.grid.to_voxel(points @ matrix[:3, :3].T + matrix[:3, 3])
    warped = ndimage.map_coordinates(np.asarray(moving_labels.data), voxels.T, order=0, mode="constant")
    warped = warped.reshape(fixed_labels.shape)
    fixed, moving = np.asarray(fixed_labels.data), np.asarray(moving_labels.data)
    if labels is None:
        labels = tuple(int(v) for v in np.unique(fixed)
                       if v and (fixed == v).sum() >= 100 and (moving == v).sum() >= 100)
    d = metrics.dice(fixed, warped, labels)
    return float(np.mean([d.get(v, 0.0) for v in labels]))


def align(fixed: Image, moving: Image, search: bool, preset: str) -> tuple[np.ndarray, bool, float]:
    """The affine stage's matrix, whether it warned of a rotated start, and its time (s)."""
    params = PRESETS[preset].replace(pose_search=search)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        matrix = prepare_pair(fixed, moving, params).align().affine
        seconds = time.perf_counter() - started
    return matrix, any("orientations disagree" in str(w.message) for w in caught), seconds


def row(name: str, fixed: Image, moving: Image, fixed_labels: Image, moving_labels: Image,
        labels: tuple[int, ...] | None, preset: str = "brain-mri") -> str:
    off, _, off_s = align(fixed, moving, False, preset)
    on, rotated_start, on_s = align(fixed, moving, True, preset)
    line = (f"| {name} | {affine_dice(off, fixed_labels, moving_labels, labels):.4f} | "
            f"{affine_dice(on, fixed_labels, moving_labels, labels):.4f} | {'yes' if rotated_start else 'no'} | "
            f"{rotation_degrees(on, off):.0f} | {off_s:.1f} | {on_s:.1f} |")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "brain_pair"))
    parser.add_argument("--mindboggle", default=str(REPO.parent / "shared" / "data" / "mindboggle_oasis20"))
    parser.add_argument("--ct-cases", default=str(REPO / ".bench" / "ct" / "cases"))
    parser.add_argument("--sections", nargs="+", choices=("brain", "mindboggle", "ct"),
                        default=["brain", "mindboggle", "ct"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             f"pose_search_{_dt.date.today().isoformat()}.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = ["| pair, moving header turned | Dice, no search | Dice, search | rotated start chosen | "
              "degrees between the two | s, no search | s, search |", "|---|---:|---:|---|---:|---:|---:|"]
    lines = [f"# Pose search ({_dt.datetime.now():%Y-%m-%d %H:%M}, {args.threads} threads; "
             "`.venv/bin/python benchmarks/pose_search.py`)", "",
             "Mean Dice after the affine stage alone (nearest-neighbour label warp)."]

    def section(title: str) -> None:
        lines.extend(["", f"## {title}", "", *header])
        print("\n".join(lines[-4:]), flush=True)

    print("\n".join(lines), flush=True)
    if "brain" in args.sections:
        section("Brain pair")
        data = Path(args.data)
        fixed, moving = load_image(data / "fixed.nii.gz"), load_image(data / "moving_native.nii.gz")
        fixed_labels = load_image(data / "fixed_seg.nii.gz", labels=True)
        moving_labels = load_image(data / "moving_native_seg.nii.gz", labels=True)
        brain_labels = tuple(eval_labels(np.asarray(fixed_labels.data), np.asarray(moving_labels.data)))
        for axis, degrees in brain_turns():
            name = f"{degrees:.0f}° about ({axis[0]:.2f}, {axis[1]:.2f}, {axis[2]:.2f})"
            lines.append(row(name, fixed, turned(moving, axis, degrees), fixed_labels,
                             turned(moving_labels, axis, degrees), brain_labels))
    if "mindboggle" in args.sections:
        section("Mindboggle inter-subject pairs (native spaces)")
        root = Path(args.mindboggle)
        for a, b in MINDBOGGLE_PAIRS:
            f, m = load_image(root / f"sub-{a:02d}" / "t1.nii.gz"), load_image(root / f"sub-{b:02d}" / "t1.nii.gz")
            fl = load_image(root / f"sub-{a:02d}" / "labels.nii.gz", labels=True)
            ml = load_image(root / f"sub-{b:02d}" / "labels.nii.gz", labels=True)
            lines.append(row(f"{a:02d} ← {b:02d}, as it is", f, m, fl, ml, None))
            lines.append(row(f"{a:02d} ← {b:02d}, {MINDBOGGLE_TURN[1]:.0f}°", f, turned(m, *MINDBOGGLE_TURN), fl,
                             turned(ml, *MINDBOGGLE_TURN), None))
    case = Path(args.ct_cases) / "lung"
    if "ct" in args.sections and case.is_dir():
        section("CT: the lung known-warp case, lung-ct preset (MIND)")
        f, m = load_image(case / "fixed.nii.gz"), load_image(case / "moving.nii.gz")
        fl, ml = load_image(case / "fixed_seg.nii.gz", labels=True), load_image(case / "moving_seg.nii.gz", labels=True)
        lines.append(row("as it is", f, m, fl, ml, None, "lung-ct"))
        for axis, degrees in CT_TURNS:
            lines.append(row(f"{degrees:.0f}° about ({axis[0]:.1f}, {axis[1]:.1f}, {axis[2]:.1f})", f,
                             turned(m, axis, degrees), fl, turned(ml, axis, degrees), None, "lung-ct"))
    elif "ct" in args.sections:
        print(f"no CT case in {case}: build them with benchmarks/ct_known_warp.py first; CT section left out")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
