"""Inter-subject evaluation on the Mindboggle OASIS-TRT-20 brains (../shared/data/mindboggle_oasis20).

Registers pairs of subjects (by default the test subjects 11–14; native spaces, so svreg's affine stage
runs) with svreg variants and scores them as the data README prescribes: mean Dice over every label
present with >= 100 voxels in both label maps, also split into cortical (DKT, >= 1000) and subcortical
(< 1000) labels; labels warped nearest-neighbour. Folding (% det J <= 0) and SDlogJ inside the fixed brain.

    .venv/bin/python benchmarks/cohort.py --subjects 11 12 13 14 --variants pairwise model model-r20

Licence of the data: CC BY-NC-SA 3.0 — evaluation only; nothing trained on it is shipped.
Results: ``benchmarks/results/cohort_<date>[_<tag>].{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from svreg_core import metrics  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "mindboggle_oasis20"
VARIANTS = {"pairwise": [], "pairwise-nospr": ["--no-spr"], "model": ["--model", "{model}", "--refine", "0"],
            "model-oneway": ["--model", "{model}", "--refine", "0", "--one-way", "--passes", "1"],
            "model-fp32": ["--model", "{model}", "--refine", "0", "--precision", "float32"],
            "model-r20": ["--model", "{model}", "--refine", "20"],
            "model-r50": ["--model", "{model}", "--refine", "50"]}


def score(fixed_seg: np.ndarray, warped: np.ndarray, moving_seg: np.ndarray) -> dict:
    """Mean Dice over labels with >= 100 voxels in both maps; cortical (>= 1000) and subcortical split."""
    f_labels, f_counts = np.unique(fixed_seg, return_counts=True)
    m_labels, m_counts = np.unique(moving_seg, return_counts=True)
    big_f = {int(a) for a, n in zip(f_labels, f_counts) if a > 0 and n >= 100}
    big_m = {int(a) for a, n in zip(m_labels, m_counts) if a > 0 and n >= 100}
    labels = sorted(big_f & big_m)
    d = metrics.dice(fixed_seg, warped, labels)
    values = {lab: d.get(lab, 0.0) for lab in labels}
    cortical = [v for lab, v in values.items() if lab >= 1000]
    subcortical = [v for lab, v in values.items() if lab < 1000]
    return {"n_labels": len(labels), "dice": float(np.mean(list(values.values()))),
            "dice_cortical": float(np.mean(cortical)) if cortical else None,
            "dice_subcortical": float(np.mean(subcortical)) if subcortical else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--subjects", nargs="+", default=["11", "12", "13", "14"],
                    help="test subjects; every unordered pair (i < j) is registered i -> j")
    ap.add_argument("--variants", nargs="+", default=["pairwise", "model", "model-r20"], choices=list(VARIANTS))
    ap.add_argument("--model", default="default", help="learned model of the model variants")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "cohort")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--svreg", type=Path, default=REPO / ".venv" / "bin" / "svreg", help="the svreg command to run")
    ap.add_argument("--tag", help="suffix of the results' file names (cohort_<date>_<tag>)")
    ap.add_argument("--extra", default="", metavar="ARGS",
                    help="svreg register arguments added to every variant, one string "
                         "(e.g. --extra='--alpha-prime 0.175 --lambda-max 1')")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"cohort: {args.data} not found", file=sys.stderr)
        return 2
    if len(set(args.subjects)) < 2:
        print("cohort: --subjects needs at least two different subjects (every pair i -> j is registered)",
              file=sys.stderr)
        return 2
    # every subject's files before the first registration: a typo must not end the run after hours of pairs
    missing = [str(path) for s in args.subjects for path in (args.data / f"sub-{s}" / "t1.nii.gz",
                                                             args.data / f"sub-{s}" / "labels.nii.gz")
               if not path.is_file()]
    if missing:
        print(f"cohort: missing {', '.join(missing)}; nothing was registered", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    svreg = args.svreg
    rows = []
    for a, b in itertools.combinations(args.subjects, 2):
        fixed, moving = args.data / f"sub-{b}", args.data / f"sub-{a}"
        fixed_seg = np.asarray(nib.load(str(fixed / "labels.nii.gz")).dataobj).astype(np.int32)
        moving_seg = np.asarray(nib.load(str(moving / "labels.nii.gz")).dataobj).astype(np.int32)
        for variant in args.variants:
            out = args.out / f"{a}_to_{b}" / variant
            cmd = ([str(svreg), "register", str(fixed / "t1.nii.gz"), str(moving / "t1.nii.gz"), "-o", str(out),
                    "--moving-labels", str(moving / "labels.nii.gz"), "--label-interpolation", "nearest",
                    "--progress", "none", "--overwrite"]
                   + [c.format(model=args.model) for c in VARIANTS[variant]] + shlex.split(args.extra))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"{a}->{b} {variant}: FAILED {proc.stderr.strip()[-300:]}", flush=True)
                rows.append({"pair": f"{a}->{b}", "variant": variant, "status": "failed"})
                continue
            report = json.loads((out / "report.json").read_text())
            warped = np.asarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj).astype(np.int32)
            row = {"pair": f"{a}->{b}", "variant": variant, "status": "ok", "process_s": wall,
                   "registration_s": report["timing"]["registration_s"],
                   "folding_percent": report["metrics"]["folding_percent"], "sdlogj": report["metrics"]["sdlogj"],
                   **score(fixed_seg, warped, moving_seg)}
            rows.append(row)
            print(f"{a}->{b} {variant}: Dice {row['dice']:.4f} (cortical {row['dice_cortical']:.4f}, subcortical "
                  f"{row['dice_subcortical']:.4f}), folding {row['folding_percent']:.4f} %, "
                  f"reg {row['registration_s']:.1f} s", flush=True)
    lines = ["| variant | pairs | mean Dice | cortical | subcortical | % det≤0 | SDlogJ | reg s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in args.variants:
        ok = [r for r in rows if r["variant"] == variant and r["status"] == "ok"]
        if not ok:
            lines.append(f"| {variant} | 0 | – | – | – | – | – | – |")
            continue
        mean = lambda key: float(np.mean([r[key] for r in ok]))  # noqa: E731
        lines.append(f"| {variant} | {len(ok)} | {mean('dice'):.4f} | {mean('dice_cortical'):.4f} | "
                     f"{mean('dice_subcortical'):.4f} | {mean('folding_percent'):.4f} | {mean('sdlogj'):.3f} | "
                     f"{mean('registration_s'):.1f} |")
    table = "\n".join(lines)
    print(table)
    stamp = _dt.date.today().isoformat()
    results = HERE / "results"
    stem = f"cohort_{stamp}" + (f"_{args.tag}" if args.tag else "")
    (results / f"{stem}.json").write_text(json.dumps({"subjects": args.subjects, "model": args.model,
                                                       "extra": args.extra, "rows": rows}, indent=1) + "\n")
    model = f", learned model `{args.model}`" if any(v.startswith("model") for v in args.variants) else ""
    (results / f"{stem}.md").write_text(f"# Mindboggle OASIS-TRT-20 pairs ({stamp})\n\n"
                                                f"Subjects {', '.join(args.subjects)}, every pair i -> j (i < j), "
                                                f"affine stage on, nearest-neighbour labels, {args.threads} CPU "
                                                f"threads{model}"
                                                f"{f', extra arguments `{args.extra}`' if args.extra else ''}.\n\n"
                                                + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
