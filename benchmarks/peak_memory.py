"""Peak memory of ``svreg register`` on the 1 mm brain pair, and which stage reaches it.

One command (main venv)::

    .venv/bin/python benchmarks/peak_memory.py [--runs 3] [--threads 2] [--no-affine] [-- SVREG OPTIONS]

(e.g. ``-- --model brain-unet-spr`` for the learned model: options after ``--`` go to ``svreg register``).

Each run is ``svreg register FIXED MOVING --fixed-labels … --moving-labels …`` (the default outputs, the
default one-hot linear label warp, ``--progress json``) as a child process. Two measurements per run:

* ``peak MiB``: ``ru_maxrss`` that ``os.wait4`` returns for the reaped child — the kernel's high-water mark
  of its resident memory (interpreter, torch and every library included); no peak is missed;
* per stage (``load``, ``affine``, ``deformable 4 mm``, …, ``outputs``): the largest resident size seen by
  polling ``/proc/PID/statm`` every 20 ms while the child reported that stage; a poll can miss a short peak,
  so these are lower bounds of each stage's peak.

Prints a markdown table (runs as rows); ``--out FILE.json`` also writes the numbers. The issue's target is
≤ 2 GB for this pair on a CPU. Data: ``../shared/data/brain_pair`` (evaluation pair; nothing is tuned here).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _resident_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_MIB
    except (OSError, ValueError, IndexError):
        return None


def measure(command: list[str]) -> dict:
    """Run ``command`` (an ``svreg register … --progress json``); its peak RSS, stage peaks and report timing."""
    stage = ["start"]
    peaks: dict[str, float] = {}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def follow() -> None:
        for line in proc.stdout:
            try:
                stage[0] = json.loads(line).get("stage", stage[0])
            except ValueError:
                pass

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        rss = _resident_mib(proc.pid)
        if rss is not None:
            peaks[stage[0]] = max(peaks.get(stage[0], 0.0), rss)
        time.sleep(0.02)
    reader.join(timeout=5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1),
            "stage_peaks_mib": {k: round(v, 1) for k, v in peaks.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-affine", action="store_true", help="deformable only (the pre-aligned pair)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--svreg", type=Path, default=REPO / ".venv" / "bin" / "svreg")
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    ap.add_argument("svreg_options", nargs="*", help="after --: more options of svreg register")
    args = ap.parse_args(argv)
    files = {name: args.data / f"{name}.nii.gz" for name in ("fixed", "moving", "fixed_seg", "moving_seg")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        print(f"peak_memory: missing input(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="svreg-peak-memory-") as tmp:
        for run in range(args.runs):
            out = Path(tmp) / f"run{run}"
            command = [str(args.svreg), "register", str(files["fixed"]), str(files["moving"]), "-o", str(out),
                       "--fixed-labels", str(files["fixed_seg"]), "--moving-labels", str(files["moving_seg"]),
                       "--threads", str(args.threads), "--progress", "json", *(["--no-affine"] * args.no_affine),
                       *args.svreg_options]
            row = measure(command)
            if row["returncode"] != 0:
                print(f"peak_memory: run {run + 1} failed (exit {row['returncode']}): {' '.join(command)}",
                      file=sys.stderr)
                return 1
            report = json.loads((out / "report.json").read_text())
            row.update(registration_s=round(report["timing"]["registration_s"], 1),
                       outputs_s=round(report["timing"]["outputs_s"], 1),
                       dice_mean=round(report["metrics"]["dice_mean"], 4))
            rows.append(row)
            print(f"run {run + 1}: peak {row['peak_rss_mib']} MiB", file=sys.stderr)
    stages = list(dict.fromkeys(s for row in rows for s in row["stage_peaks_mib"]))
    print(f"Peak memory of `svreg register` (brain pair 1 mm, labels, {args.threads} threads"
          f"{', --no-affine' if args.no_affine else ''}{''.join(' ' + o for o in args.svreg_options)}), "
          f"{_dt.datetime.now():%Y-%m-%d %H:%M}\n")
    print("| run | peak MiB (ru_maxrss) | " + " | ".join(f"{s} (polled)" for s in stages)
          + " | reg s | outputs s | mean Dice |")
    print("|---:|---:|" + "---:|" * len(stages) + "---:|---:|---:|")
    for i, row in enumerate(rows, 1):
        cells = [f"{row['stage_peaks_mib'].get(s, float('nan')):.0f}" for s in stages]
        print(f"| {i} | {row['peak_rss_mib']:.0f} | " + " | ".join(cells)
              + f" | {row['registration_s']} | {row['outputs_s']} | {row['dice_mean']} |")
    if args.out:
        args.out.write_text(json.dumps({"date": f"{_dt.datetime.now():%Y-%m-%d %H:%M}", "threads": args.threads,
                                        "no_affine": args.no_affine, "svreg_options": args.svreg_options,
                                        "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
