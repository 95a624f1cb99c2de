"""GPU benchmark: the 1 mm brain pair registered on CUDA, pairwise SPR and learned models, as a user runs it.

    bash benchmarks/gpu.sh [--pair DIR] [--runs 2] [--model NAME_OR_CHECKPOINT ...] [--cpu-threads N ...]
                           [--no-deterministic]

Every registration is an ``svreg register FIXED MOVING --fixed-labels --moving-labels`` child process
on the shared brain pair (``fixed``/``moving`` pre-aligned, deformable stage only: ``--no-affine``, as
in the CPU benchmark), measured by :func:`run_benchmark.run_measured` (process wall time, peak RSS).
Columns: ``reg s`` the registration as timed inside the process (report.json ``timing.registration_s``:
preparation, optimisation or network, composing the fields), of which ``optim s`` the deformable stage
(pairwise: the optimiser; learned: the network and any refinement) and ``compose s`` the output fields;
``outputs s`` writing the files and computing the report's metrics; ``process s`` the whole child
(interpreter, imports, CUDA start-up included). The first CUDA run of a fresh machine also pays the kernels'
first loading; ``--runs`` repeats each variant.

Determinism: the two default CUDA runs are compared (largest displacement difference, Dice difference)
and, when ``svreg register`` offers ``--deterministic``, two runs with it must be bit-identical.
``--cpu-threads`` adds CPU runs with that many threads (``--threads`` and the OpenMP variables), for the
scaling on the same machine. Prints one markdown table; writes it and a JSON next to the runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from run_benchmark import child_env, run_measured

REPO = Path(__file__).resolve().parents[1]
SVREG = [sys.executable, "-m", "svreg_core.cli"]


def register(name: str, pair: Path, out: Path, extra: list[str], threads: int) -> dict:
    """One ``svreg register`` child; its measurement and report.json's timing and metrics."""
    folder = out / name
    cmd = [*SVREG, "register", str(pair / "fixed.nii.gz"), str(pair / "moving.nii.gz"), "-o", str(folder),
           "--fixed-labels", str(pair / "fixed_seg.nii.gz"), "--moving-labels", str(pair / "moving_seg.nii.gz"),
           "--no-affine", "--overwrite", "--progress", "none", *extra]
    measured = run_measured(cmd, out / f"{name}.log", child_env(threads), timeout=900)
    row = {"name": name, "args": extra, **measured}
    report_path = folder / "report.json"
    if measured["returncode"] != 0 or not report_path.is_file():
        print((out / f"{name}.log").read_text(errors="replace")[-2000:], flush=True)
        return row
    report = json.loads(report_path.read_text())
    timing, metrics = report["timing"], report["metrics"]
    stages = ("deformable_s", "network_s", "refine_s")
    row.update(device=report["device"], registration_s=timing["registration_s"],
               optim_s=sum(timing.get(k, 0.0) for k in stages), compose_s=timing["compose_s"],
               outputs_s=timing["outputs_s"], dice=metrics.get("dice_mean"),
               folding_percent=metrics["folding_percent"], sdlogj=metrics["sdlogj"])
    print(f"{name}: reg {row['registration_s']:.2f} s, process {row['process_seconds']:.1f} s, "
          f"Dice {row['dice']:.4f}", flush=True)
    return row


def displacement(out: Path, name: str) -> np.ndarray:
    return np.asanyarray(nib.load(str(out / name / "displacement.nii.gz")).dataobj)


def compare(out: Path, a: dict, b: dict) -> dict:
    """Largest displacement difference (mm) and Dice difference of two runs; bit-identical or not."""
    ua, ub = displacement(out, a["name"]), displacement(out, b["name"])
    return {"runs": [a["name"], b["name"]], "bit_identical": bool(np.array_equal(ua, ub)),
            "max_abs_displacement_difference_mm": float(np.abs(ua - ub).max()),
            "dice_difference": abs(a["dice"] - b["dice"])}


