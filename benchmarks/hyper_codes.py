"""What a hyper model's codes do: λ, Jacobian, folding and Dice across a grid of (α′, λ_max), one pass each.

    .venv/bin/python benchmarks/hyper_codes.py [--pair ../shared/data/brain_pair] \\
        [--model brain-hyper-unet-spr] [--plain brain-unet-spr] [--alpha-prime 0.05 0.175 0.5] \\
        [--lambda-max 0.5 3.35 10] [--figure docs/figures/hyper_codes_brain_pair.png] [--out RESULTS.md]

Registers the pre-aligned pair (deformable only, like ``svreg register --no-affine``) once per code with
the hyper model, and once with the plain model at its own code, through the Python API on the CPU.
Metrics: mean Dice over the labels of both input label maps (``metrics.scored_labels``: a label the warp erased
scores 0; linear label warp, the report's default),
% det J ≤ 0 and SDlogJ inside the fixed image's foreground, and λ's 5th percentile and median there.
The figure shows λ (one colour scale, 0 to 1) and log2 det J on the axial slice through the brain's
centre for every code. The pair is evaluation data: nothing here selects or tunes anything.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svreg_core import Image, load_parameters, metrics, register  # noqa: E402
from svreg_core.image.io import load_image  # noqa: E402
from svreg_core.registration import LoadedModel, load_model  # noqa: E402


def run_one(fixed: Image, moving: Image, fixed_seg: Image, moving_seg: Image, model: LoadedModel,
            codes: tuple[float, float] | None, brain: np.ndarray) -> dict:
    """One pass of ``model`` at ``codes`` (``None``: the model's own): metrics and the axial slices."""
    params = load_parameters("brain-mri", affine=False, device="cpu")
    t0 = time.perf_counter()
    result = register(fixed, moving, params, model=model, codes=codes)
    seconds = time.perf_counter() - t0
    warped = result.warp_image(moving_seg, labels=True).data
    scored = metrics.scored_labels(fixed_seg.data, moving_seg.data)  # a label the warp erased scores 0
    det = metrics.jacobian_determinant(result.deformable_displacement, fixed.affine)
    lam = np.asarray(result.regularization_map().data)
    inside = lam[brain]
    ck = int(np.argwhere(brain)[:, 2].mean())
    return {"codes": list(result.codes) if result.codes else [result.model.alpha_prime, result.model.lambda_max],
            "dice_mean": float(np.mean(list(metrics.dice(fixed_seg.data, warped, scored).values()))),
            "folding_percent": metrics.folding_percent(det, brain), "sdlogj": metrics.sdlogj(det, brain),
            "lambda_p5": float(np.percentile(inside, 5)), "lambda_median": float(np.median(inside)),
            "seconds": seconds, "lambda_slice": lam[:, :, ck].T,
            "logj_slice": np.log2(np.clip(det[:, :, ck].T, 1e-3, None)), "mask_slice": brain[:, :, ck].T}


def figure(rows: list[dict], plain: dict, path: Path, alphas: list[float], lambdas: list[float]) -> None:
    """λ and log2 det J on the axial slice: one row per α′, λ_max across; the plain model last."""
    fig = Figure(figsize=(2.6 * 2 * len(lambdas), 2.9 * (len(alphas) + 1)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(alphas) + 1, 2 * len(lambdas), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    cells = [(i, j, r) for (i, j), r in zip(itertools.product(range(len(alphas)), range(len(lambdas))), rows)]
    cells.append((len(alphas), 0, plain))
    for i, j, r in cells:
        m = r["mask_slice"]
        lam_ax, jac_ax = axes[i, 2 * j], axes[i, 2 * j + 1]
        lam_im = lam_ax.imshow(np.where(m, r["lambda_slice"], np.nan), origin="lower", cmap="viridis", vmin=0, vmax=1)
        jac_im = jac_ax.imshow(np.where(m, r["logj_slice"], np.nan), origin="lower", cmap="RdBu_r",
                               norm=TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0))
        who = "plain model" if r is plain else "hyper"
        lam_ax.set_title(f"{who} α′={r['codes'][0]:g} λmax={r['codes'][1]:g}\nλ p5 {r['lambda_p5']:.3f}, "
                         f"median {r['lambda_median']:.3f}", fontsize=8)
        jac_ax.set_title(f"log2 det J: Dice {r['dice_mean']:.4f}\ndet≤0 {r['folding_percent']:.3f} %, "
                         f"SDlogJ {r['sdlogj']:.3f}", fontsize=8)
    fig.colorbar(lam_im, ax=axes[-1, 0], shrink=0.8, label="λ(x)")
    fig.colorbar(jac_im, ax=axes[-1, 1], shrink=0.8, label="log2 det J")
    fig.suptitle("One pass of the hyper model across its codes (brain pair, axial slice, evaluation data)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--model", default="brain-hyper-unet-spr")
    ap.add_argument("--plain", default="brain-unet-spr")
    ap.add_argument("--alpha-prime", type=float, nargs="+", default=[0.05, 0.175, 0.5])
    ap.add_argument("--lambda-max", type=float, nargs="+", default=[0.5, 3.35, 10.0])
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" / "hyper_codes_brain_pair.png")
    ap.add_argument("--out", type=Path, default=None, help="markdown table (also written as .json next to it)")
    args = ap.parse_args(argv)
    fixed, moving = load_image(args.pair / "fixed.nii.gz"), load_image(args.pair / "moving.nii.gz")
    fixed_seg = load_image(args.pair / "fixed_seg.nii.gz", labels=True)
    moving_seg = load_image(args.pair / "moving_seg.nii.gz", labels=True)
    brain = np.asarray(fixed.data) > 0
    hyper, plain_model = load_model(args.model), load_model(args.plain)
    rows = []
    for a, lm in itertools.product(args.alpha_prime, args.lambda_max):
        rows.append(run_one(fixed, moving, fixed_seg, moving_seg, hyper, (a, lm), brain))
        print(f"hyper {a:g} {lm:g}: Dice {rows[-1]['dice_mean']:.4f}", flush=True)
    plain = run_one(fixed, moving, fixed_seg, moving_seg, plain_model, None, brain)
    figure(rows, plain, args.figure, args.alpha_prime, args.lambda_max)
    keys = ("codes", "dice_mean", "folding_percent", "sdlogj", "lambda_p5", "lambda_median", "seconds")
    table = ["| model | α′ | λ_max | mean Dice | % det≤0 | SDlogJ | λ p5 | λ median | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in [(args.model, r) for r in rows] + [(args.plain, plain)]:
        table.append(f"| {name} | {r['codes'][0]:g} | {r['codes'][1]:g} | {r['dice_mean']:.4f} | "
                     f"{r['folding_percent']:.4f} | {r['sdlogj']:.3f} | {r['lambda_p5']:.3f} | "
                     f"{r['lambda_median']:.3f} | {r['seconds']:.1f} |")
    print("\n".join(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(table) + "\n")
        records = [{k: r[k] for k in keys} | {"model": name} for name, r in
                   [(args.model, r) for r in rows] + [(args.plain, plain)]]
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
