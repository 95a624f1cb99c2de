"""Where a CUDA registration of the brain pair spends its time, in one process (``svreg_core`` API).

    PYTHONPATH=. python benchmarks/gpu_profile.py --pair BRAIN_PAIR --out DIR

Runs, on the 1 mm brain pair (pre-aligned, ``--no-affine`` as in ``benchmarks/gpu.sh``):

1. pairwise SPR registrations on CUDA with the optimiser iteration replayed as a CUDA graph (the
   default; the first run of the process pays CUDA's start-up) and, for comparison in the same process,
   with every iteration launched step by step (the graph's warm-up never ends);
2. the host synchronisations of one registration (``torch.cuda.set_sync_debug_mode``), by code line;
3. the learned model (one pass, and ``--refine 20``);
4. writing the outputs: all of them with the default compression and with ``gzip_level=0``, and only
   ``transform.h5`` without labels (the report's metrics are always computed);
5. a ``torch.profiler`` table of one graphed registration (CPU and CUDA time per operation).

Prints the timings (seconds, ``time.perf_counter`` after ``torch.cuda.synchronize``) and writes
``gpu_profile.json`` and ``gpu_profile_ops.txt`` into ``--out``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

from svreg_core import load_image, load_parameters, register, write_outputs
from svreg_core.optim import cuda_graph

STAGES = ("prepare_s", "deformable_s", "network_s", "refine_s", "compose_s", "registration_s")


def timed_register(*args, **kwargs) -> tuple[object, dict[str, float]]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    result = register(*args, **kwargs)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    return result, {"wall_s": wall, **{k: round(v, 4) for k, v in result.timing.items() if k in STAGES}}


def sync_sites(fixed, moving, params) -> list[tuple[str, int]]:
    """Code lines of ``svreg_core`` that made the host wait for the GPU in one registration."""
    sites: collections.Counter = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack() if "svreg_core" in f.filename]
        # package-relative locations: no machine's install paths in the recorded results
        where = f"{frames[-1].filename.split('svreg_core/')[-1]}:{frames[-1].lineno}" if frames else \
            f"{str(filename).split('site-packages/')[-1]}:{lineno}"
        sites[f"{where} ({str(message)[:60]})"] += 1

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            register(fixed, moving, params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original
    return sites.most_common(20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="brain-unet-spr")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    fixed, moving = load_image(args.pair / "fixed.nii.gz"), load_image(args.pair / "moving.nii.gz")
    fixed_labels = load_image(args.pair / "fixed_seg.nii.gz")
    moving_labels = load_image(args.pair / "moving_seg.nii.gz")
    params = load_parameters("brain-mri", affine=False, device="cuda")
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}

    def show(name: str, timing: dict) -> None:
        report.setdefault(name, []).append(timing)
        print(name, json.dumps(timing), flush=True)

    result = None
    for _ in range(3):
        result, timing = timed_register(fixed, moving, params)
        show("pairwise graphed", timing)
    warmup = cuda_graph.WARMUP_CALLS
    cuda_graph.WARMUP_CALLS = 10 ** 9  # never recorded: every iteration launched step by step
    for _ in range(2):
        show("pairwise step by step", timed_register(fixed, moving, params)[1])
    report["sync sites, step by step"] = sync_sites(fixed, moving, params)
    cuda_graph.WARMUP_CALLS = warmup
    report["sync sites, graphed"] = sync_sites(fixed, moving, params)
    for key in ("sync sites, step by step", "sync sites, graphed"):
        print(key, *report[key], sep="\n  ", flush=True)
    for refine in (0, 0, 20):
        show(f"learned refine {refine}", timed_register(fixed, moving, params, model=args.model, refine=refine)[1])
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"outputs all, default gzip": {"fixed_labels": fixed_labels, "moving_labels": moving_labels},
                    "outputs all, gzip 0": {"fixed_labels": fixed_labels, "moving_labels": moving_labels,
                                            "gzip_level": 0},
                    "outputs transform only, no labels": {"outputs": ["transform"]}}
        for index, (name, options) in enumerate(variants.items()):
            t = time.perf_counter()
            written = write_outputs(result, Path(tmp) / str(index), **options)
            show(name, {"wall_s": time.perf_counter() - t, "outputs_s": written["timing"]["outputs_s"]})
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        register(fixed, moving, params)
        torch.cuda.synchronize()
    averages = prof.key_averages()
    ops = ("by CPU time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=25) +
           "\nby CUDA time\n" + averages.table(sort_by="self_cuda_time_total", row_limit=25))
    (args.out / "gpu_profile_ops.txt").write_text(ops)
    print(ops[:6000])
    (args.out / "gpu_profile.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
