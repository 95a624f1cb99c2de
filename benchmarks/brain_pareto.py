"""Pareto sweep on the brain pair: accuracy against smoothness over regularisation strengths, SPR vs uniform.

One command (main venv)::

    .venv/bin/python benchmarks/brain_pareto.py [--data ../shared/data/brain_pair] [--factors 0.25 0.5 1 2 4]

For each λ_max = factor × the ``brain-mri`` preset's, runs ``svreg register`` (CLI, a child process, CPU,
2 threads, ``--no-affine``: the pair is pre-aligned) once with the spatially varying λ (SPR) and once with
``--no-spr`` (uniform λ ≡ 1, same strength), and reads each run's ``report.json``: mean Dice and HD95 over
the labels present in both label maps (one-hot linear label warp, svreg's default), SDlogJ, % det J ≤ 0
and NDV % inside the fixed foreground, and λ's 5th percentile and median in the brain. Writes
``benchmarks/results/brain_pareto_<date>.{json,md}`` and ``docs/figures/brain_pareto.png`` (Dice and HD95
against SDlogJ, one curve per variant, labelled with λ_max; ``--tag T`` appends ``_T`` to all three
names). At equal SDlogJ the uniform curve is interpolated at each SPR point. The brain pair is evaluation
data: the sweep reports, nothing is chosen from it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import evaluate as ev  # noqa: E402

from svreg_core.optim.parameters import load_parameters  # noqa: E402

VARIANTS = {"spr": "svreg SPR", "uniform": "svreg uniform (--no-spr)"}


def run(args: argparse.Namespace, variant: str, lam: float) -> dict:
    out = REPO / ".bench" / "brain_pareto" / f"{variant}-{lam:g}"
    cmd = [str(REPO / ".venv" / "bin" / "svreg"), "register", str(args.data / "fixed.nii.gz"),
           str(args.data / "moving.nii.gz"), "-o", str(out), "--fixed-labels", str(args.data / "fixed_seg.nii.gz"),
           "--moving-labels", str(args.data / "moving_seg.nii.gz"), "--lambda-max", f"{lam:g}", "--no-affine",
           "--outputs", "regularization", "--device", "cpu", "--threads", str(args.threads), "--progress", "none",
           "--overwrite", *(["--no-spr"] if variant == "uniform" else [])]
    print(f"  {variant} λ_max {lam:g} ...", flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    lam_map = np.asarray(nib.load(str(out / "regularization.nii.gz")).dataobj, dtype=np.float64)
    brain = np.asarray(nib.load(str(args.data / "fixed.nii.gz")).dataobj) > 0
    return {"variant": variant, "lambda_max": lam, "dice_mean": m["dice_mean"], "hd95_mean": m["hd95_mean"],
            "sdlogj": m["sdlogj"], "folding_percent": m["folding_percent"], "ndv_percent": m["ndv_percent"],
            "lambda_p5": float(np.percentile(lam_map[brain], 5)), "lambda_median": float(np.median(lam_map[brain])),
            "registration_s": report["timing"]["registration_s"]}


def at_equal_sdlogj(rows: list[dict]) -> list[dict]:
    """Each SPR point against the uniform curve linearly interpolated at the same SDlogJ (inside its range)."""
    pairs = zip(ev.uniform_at_equal_sdlogj(rows, "dice_mean"), ev.uniform_at_equal_sdlogj(rows, "hd95_mean"))
    return [{"lambda_max": r["lambda_max"], "sdlogj": r["sdlogj"], "dice_spr": r["dice_mean"], "dice_uniform": dice,
             "hd95_spr": r["hd95_mean"], "hd95_uniform": hd95} for (r, dice), (_, hd95) in pairs]


def figure(rows: list[dict], path: Path, alpha_prime: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for ax, key, label in zip(fig.subplots(1, 2), ("dice_mean", "hd95_mean"), ("mean Dice", "mean HD95 (mm)")):
        for variant, style in (("spr", "o-"), ("uniform", "s--")):
            pts = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["sdlogj"])
            ax.plot([r["sdlogj"] for r in pts], [r[key] for r in pts], style, label=VARIANTS[variant])
            for r in pts:
                ax.annotate(f"{r['lambda_max']:g}", (r["sdlogj"], r[key]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        ax.set_xlabel("SDlogJ inside the fixed foreground")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Brain pair (1 mm, pre-aligned): accuracy against smoothness over λ_max (labels), "
                 f"α′ {alpha_prime:g}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", help="suffix of the results' and the figure's names (brain_pareto_<date>_<tag>), so a "
                                  "later sweep keeps the earlier ones")
    args = ap.parse_args(argv)
    if any(f <= 0 for f in args.factors) or args.threads < 1:
        ap.error("--factors must be positive (multiples of the preset's λ_max) and --threads at least 1")
    for name in ("fixed.nii.gz", "moving.nii.gz", "fixed_seg.nii.gz", "moving_seg.nii.gz"):
        if not (args.data / name).is_file():
            print(f"brain_pareto: {args.data / name} not found (--data)", file=sys.stderr)
            return 2
    preset = load_parameters("brain-mri")
    base = preset.lambda_max
    started = _dt.datetime.now()
    rows = [run(args, variant, f * base) for f in args.factors for variant in VARIANTS]
    equal = at_equal_sdlogj(rows)
    lines = [f"# Brain pair Pareto sweep {started:%Y-%m-%d %H:%M}", "",
             "Command: `" + " ".join(["python", "benchmarks/brain_pareto.py",
                                      *(argv if argv is not None else sys.argv[1:])]) + "`", "",
             f"svreg register, brain-mri preset (α′ {preset.alpha_prime:g}), `--no-affine` (pre-aligned pair), CPU, "
             f"{args.threads} threads; λ_max = preset × {', '.join(f'{f:g}' for f in args.factors)}. Dice/HD95: mean "
             "over the labels in both maps (one-hot linear label warp); SDlogJ, % det J ≤ 0, NDV % inside the "
             "fixed foreground (report.json); λ percentiles inside the brain.", "",
             "| variant | λ_max | mean Dice | HD95 mm | SDlogJ | % det≤0 | NDV % | λ p5 | λ median | reg s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["variant"], r["lambda_max"])):
        lines.append(f"| {VARIANTS[r['variant']]} | {r['lambda_max']:g} | {r['dice_mean']:.4f} | "
                     f"{r['hd95_mean']:.2f} | {r['sdlogj']:.3f} | {r['folding_percent']:.4f} | "
                     f"{r['ndv_percent']:.4f} | "
                     f"{r['lambda_p5']:.3f} | {r['lambda_median']:.3f} | {r['registration_s']:.1f} |")
    lines += ["", "At equal SDlogJ (uniform curve interpolated at each SPR point inside its range):", ""]
    lines += [f"- λ_max {e['lambda_max']:g} (SDlogJ {e['sdlogj']:.3f}): Dice SPR {e['dice_spr']:.4f} vs uniform "
              f"{e['dice_uniform']:.4f} ({e['dice_spr'] - e['dice_uniform']:+.4f}); HD95 {e['hd95_spr']:.2f} vs "
              f"{e['hd95_uniform']:.2f} mm" for e in equal] or ["- no SPR point lies inside the uniform curve's range"]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    stem = f"brain_pareto_{started:%Y-%m-%d}{tag}"
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (results / f"{stem}.json").write_text(json.dumps({"date": started.isoformat(timespec="seconds"),
                                                      "factors": args.factors, "rows": rows, "equal_sdlogj": equal},
                                                     indent=1) + "\n")
    figure(rows, REPO / "docs" / "figures" / f"brain_pareto{tag}.png", preset.alpha_prime)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
