"""Time of writing a registration's outputs (every file, the report's metrics and figure) on the 1 mm brain pair.

One command (main venv)::

    .venv/bin/python benchmarks/outputs_time.py [--runs 3] [--threads 2] [--model brain-unet-spr] [--out FILE.json]

The pair (``fixed``/``moving`` with both label maps, pre-aligned: no affine stage) is registered once with the
learned model (a second; the pairwise optimiser would give the same kind of fields in 25 s), then
:func:`svreg_core.outputs.writer.write_outputs` writes the default outputs with the default one-hot linear
label warp ``--runs`` times into a temporary folder, as ``svreg register`` does after registering. Prints the
time of each write and the report's mean Dice, NDV and HD95 (the same every run). Compare two versions by
running this script with each, alternately, on the same machine: the outputs' time varies by ±1 s between
identical runs on a shared 2-core machine. Data: ``../shared/data/brain_pair`` (evaluation pair; nothing is
tuned here).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import tempfile
import time
from pathlib import Path

import torch

from svreg_core.image import load_image
from svreg_core.optim.parameters import PRESETS
from svreg_core.outputs.writer import write_outputs
from svreg_core.registration import register

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="brain-unet-spr")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--out", type=Path, help="also write the times as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = args.data
    fixed, moving = load_image(d / "fixed.nii.gz"), load_image(d / "moving.nii.gz")
    # int32 label maps, as `svreg register` reads them (a float map is checked for integer values by every metric)
    fixed_labels = load_image(d / "fixed_seg.nii.gz", labels=True)
    moving_labels = load_image(d / "moving_seg.nii.gz", labels=True)
    result = register(fixed, moving, dataclasses.replace(PRESETS["brain-mri"], affine=False), model=args.model)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            t = time.perf_counter()
            report = write_outputs(result, Path(tmp) / f"out{run}", fixed_labels=fixed_labels,
                                   moving_labels=moving_labels)
            times.append(time.perf_counter() - t)
            m = report["metrics"]
            print(f"run {run + 1}: outputs {times[-1]:.2f} s (mean Dice {m['dice_mean']:.4f}, "
                  f"NDV {m['ndv_percent']:.4f} %, HD95 {m['hd95_mean']:.3f} mm)", flush=True)
    print(f"outputs s: {' / '.join(f'{t:.2f}' for t in times)} ({args.threads} threads, "
          f"{_dt.datetime.now():%Y-%m-%d %H:%M})")
    if args.out:
        args.out.write_text(json.dumps({"outputs_s": times, "threads": args.threads, "model": args.model}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