def table(rows: list[dict]) -> str:
    lines = ["| run | device | reg s | optim/network s | compose s | outputs s | process s | peak RSS MiB | Dice "
             "| % det≤0 | SDlogJ |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "registration_s" not in r:
            lines.append(f"| {r['name']} | failed (exit {r['returncode']}) |" + " |" * 9)
            continue
        lines.append(f"| {r['name']} | {r['device']} | {r['registration_s']:.2f} | {r['optim_s']:.2f} | "
                     f"{r['compose_s']:.2f} | {r['outputs_s']:.2f} | {r['process_seconds']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['dice']:.4f} | {r['folding_percent']:.3g} | {r['sdlogj']:.3f} |")
    return "\n".join(lines)


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (nvidia-smi failed)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "gpu")
    ap.add_argument("--runs", type=int, default=2, help="repetitions of each CUDA variant")
    ap.add_argument("--model", action="append", default=[], help="learned model(s) to run once each, with and "
                    "without --refine 20 (default: brain-unet-spr)")
    ap.add_argument("--cpu-threads", type=int, nargs="*", default=[], help="CPU runs with these thread counts")
    ap.add_argument("--no-deterministic", action="store_true", help="skip the two --deterministic CUDA runs")
    args = ap.parse_args(argv)
    if not (args.pair / "fixed.nii.gz").is_file():
        ap.error(f"{args.pair} does not hold the brain pair (fixed.nii.gz, moving.nii.gz, *_seg.nii.gz)")
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    print(f"GPU: {gpu_name() if cuda else 'none (CUDA not available: CPU rows only)'}; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", flush=True)
    threads = torch.get_num_threads()
    result: dict = {"gpu": gpu_name() if cuda else None, "torch": torch.__version__, "rows": [], "determinism": []}
    rows, checks = result["rows"], result["determinism"]

    def run(name: str, extra: list[str], n_threads: int = threads) -> dict:
        row = register(name, args.pair, args.out, extra, n_threads)
        rows.append(row)
        (args.out / "gpu_benchmark.json").write_text(json.dumps(result, indent=2))  # kept if a later run is cut
        return row

    if cuda:
        default = [run(f"spr-cuda-{i + 1}", ["--device", "cuda"]) for i in range(args.runs)]
        ok = [r for r in default if "dice" in r]
        if len(ok) >= 2:
            checks.append({"variant": "default", **compare(args.out, ok[-2], ok[-1])})
        help_text = subprocess.run([*SVREG, "register", "--help"], capture_output=True, text=True).stdout
        if "--deterministic" in help_text and not args.no_deterministic:
            det = [run(f"spr-cuda-deterministic-{i + 1}", ["--device", "cuda", "--deterministic"]) for i in range(2)]
            if all("dice" in r for r in det):
                checks.append({"variant": "--deterministic", **compare(args.out, *det)})
        for model in args.model or ["brain-unet-spr"]:
            label = Path(model).name
            for refine in (0, 20):
                extra = ["--device", "cuda", "--model", model] + (["--refine", str(refine)] if refine else [])
                run(f"model-{label}" + (f"-refine{refine}" if refine else ""), extra)
    for n in args.cpu_threads:
        run(f"spr-cpu-{n}threads", ["--device", "cpu", "--threads", str(n)], n)
    text = table(rows)
    print("\n" + text)
    for c in checks:
        print(f"determinism ({c['variant']}): bit-identical {c['bit_identical']}, max |Δu| "
              f"{c['max_abs_displacement_difference_mm']:.3g} mm, |ΔDice| {c['dice_difference']:.2g}")
    (args.out / "gpu_benchmark.md").write_text(text + "\n")
    (args.out / "gpu_benchmark.json").write_text(json.dumps(result, indent=2))
    return 0 if all("registration_s" in r for r in rows) else 1

if __name__ == "__main__":
    sys.exit(main())
