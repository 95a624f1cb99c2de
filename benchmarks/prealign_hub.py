"""Training pre-alignment of inter-subject pairs: each pair registered on its own vs through one hub image.

For the Mindboggle OASIS-TRT-20 subjects given (../shared/data/mindboggle_oasis20; native spaces), builds every
ordered inter-subject pair as ``svreg train`` does (``PairListDataset``, 2 mm training grid) and compares the mean
Dice of the label maps after the affine pre-alignment alone: through the hub (N - 1 registrations, what training
does since 2026-11-29) and with each pair registered on its own (N (N - 1), before). Labels warped trilinearly on
the training grid, all labels of both maps.

    .venv/bin/python benchmarks/prealign_hub.py --subjects 1 2 3 4

Licence of the data: CC BY-NC-SA 3.0 — evaluation only.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from svreg_core.metrics import dice
from svreg_core.training.datasets import PairListDataset, PairSpec

REPO = Path(__file__).resolve().parent.parent


def _mean_dice(sample: dict) -> float:
    return float(np.mean(list(dice(sample["fixed_labels"].numpy(), sample["moving_labels"].numpy()).values())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mindboggle_oasis20")
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--grid-shape", type=int, nargs=3, default=[96, 112, 96])
    args = parser.parse_args()
    subjects = [args.data / f"sub-{i:02d}" for i in args.subjects]
    pairs = [PairSpec(f / "t1.nii.gz", m / "t1.nii.gz", f / "labels.nii.gz", m / "labels.nii.gz")
             for f in subjects for m in subjects if f != m]
    hub = PairListDataset(pairs, 2.0, args.grid_shape)
    start = time.perf_counter()
    hub.precompute_alignments()
    print(f"through the hub {Path(str(hub.hub)).parent.name}: {hub.registrations} registrations in "
          f"{time.perf_counter() - start:.1f} s")
    rows = []
    for index, pair in enumerate(pairs):
        own = PairListDataset([pair], 2.0, args.grid_shape)  # one pair: registered on its own
        start = time.perf_counter()
        own.precompute_alignments()
        seconds = time.perf_counter() - start
        rows.append((_mean_dice(own[0]), _mean_dice(hub[index])))
        print(f"{pair.fixed.parent.name} -> {pair.moving.parent.name}: own registration {rows[-1][0]:.4f} "
              f"({seconds:.1f} s), through the hub {rows[-1][1]:.4f}", flush=True)
    own_mean, hub_mean = np.mean(rows, axis=0)
    print(f"mean Dice over {len(rows)} pairs: own registrations {own_mean:.4f}, through the hub {hub_mean:.4f}")


if __name__ == "__main__":
    main()
