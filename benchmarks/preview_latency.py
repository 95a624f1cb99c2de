"""Slider-preview latency of a HyperSPR model: one ``svreg register`` child per move vs one ``svreg preview`` engine.

One command (main venv)::

    .venv/bin/python benchmarks/preview_latency.py [--data ../shared/data/brain_pair] [--threads 2] [--device cuda]

What the Slicer module's *Regularisation* sliders run, on the brain pair (1 mm, fixed.nii.gz / moving.nii.gz)
with the shipped ``brain-hyper-unet-spr``, on the CPU (or ``--device cuda``), writing the outputs a preview
loads (displacement, λ map, Jacobian, warped volume; ``--gzip-level 0`` as the module asks): a
``svreg register`` child at one code (the path used before the engine existed), then one ``svreg preview`` engine
answering five requests at different codes (the first includes starting the engine: torch import, reading, the
affine stage), then a second ``svreg register`` child. Prints the wall time of each, the engine's own timing
per request, and checks that the engine's files equal the register children's at the same codes (decompressed
bytes; the first request and the second, answered after another code). Speed only: nothing is selected on the
(evaluation) brain pair.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ["displacement", "regularization", "jacobian", "warped"]
MODEL = "brain-hyper-unet-spr"
CODES = [(0.1, 2.0), (0.3, 5.0), (0.05, 0.5), (0.5, 10.0), (0.2, 1.0)]


def load() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine inflates the timings)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)
    fixed, moving = (args.data / "fixed.nii.gz").resolve(), (args.data / "moving.nii.gz").resolve()
    if not fixed.is_file() or not moving.is_file():
        print(f"preview_latency: {fixed} / {moving} not found (--data)", file=sys.stderr)
        return 2
    # the children run in this checkout (``python -m`` puts the working folder first on the module path, so the
    # working folder is this checkout's root too: another checkout can be timed from anywhere)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    base = [sys.executable, "-m", "svreg_core.cli"]
    # as the Slicer module runs them: the work folder is read back at once, so its files are not compressed
    common = ["--model", MODEL, "--device", args.device, "--threads", str(args.threads), "--gzip-level", "0"]
    with tempfile.TemporaryDirectory(prefix="svreg-preview-latency-") as tmp:
        out = Path(tmp)

        def register(codes: tuple[float, float], name: str) -> float:
            t0 = time.perf_counter()
            subprocess.run([*base, "register", str(fixed), str(moving), "-o", str(out / name), *common,
                            "--alpha-prime", str(codes[0]), "--lambda-max", str(codes[1]), "--outputs", *OUTPUTS,
                            "--progress", "none"], check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        print(f"load {load()}")
        first_child = register(CODES[0], "register0")
        print(f"register child at {CODES[0]}: {first_child:.2f} s")
        proc = subprocess.Popen([*base, "preview", str(fixed), str(moving), *common], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        walls = []
        for i, codes in enumerate(CODES):
            t = time.perf_counter()
            proc.stdin.write(json.dumps({"alpha_prime": codes[0], "lambda_max": codes[1], "id": i,
                                         "output": str(out / f"preview{i}"), "outputs": OUTPUTS}) + "\n")
            proc.stdin.flush()
            while True:
                event = json.loads(proc.stdout.readline())
                if event["event"] in ("done", "error"):
                    break
            if event["event"] == "error":
                print(f"preview_latency: request {i} failed: {event['message']}", file=sys.stderr)
                return 1
            walls.append(time.perf_counter() - t)
            timing = event["report"]["timing"]
            print(f"preview request {i} at {codes}: {walls[-1]:.2f} s (engine: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()) + ")")
        proc.stdin.close()
        proc.wait()
        second_child = register(CODES[1], "register1")
        print(f"register child at {CODES[1]}: {second_child:.2f} s")
        # both codes a child ran: the first request and a later one (what the engine kept from earlier requests)
        same = all(gzip.open(out / f"register{i}" / f"{name}.nii.gz").read() ==
                   gzip.open(out / f"preview{i}" / f"{name}.nii.gz").read()
                   for i in (0, 1) for name in OUTPUTS)
        later = walls[1:]
        child = (first_child + second_child) / 2
        print(f"engine files identical to the register children's at the same codes: {same}")
        print(f"SUMMARY register child {child:.1f} s per move; engine: first move {walls[0]:.1f} s, later moves "
              f"{sum(later) / len(later):.1f} s (min {min(later):.1f}, max {max(later):.1f}); "
              f"{child / (sum(later) / len(later)):.1f}x faster; load {load()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
