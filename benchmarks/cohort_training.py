"""`svreg train` on a real cohort: the shipped model fine-tuned on Mindboggle subjects, scored on unseen ones.

    .venv/bin/python benchmarks/cohort_training.py [--epochs 12] [--steps-per-epoch 100] [--run runs/mindboggle-ft]
        [--variants model model-r20] [--tag cohort-training]

1. Writes the pair lists (CSV, both directions of every pair) of the *training* subjects 01–06, 10, 14 and
   the *validation* pairs among 07, 08, 09 next to the run folder (``<run>-pairs/``).
2. Runs ``svreg train --config scripts/brain-unet-spr.yaml --csv train.csv --val-data val.csv --init
   brain-unet-spr --epochs E --steps-per-epoch S --workers 1 --seed 0 -o RUN`` (the shipped model's recipe and
   loss, unsupervised: the labels only score the validation pairs). A finished run with the same settings is
   not trained again (``svreg train`` resumes it and finds nothing left to do).
3. Scores the shipped ``brain-unet-spr`` and the fine-tuned ``RUN/last`` (the last epoch: no checkpoint is
   selected on any data) on the *test* subjects 11, 12, 13 with :mod:`benchmarks.cohort` (affine stage on,
   mean Dice over the labels with ≥ 100 voxels in both maps, nearest-neighbour label warps), same machine,
   one after the other: ``cohort_<date>_<tag>-shipped`` and ``…-finetuned`` in ``benchmarks/results/``.

Licence of the data (CC BY-NC-SA 3.0, OASIS terms): development and evaluation only. The fine-tuned weights
stay in the ignored ``runs/`` folder; nothing trained here is shipped.
"""
from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mindboggle_oasis20"
TRAIN, VALIDATION, TEST = ("01", "02", "03", "04", "05", "06", "10", "14"), ("07", "08", "09"), ("11", "12", "13")


def write_pairs(path: Path, subjects: tuple[str, ...], data: Path) -> int:
    """Both directions of every pair of ``subjects`` as a ``svreg train`` CSV; returns the number of pairs."""
    rows = ["fixed,moving,fixed_labels,moving_labels"]
    for a, b in itertools.permutations(subjects, 2):
        files = (data / f"sub-{a}" / "t1.nii.gz", data / f"sub-{b}" / "t1.nii.gz", data / f"sub-{a}" / "labels.nii.gz",
                 data / f"sub-{b}" / "labels.nii.gz")
        rows.append(",".join(str(f) for f in files))
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "mindboggle-ft")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--variants", nargs="+", default=["model", "model-r20"])
    ap.add_argument("--tag", default="cohort-training")
    args = ap.parse_args(argv)
    svreg = REPO / ".venv" / "bin" / "svreg"
    pairs = args.run.with_name(args.run.name + "-pairs")
    pairs.mkdir(parents=True, exist_ok=True)
    n_train = write_pairs(pairs / "train.csv", TRAIN, args.data)
    n_val = write_pairs(pairs / "val.csv", VALIDATION, args.data)
    print(f"{n_train} training pairs (subjects {', '.join(TRAIN)}), {n_val} validation pairs "
          f"({', '.join(VALIDATION)}); test subjects {', '.join(TEST)}", flush=True)
    subprocess.run([str(svreg), "train", "--config", str(REPO / "scripts" / "brain-unet-spr.yaml"),
                    "--csv", str(pairs / "train.csv"), "--val-data", str(pairs / "val.csv"), "--init", "brain-unet-spr",
                    "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch), "--workers", "1",
                    "--seed", "0", "--progress", "none", "-o", str(args.run)], check=True)
    last = (args.run / "last").resolve()
    # the fine-tuned model named relative to the repository (the results record it; no machine paths)
    finetuned = str(last.relative_to(REPO)) if last.is_relative_to(REPO) else str(last)
    for name, model in (("shipped", "brain-unet-spr"), ("finetuned", finetuned)):
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "cohort.py"), "--data", str(args.data),
                        "--subjects", *TEST, "--variants", *args.variants, "--model", model,
                        "--out", str(REPO / ".bench" / f"cohort-{args.tag}-{name}"), "--tag", f"{args.tag}-{name}"],
                       check=True, cwd=REPO)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
