"""Tune the ``brain-mri`` preset with ``svreg tune`` on Mindboggle validation pairs (never the evaluation data).

One command (main venv)::

    .venv/bin/python benchmarks/brain_tune.py [--n-trials 16]

1. Writes the pair list ``.bench/brain_tune/pairs.csv`` of the Mindboggle OASIS-TRT-20 validation pairs
   (:data:`PAIRS`: subject 01 -> 02, 03 -> 04, 05 -> 06, moving -> fixed; native spaces, so the affine stage
   runs). The brain pair of ``../shared/data/brain_pair`` and the Mindboggle test subjects 11-14 of
   ``benchmarks/cohort.py`` are never used here; subjects 07-09 stay free for a held-out check.
2. Runs one ``svreg tune`` study (CLI, a child process: Optuna TPE, SQLite storage in ``.bench/brain_tune/``,
   resumable) over α′ and λ_max with the preset's full settings (pyramid, iterations, affine stage),
   maximising the mean Dice of the labels warped nearest-neighbour. ``--preset FILE`` starts the trials from a
   preset file instead (e.g. other fixed settings: ``results/smoothing_2026-11-28/``), ``--max-folding P`` prunes
   a trial once a pair folds more than P % of its grid.
3. Writes the study's report (``summary.md``, ``trials.csv``, figures) and its best values as a preset file
   into ``benchmarks/results/brain_tuning_<date>/<study>/``.

The values found (2026-11-27, the study ``brain-mri`` started from the earlier preset α′ 0.175, λ_max 1.0)
are what ``svreg_core/optim/parameters.py`` ships for ``brain-mri``. A study keeps the settings it started
with: once the preset has changed, a new study needs a new ``--study-name``.

Licence of the data: CC BY-NC-SA 3.0 (validation and evaluation; the tuned values are two numbers, no
weights or images are shipped).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "mindboggle_oasis20"
WORK = REPO / ".bench" / "brain_tune"
#: Validation pairs (moving subject, fixed subject).
PAIRS = (("01", "02"), ("03", "04"), ("05", "06"))


def write_pairs(data: Path, path: Path) -> Path:
    """The pair list ``path`` (CSV: fixed, moving and their label maps) of :data:`PAIRS` in ``data``."""
    rows = ["fixed,moving,fixed_labels,moving_labels"]
    for moving, fixed in PAIRS:
        f, m = data.resolve() / f"sub-{fixed}", data.resolve() / f"sub-{moving}"
        for needed in (f / "t1.nii.gz", m / "t1.nii.gz", f / "labels.nii.gz", m / "labels.nii.gz"):
            if not needed.is_file():
                raise SystemExit(f"brain_tune: {needed} not found (see ../shared/data/mindboggle_oasis20/README.md)")
        rows.append(f"{f / 't1.nii.gz'},{m / 't1.nii.gz'},{f / 'labels.nii.gz'},{m / 'labels.nii.gz'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def tune_command(args: argparse.Namespace, pairs: Path, out: Path) -> list[str]:
    # a relative SQLite URL (the command runs in REPO): the report then names no machine path
    storage = f"sqlite:///{(WORK / 'brain.db').relative_to(REPO)}"
    return [str(args.svreg), "tune", str(pairs), "--preset", str(args.preset), "--storage", storage,
            "--study-name", args.study_name, "--n-trials", str(args.n_trials), "--seed", str(args.seed),
            "--startup-trials", str(args.startup_trials), *(["--no-default-trial"] if args.no_default_trial else []),
            "--alpha-prime-range", *map(str, args.alpha_prime_range),
            "--lambda-max-range", *map(str, args.lambda_max_range),
            "--label-interpolation", "nearest", "--device", "cpu",
            *(["--max-folding", str(args.max_folding)] if args.max_folding is not None else []),
            "--report", str(out), "--apply-best", str(out / f"{args.study_name}-tuned.json")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--study-name", default="brain-mri")
    ap.add_argument("--n-trials", type=int, default=16, help="finished trials of the study (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    ap.add_argument("--startup-trials", type=int, default=6, help="random trials before TPE (default 6)")
    ap.add_argument("--no-default-trial", action="store_true", help="do not run the preset's values first")
    ap.add_argument("--alpha-prime-range", nargs=2, type=float, default=(0.01, 0.5), metavar=("LOW", "HIGH"))
    ap.add_argument("--lambda-max-range", nargs=2, type=float, default=(0.25, 4.0), metavar=("LOW", "HIGH"))
    ap.add_argument("--preset", default="brain-mri",
                    help="preset name or preset file the trials start from (e.g. other fixed settings)")
    ap.add_argument("--max-folding", type=float, default=None, metavar="PERCENT",
                    help="prune a trial once a pair folds more than PERCENT %% of its voxels")
    ap.add_argument("--svreg", type=Path, default=REPO / ".venv" / "bin" / "svreg")
    ap.add_argument("--results-dir", type=Path, default=None, help="default: results/brain_tuning_DATE")
    args = ap.parse_args(argv)
    results = args.results_dir or HERE / "results" / f"brain_tuning_{_dt.date.today().isoformat()}"
    pairs = write_pairs(args.data, WORK / "pairs.csv")
    out = results / args.study_name
    out.mkdir(parents=True, exist_ok=True)
    cmd = tune_command(args, pairs, out)
    print("brain_tune: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
