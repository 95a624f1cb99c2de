"""Does the learned network learn across pairs? A short probe on cached synthetic pairs (GPU or CPU).

Two tasks on SynthMorph-style same-map pairs synthesised from label maps (by default on a 4 mm grid of
48×64×48, ``gen --spacing --grid``; the last 8 pairs are held out):

* ``synth``: register the pairs; reports the held-out mean Dice (nearest-neighbour label warp, all
  labels), the mean |u| (voxels), % det J ≤ 0 and SDlogJ every ``--every`` steps.
* ``shift``: moving = fixed translated by a random t ∈ [-2, 2]³ voxels; reports the held-out relative
  error of the mean predicted velocity against t (1 = nothing learned).

Objectives: ``lncc``/``mse`` (the SPR loss), ``label`` (SPR loss + label soft Dice), ``labelonly``
(label soft Dice + regulariser + prior), ``sup`` (``shift`` only: supervised regression of t).
``--init pytorch`` restores PyTorch's default initialisation of the U-Net's convolutions instead of the
He initialisation :mod:`svreg_core.models.unet` uses. ``--uniform`` trains the same network without its
λ head (λ ≡ 1, no hyperprior: ``spr: false``), for the uniform-vs-SPR comparison.

Usage::

    python benchmarks/learning_probe.py gen LABEL_MAP_DIR pairs.pt --pairs 400
    python benchmarks/learning_probe.py train pairs.pt NAME --task synth --objective lncc --seconds 360 --out DIR
    python benchmarks/learning_probe.py plot curves.png DIR/NAME1.json DIR/NAME2.json   # held-out Dice, SDlogJ

Results of 2026-11-26 (one H200): ``benchmarks/results/gpu_learning_2026-11-26/``, described in
``docs/learned-models.md``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

HELD_OUT = 8
_DATASET = None


def _synthesise(args: tuple[str, float, tuple[int, int, int], int]) -> dict[str, torch.Tensor]:
    from svreg_core.training.datasets import SyntheticPairDataset
    from svreg_core.training.sources import synthseg_label_maps
    from svreg_core.training.synthesis import SynthesisConfig
    global _DATASET
    folder, spacing, grid, index = args
    if _DATASET is None:
        torch.set_num_threads(1)
        # the shipped model's synthesis settings (scripts/brain-unet-spr.yaml)
        synthesis = SynthesisConfig(same_map_probability=1.0, velocity_std_max=1.5, noise_std_max=0.02,
                                    label_std_max=0.03, blur_sigma=(0.5, 1.0))
        _DATASET = SyntheticPairDataset(synthseg_label_maps(folder), spacing, grid, length=10**6, synthesis=synthesis)
    sample = _DATASET[index]
    return {k: sample[k][None] for k in ("fixed", "moving", "fixed_labels", "moving_labels")}


def generate(folder: str, out: str, pairs: int, processes: int, spacing: float, grid: tuple[int, int, int]) -> None:
    """Synthesise ``pairs`` pairs on a ``grid`` of ``spacing`` mm and save them with that geometry."""
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        synthesised = pool.map(_synthesise, [(folder, spacing, grid, i) for i in range(pairs)])
    torch.save({"spacing_mm": spacing, "grid": list(grid), "pairs": synthesised}, out)


def train(args: argparse.Namespace) -> None:
    from svreg_core.metrics import dice, folding_percent, jacobian_determinant, sdlogj
    from svreg_core.models import build_model
    from svreg_core.training.config import TrainingConfig
    from svreg_core.training.step import training_step
    from svreg_core.training.validation import warp_labels
    from svreg_core.transforms.warp import warp
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    cached = torch.load(args.pairs)
    pairs = cached["pairs"]
    train_pairs, held_out = pairs[:-HELD_OUT], pairs[-HELD_OUT:]
    torch.manual_seed(0)
    config = TrainingConfig(network_spacing_mm=cached["spacing_mm"], grid_shape=tuple(cached["grid"]),
                            similarity="mse" if args.objective == "mse" else "lncc", lambda_max=args.lambda_max,
                            spr=not args.uniform)
    net = build_model("unet-spr", {"uniform": args.uniform})
    if args.init == "pytorch":
        for module in net.modules():
            if isinstance(module, torch.nn.Conv3d) and module is not net.velocity_head and module.out_channels > 1:
                module.reset_parameters()
    if args.head_std:
        torch.nn.init.normal_(net.velocity_head.weight, std=args.head_std)
    net = net.to(device)
    loss = config.spr_loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, eps=args.eps)
    draws, held_draws = torch.Generator().manual_seed(1), torch.Generator().manual_seed(7)
    label_weight = 0.0 if args.objective in ("lncc", "mse") else 1.0

    def shifted(pair: dict, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
        fixed = pair["fixed"].to(device)
        t = ((torch.rand(3, generator=generator) * 2 - 1) * 2).to(device)
        u = t.view(1, 3, 1, 1, 1).expand(1, 3, *fixed.shape[2:]).contiguous()
        return {"fixed": fixed, "moving": warp(fixed, -u)}, t  # moving(x) = fixed(x - t): u = t registers

    held_shifts = [shifted(p, held_draws) for p in held_out]

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            if args.task == "shift":
                errors = [((net(b["fixed"], b["moving"])[0].mean((0, 2, 3, 4)) - t).norm() / t.norm()).item()
                          for b, t in held_shifts]
                result = {"rel_err": float(np.mean(errors))}
            else:
                scores = []
                for p in held_out:
                    _, fields = training_step(net, loss, {k: p[k].to(device) for k in ("fixed", "moving")}, 7)
                    warped = warp_labels(p["moving_labels"][0].to(device), fields.displacement, "nearest").cpu().numpy()
                    u = fields.displacement[0].permute(1, 2, 3, 0).cpu().numpy()  # voxels = identity affine
                    det = jacobian_determinant(u, np.eye(4))
                    scores.append((np.mean(list(dice(p["fixed_labels"][0].numpy(), warped).values())),
                                   fields.displacement.abs().mean().item(), folding_percent(det), sdlogj(det)))
                means = np.mean(np.array(scores), axis=0)
                result = {"dice": float(means[0]), "mean_abs_u": float(means[1]), "folding_percent": float(means[2]),
                          "sdlogj": float(means[3])}
        net.train()
        return result

    print(args.name, "start", evaluate(), flush=True)
    history, start, step = [], time.time(), 0
    while time.time() - start < args.seconds:
        step += 1
        pair = train_pairs[int(torch.randint(len(train_pairs), (1,), generator=draws))]
        optimizer.zero_grad()
        if args.task == "shift":
            batch, t = shifted(pair, draws)
        else:
            batch = pair
        if args.objective == "sup":
            value = ((net(batch["fixed"], batch["moving"])[0] - t.view(1, 3, 1, 1, 1)) ** 2).mean()
        else:
            terms, _ = training_step(net, loss, batch, 7, label_weight)
            value = terms["total"] - (terms["similarity"] if args.objective == "labelonly" else 0)
        value.backward()
        optimizer.step()
        if step % args.every == 0:
            row = {**evaluate(), "step": step, "sec": round(time.time() - start), "loss": round(value.item(), 4)}
            history.append(row)
            print(args.name, row, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.name}.json").write_text(json.dumps(history))


def plot(out: str, histories: list[str]) -> None:
    """Held-out Dice and SDlogJ against the training step, one line per ``train`` history (``synth`` task)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    dice_ax, smooth_ax = fig.subplots(1, 2)
    for path in histories:
        rows = json.loads(Path(path).read_text())
        steps = [r["step"] for r in rows]
        dice_ax.plot(steps, [r["dice"] for r in rows], label=Path(path).stem)
        smooth_ax.plot(steps, [r["sdlogj"] for r in rows], label=Path(path).stem)
    dice_ax.set(xlabel="training step", ylabel="held-out mean Dice", title="held-out synthetic pairs")
    smooth_ax.set(xlabel="training step", ylabel="SDlogJ", title="smoothness (% det J ≤ 0 stayed 0)")
    dice_ax.legend()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("gen")
    gen.add_argument("label_maps")
    gen.add_argument("out")
    gen.add_argument("--pairs", type=int, default=400)
    gen.add_argument("--processes", type=int, default=15)
    gen.add_argument("--spacing", type=float, default=4.0, help="network grid spacing, mm")
    gen.add_argument("--grid", type=int, nargs=3, default=(48, 64, 48), help="network grid shape (multiples of 16)")
    run = sub.add_parser("train")
    run.add_argument("pairs")
    run.add_argument("name")
    run.add_argument("--task", choices=("synth", "shift"), default="synth")
    run.add_argument("--objective", choices=("lncc", "mse", "label", "labelonly", "sup"), default="lncc")
    run.add_argument("--init", choices=("he", "pytorch"), default="he")
    run.add_argument("--lr", type=float, default=1e-4)
    run.add_argument("--eps", type=float, default=1e-8)
    run.add_argument("--head-std", type=float, default=0.0)
    run.add_argument("--lambda-max", type=float, default=3.35)
    run.add_argument("--uniform", action="store_true", help="no λ head, λ ≡ 1 (spr: false)")
    run.add_argument("--seconds", type=float, default=360)
    run.add_argument("--every", type=int, default=250)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--out", default=".")
    figure = sub.add_parser("plot")
    figure.add_argument("out")
    figure.add_argument("histories", nargs="+")
    args = parser.parse_args()
    if args.command == "plot":
        plot(args.out, args.histories)
    elif args.command == "gen":
        generate(args.label_maps, args.out, args.pairs, args.processes, args.spacing, tuple(args.grid))
    else:
        if args.objective == "sup" and args.task != "shift":
            parser.error("--objective sup needs --task shift")
        train(args)


if __name__ == "__main__":
    main()
