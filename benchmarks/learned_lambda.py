"""Does a network's λ head learn the SPR loss's optimal λ? Predicted λ against the closed-form optimum.

    .venv/bin/python benchmarks/learned_lambda.py [--models brain-unet-spr brain-unet-spr-lowalpha] \\
        [--config scripts/brain-unet-spr.yaml] [--labels ../shared/data/synthseg_label_maps] [--out RESULTS.md] \
        [--codes 0.005,3.35 0.05,3.35]

For a fixed displacement ``u`` the SPR loss is minimised over λ voxel by voxel in closed form
(:meth:`svreg_core.losses.spr.SPRLoss.optimal_weight`, Beta prior: ``λ* = min(1, α′ / (λ_max g))``). On the
synthetic validation pairs of the training configuration (synthesised from ``--labels`` with the run's
seed: training-style data, never evaluation data) each model predicts ``(v, λ)`` at its own codes (a hyper
model also at each of ``--codes``); the table compares its λ with the λ* of its own displacement, over the
whole network grid: 5th percentile and median of both, the share of voxels with λ* < 0.99, the correlation
of ``log λ`` with ``log λ*``, and the loss the predicted λ leaves above the optimum (``L(λ) − L(λ*)``, the
same SPR loss with the same ``u``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svreg_core.models import ModelInfo, SPRNetwork  # noqa: E402
from svreg_core.models.checkpoint import load_checkpoint  # noqa: E402
from svreg_core.models.zoo import resolve_model  # noqa: E402
from svreg_core.training.config import TrainingConfig, load_config  # noqa: E402
from svreg_core.training.loaders import build_data, validation_loader  # noqa: E402

COLUMNS = ("λ p5", "λ median", "λ* p5", "λ* median", "% λ* < 0.99", "corr(log λ, log λ*)", "L(λ) − L(λ*)")


def synthetic_validation(config: Path, labels: Path) -> tuple[TrainingConfig, list[dict]]:
    """The configuration and its validation batches, synthesised from ``labels`` (one process, no workers)."""
    cfg = load_config(config)
    sources = [dataclasses.replace(s, path=str(labels)) if s.kind == "synthetic" else s for s in cfg.data.sources]
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, sources=sources), num_workers=0)
    return cfg, list(validation_loader(build_data(cfg), cfg))


@torch.no_grad()
def compare(network: SPRNetwork, info: ModelInfo, cfg: TrainingConfig, batches: list[dict],
            code: tuple[float, float] | None = None) -> list[float]:
    """The :data:`COLUMNS` of one network at ``code`` (``None``: its own codes), pooled over ``batches``
    (correlation and loss gap: means per pair)."""
    alpha_prime, lambda_max = code or (info.alpha_prime, info.lambda_max)
    loss = dataclasses.replace(cfg.spr_loss(), alpha_prime=alpha_prime, lambda_max=lambda_max)
    codes = None if info.code_ranges is None else torch.tensor([[alpha_prime, lambda_max]])
    predicted, optimal, corr, gap = [], [], [], []
    for batch in batches:
        velocity, weight = network(batch["fixed"], batch["moving"], codes)
        terms, fields = loss.evaluate(batch["fixed"], batch["moving"], velocity, weight,
                                      integration_steps=info.integration_steps)
        best = loss.optimal_weight(fields.displacement)
        best_total = loss.terms(batch["fixed"], fields.warped, fields.displacement, best)["total"]
        lam, lam_star = weight.flatten().numpy(), best.flatten().numpy()
        predicted.append(lam)
        optimal.append(lam_star)
        corr.append(float(np.corrcoef(np.log(lam), np.log(lam_star))[0, 1]) if lam_star.std() > 0 else float("nan"))
        gap.append(float(terms["total"] - best_total))
    lam, lam_star = np.concatenate(predicted), np.concatenate(optimal)
    return [float(np.percentile(lam, 5)), float(np.median(lam)), float(np.percentile(lam_star, 5)),
            float(np.median(lam_star)), 100.0 * float((lam_star < 0.99).mean()), float(np.mean(corr)),
            float(np.mean(gap))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["brain-unet-spr", "brain-unet-spr-lowalpha"])
    ap.add_argument("--config", type=Path, default=REPO / "scripts" / "brain-unet-spr.yaml",
                    help="training configuration whose synthetic validation pairs are used")
    ap.add_argument("--labels", type=Path, default=REPO.parent / "shared" / "data" / "synthseg_label_maps")
    ap.add_argument("--out", type=Path, help="markdown table")
    ap.add_argument("--codes", nargs="+", default=[], metavar="A,L",
                    help="further codes (α′,λ_max) at which hyper models are compared")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg, batches = synthetic_validation(args.config, args.labels)
    config_name = os.path.relpath(args.config.resolve(), REPO)
    lines = [f"Synthetic validation pairs of `{config_name}` ({len(batches)} pairs; network grid "
             f"{' × '.join(map(str, cfg.grid_shape))} at {cfg.network_spacing_mm:g} mm), each model at its own codes"
             " (hyper models also at the codes listed).",
             "", "| model | α′ | λ_max | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) + 2)]
    extra = [tuple(float(x) for x in code.split(",")) for code in args.codes]
    for model in args.models:
        network, info = load_checkpoint(resolve_model(model))
        network.eval()
        for code in [None, *(extra if info.code_ranges is not None else [])]:
            values = compare(network, info, cfg, batches, code)
            alpha_prime, lambda_max = code or (info.alpha_prime, info.lambda_max)
            lines.append(f"| {model} | {alpha_prime:g} | {lambda_max:g} | "
                         + " | ".join(f"{v:.3g}" if i != 6 else f"{v:.2e}" for i, v in enumerate(values)) + " |")
            print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
