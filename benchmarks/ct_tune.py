"""Tune the CT presets with ``svreg tune`` on CT tuning cases (other patients than the evaluation cases).

One command (main venv)::

    .venv/bin/python benchmarks/ct_tune.py [--n-trials 16]

1. Fetches the real CT (:mod:`fetch_ct_data`) and builds the *tuning* known-warp cases of
   :mod:`ct_cases` (``lung2-tune``: another patient's lungs sliding along the chest wall, for
   ``lung-ct``; ``abdomen-tune``: upper-abdominal organs sliding along the abdominal wall, with 21
   TotalSegmentator structures as labels, for ``ct``). The evaluation cases of
   :mod:`ct_known_warp` (``lung``, ``aorta``) are never used here.
2. Runs one ``svreg tune`` study per preset (CLI, a child process: Optuna TPE, SQLite storage in
   ``.bench/ct/tune/``, resumable) over α′ and λ_max with the CT benchmark's settings (``--no-affine``,
   pyramid ``5 2.5`` mm (:data:`ct_known_warp.QUICK_LEVELS`; on these cases the CT presets' own levels
   since 2026-11-27), iterations ``40 30`` (the presets' halved)),
   minimising the mean target registration error of :data:`LANDMARKS` landmarks (``--objective tre``,
   the default since 2026-11-27: random voxels of the body where the true displacement is known, and
   where it takes them), or maximising the mean Dice of the warped labels (``--objective dice``, how the
   presets were tuned on 2026-11-26).
3. Writes each study's report (``summary.md``, ``trials.csv``, figures) and its best values as a preset
   file into ``benchmarks/results/ct_tuning_<date>/<preset>/``.

The values found are what ``svreg_core/optim/parameters.py`` ships for ``ct`` and ``lung-ct``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import ct_cases  # noqa: E402
import ct_known_warp  # noqa: E402
import fetch_ct_data  # noqa: E402

#: The tuning case of each CT preset.
TUNING_CASE = {"lung-ct": "lung2-tune", "ct": "abdomen-tune"}
ITERATIONS = (40, 30)
#: Landmarks written into a tuning case for the TRE objective (random valid body voxels, seeded).
LANDMARKS = 2000


def write_landmarks(case_dir: Path, count: int = LANDMARKS, seed: int = 0) -> None:
    """``fixed_landmarks.csv`` / ``moving_landmarks.csv`` (RAS mm) in ``case_dir``: ``count`` random voxel
    centres ``x`` of the body where the true displacement ``u`` is valid, and ``x + u(x)``."""
    truth = ct_cases.load_truth(case_dir)
    affine = np.asarray(json.loads((case_dir / "case.json").read_text())["grid"]["affine"])
    voxels = np.argwhere(truth["body"] & truth["valid"])
    voxels = voxels[np.random.default_rng(seed).choice(len(voxels), min(count, len(voxels)), replace=False)]
    fixed = voxels @ affine[:3, :3].T + affine[:3, 3]
    moving = fixed + truth["u"][tuple(voxels.T)]
    for name, points in (("fixed", fixed), ("moving", moving)):
        rows = "".join(f"{x!r},{y!r},{z!r}\n" for x, y, z in points.tolist())
        (case_dir / f"{name}_landmarks.csv").write_text("x,y,z\n" + rows)


def tune_command(args: argparse.Namespace, preset: str, case_dir: Path, out: Path) -> list[str]:
    suffix = "" if args.objective == "dice" else f"-{args.objective}"
    storage = ct_known_warp.CT_DIR / "tune" / f"{preset}{suffix}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    # a relative SQLite URL (the command runs in REPO): the reports then name no machine path
    storage = f"sqlite:///{storage.relative_to(REPO)}"
    return [str(args.svreg), "tune", str(case_dir), "--preset", preset, "--storage", str(storage),
            "--study-name", preset, "--n-trials", str(args.n_trials), "--seed", str(args.seed),
            "--alpha-prime-range", *map(str, args.alpha_prime_range),
            "--lambda-max-range", *map(str, args.lambda_max_range),
            "--no-affine", "--level-spacings", *(f"{s:g}" for s in ct_known_warp.QUICK_LEVELS),
            "--iterations", *map(str, ITERATIONS), "--objective", args.objective,
            *(["--label-interpolation", "nearest"] if args.objective == "dice" else []), "--device", "cpu",
            "--report", str(out), "--apply-best", str(out / f"{preset}-tuned.json")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(TUNING_CASE), choices=list(TUNING_CASE))
    ap.add_argument("--n-trials", type=int, default=16, help="finished trials per study (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    ap.add_argument("--objective", choices=("tre", "dice"), default="tre",
                    help="minimise the landmark error (default) or maximise the labels' Dice")
    ap.add_argument("--alpha-prime-range", nargs=2, type=float, default=(0.001, 0.3), metavar=("LOW", "HIGH"))
    ap.add_argument("--lambda-max-range", nargs=2, type=float, default=(0.1, 4.0), metavar=("LOW", "HIGH"))
    ap.add_argument("--svreg", type=Path, default=REPO / ".venv" / "bin" / "svreg")
    ap.add_argument("--results-dir", type=Path,
                    default=None, help="default: results/ct_tuning_DATE (_tre with the TRE objective)")
    args = ap.parse_args(argv)
    if args.results_dir is None:
        suffix = "_tre" if args.objective == "tre" else ""
        args.results_dir = HERE / "results" / f"ct_tuning_{_dt.date.today().isoformat()}{suffix}"

    raw = ct_known_warp.CT_DIR / "raw"
    fetch_ct_data.fetch_all(raw, ct_known_warp.log)
    for preset in args.presets:
        name = TUNING_CASE[preset]
        case_dir = ct_cases.build_case(name, raw, ct_known_warp.CT_DIR / "cases" / name, ct_known_warp.log)
        write_landmarks(case_dir)
        out = args.results_dir / preset
        out.mkdir(parents=True, exist_ok=True)
        cmd = tune_command(args, preset, case_dir, out)
        ct_known_warp.log(f"== {preset} on {name}: {' '.join(cmd)}")
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            ct_known_warp.log(f"ct_tune: the {preset} study failed")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
