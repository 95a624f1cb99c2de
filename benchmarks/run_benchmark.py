"""Benchmark orchestrator: svreg against peer registration tools on the shared brain pair.

Run with the main venv's python (``scripts/benchmark.sh`` creates the peer venvs first, then calls
this). For every resolution it

1. prepares the data in ``.bench/data/<res>mm`` (:mod:`prepare_data`);
2. runs every tool as a child process: each peer in its own venv through
   ``benchmarks/peers/run_<peer>.py FIXED MOVING MOVING_SEG OUTDIR``, ours through
   ``.venv/bin/svreg register`` (variants ``spr``: default; ``nospr``: ``--no-spr``; ``native``: the
   non-pre-aligned ``moving_native`` with the default affine stage; on the pre-aligned pair ours runs
   ``--no-affine`` like the peers unless ``--ours-affine``), outputs in
   ``.bench/runs/<res>mm/<tool>/`` with the child's stdout/stderr beside them in ``<tool>.log``;
3. measures each child: wall time (``time.perf_counter`` around the process) and peak memory, the
   ``ru_maxrss`` that ``os.wait4`` returns for the reaped child — the kernel's high-water mark of
   resident memory of the child (or of its largest descendant that it waited for), not a poll, so
   short peaks are not missed; it includes the interpreter and imported libraries (torch, ITK);
4. evaluates every run identically with :mod:`evaluate` (``svreg_core.metrics``);
5. prints a markdown table per resolution and writes ``benchmarks/results/benchmark_<date>.json`` and
   ``.md`` (``benchmark_<date>_quick.*`` for ``--quick``, ``benchmark_<date>_<tag>.*`` with ``--tag``).

Fairness: every child gets ``OMP_NUM_THREADS = MKL_NUM_THREADS = OPENBLAS_NUM_THREADS =
ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS = 2`` (``--threads``); the torch runners also call
``torch.set_num_threads``, the elastix runner sets ITK's global default. Time columns: ``reg s`` is
the registration alone as timed inside the tool's process (runner.json ``registration_seconds``;
ours: report.json ``timing.registration_s``), excluding imports and file I/O; ``process s`` is the
whole child process. The ratio column is ``reg s(tool) / reg s(ours, SPR)`` at the same resolution.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import evaluate as ev  # noqa: E402
import prepare_data as prep  # noqa: E402

PEERS = ("ants", "elastix", "convexadam", "fireants")
OURS_VARIANTS = ("spr", "nospr", "native", "model", "model-fp32", "model-oneway", "model-r20", "model-r50")
#: ``--refine`` steps of the learned-model variants (``--model default``).
MODEL_REFINE = {"model": 0, "model-fp32": 0, "model-oneway": 0, "model-r20": 20, "model-r50": 50}
PEER_LABEL = {"ants": "ANTs SyN (antspyx)", "elastix": "elastix B-spline (itk-elastix)",
              "convexadam": "ConvexAdam (MIND)", "fireants": "FireANTs greedy (CPU)"}
OURS_LABEL = {"spr": "svreg (SPR)", "nospr": "svreg (--no-spr)", "native": "svreg native (affine+SPR)",
              "model": "svreg learned model, prediction",
              "model-fp32": "svreg learned model, prediction in float32 (--precision float32)",
              "model-oneway": "svreg learned model, one network pass (--one-way --passes 1)",
              "model-r20": "svreg learned model + refine 20",
              "model-r50": "svreg learned model + refine 50"}


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# running a child and measuring it


def run_measured(cmd: list[str], log_path: Path, env: dict[str, str], timeout: float) -> dict:
    """Run ``cmd``; return exit status, wall seconds, peak RSS (MiB) and CPU seconds of the child."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as logf:
        logf.write("$ " + " ".join(cmd) + "\n")
        logf.flush()
        t0 = time.perf_counter()
        # Own process group, so a timeout ends the child and anything it started, and nothing else.
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                start_new_session=True)
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    return {
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "process_seconds": round(wall, 3),
        "peak_rss_mib": round(ru.ru_maxrss / 1024.0, 1),  # Linux: KiB
        "user_cpu_seconds": round(ru.ru_utime, 2),
        "sys_cpu_seconds": round(ru.ru_stime, 2),
    }


def tail(path: Path, n: int = 8) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("USE_FFO", "False")  # FireANTs: no fused CUDA ops on CPU
    return env


def _dig(d: dict, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


# ------------------------------------------------------------------------------------------------
# one tool at one resolution


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it (results name no machine path)."""
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path


def peer_status(peer: str, venvs: Path) -> str | None:
    """None when the peer can run, else the reason it is skipped."""
    failed = venvs / f"{peer}.failed"
    if failed.exists():
        lines = failed.read_text(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        return "install failed: " + " | ".join((lines[:1] + errors[:2]) if errors else lines[:3])
    shown = _shown(venvs / peer)
    if not (venvs / peer / "bin" / "python").exists():
        return f"venv {shown} missing (run scripts/benchmark.sh without --skip-setup)"
    if not (venvs / peer / ".bench-installed").exists():
        return f"venv {shown} incomplete (no .bench-installed marker; rerun scripts/benchmark.sh)"
    return None


def ours_status(svreg: Path) -> str | None:
    if not svreg.exists():
        return f"{svreg} not found (run scripts/setup_env.sh)"
    try:
        r = subprocess.run([str(svreg), "register", "--help"], capture_output=True, text=True, timeout=120)
    except Exception as exc:  # noqa: BLE001
        return f"'svreg register --help' failed: {exc}"
    if r.returncode != 0:
        return "'svreg register --help' failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    missing = [f for f in ("--moving-labels", "--label-interpolation", "--no-spr") if f not in r.stdout]
    if missing:
        return f"svreg register lacks {', '.join(missing)}"
    return None


def run_one(tool: str, kind: str, data: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run (or reuse) one tool; return its record with metrics."""
    rec: dict = {"tool": tool, "kind": kind, "outdir": str(run_dir)}
    fixed, fixed_seg = data / "fixed.nii.gz", data / "fixed_seg.nii.gz"
    moving, moving_seg = data / "moving.nii.gz", data / "moving_seg.nii.gz"
    if kind == "peer":
        rec["label"] = PEER_LABEL.get(tool, tool)
        py = args.venvs / tool / "bin" / "python"
        cmd = [str(py), str(HERE / "peers" / f"run_{tool}.py"), str(fixed), str(moving), str(moving_seg),
               str(run_dir)]
        warped, disp = run_dir / "warped_seg.nii.gz", run_dir / "displacement.nii.gz"
        info_file = run_dir / "runner.json"
    else:
        variant = tool.split("_", 1)[1] if "_" in tool else "spr"
        rec["label"] = OURS_LABEL[variant]
        if variant == "native":
            moving, moving_seg = data / "moving_native.nii.gz", data / "moving_native_seg.nii.gz"
        cmd = [str(args.svreg), "register", str(fixed), str(moving), "-o", str(run_dir), "--moving-labels",
               str(moving_seg), "--label-interpolation", "nearest", "--progress", "none", "--overwrite"]
        if variant == "nospr":
            cmd.append("--no-spr")
        if variant in MODEL_REFINE:
            cmd += ["--model", args.model, "--refine", str(MODEL_REFINE[variant])]
            if variant == "model-oneway":
                cmd += ["--one-way", "--passes", "1"]
            if variant == "model-fp32":
                cmd += ["--precision", "float32"]
        if variant != "native" and not args.ours_affine:
            cmd.append("--no-affine")  # pre-aligned pair: deformable only, like the peers
        # native: the default affine stage stays enabled
        warped, disp = run_dir / "warped_labels.nii.gz", run_dir / "displacement.nii.gz"
        info_file = run_dir / "report.json"
    rec["command"] = cmd
    log_path = run_dir.parent / f"{run_dir.name}.log"
    measure_file = run_dir.parent / f"{run_dir.name}.measure.json"

    meas = json.loads(measure_file.read_text()) if args.reuse and measure_file.exists() and warped.exists() else None
    if meas is not None and meas.get("command") != cmd:
        # another command (--model, --ours-affine, other data) made that run: its numbers would carry this label
        log(f"  {tool}: not reusing {run_dir}: it was run with another command")
        meas = None
    if meas is not None:
        log(f"  {tool}: reusing {run_dir}")
    else:
        if kind == "peer" and run_dir.exists():
            for f in run_dir.iterdir():
                if f.is_file():
                    f.unlink()
        log(f"  {tool}: running ... (log {log_path})")
        meas = {**run_measured(cmd, log_path, child_env(args.threads), args.timeout), "command": cmd}
        measure_file.parent.mkdir(parents=True, exist_ok=True)
        measure_file.write_text(json.dumps(meas, indent=1) + "\n")
    rec.update(meas)
    if meas["timed_out"]:
        rec.update(status="timeout", reason=f"killed after {args.timeout:.0f} s")
        return rec
    if meas["returncode"] != 0 or not warped.exists():
        rec.update(status="failed", reason=f"exit {meas['returncode']}: {tail(log_path, 6)}")
        return rec

    info = {}
    if info_file.exists():
        try:
            info = json.loads(info_file.read_text())
        except ValueError:
            info = {}
    if kind == "peer":
        rec["version"] = info.get("version")
        rec["registration_seconds"] = info.get("registration_seconds")
        rec["settings"] = info.get("settings")
    else:
        rec["version"] = _dig(info, "versions", "svreg_core") or _dig(info, "version")
        rec["settings"] = info.get("parameters")
        rec["registration_seconds"] = (_dig(info, "timing", "registration_s")
                                       or _dig(info, "registration_seconds") or _dig(info, "timing", "total_s"))
        rec["timing"] = info.get("timing")
    try:
        rec["metrics"] = ev.evaluate_run(fixed, fixed_seg, moving_seg, warped, disp if disp.exists() else None,
                                         mask_image=data / "moving.nii.gz")
        rec["status"] = "ok"
        c = rec["metrics"].get("disp_consistency_dice")
        if c is not None and c < 0.98:
            rec["warning"] = (f"displacement.nii.gz does not reproduce the tool's warped labels "
                              f"(consistency Dice {c:.3f} < 0.98)")
    except Exception as exc:  # noqa: BLE001 - one bad run must not stop the benchmark
        rec.update(status="eval_failed", reason=f"{type(exc).__name__}: {exc}")
    return rec


def identity_baseline(data: Path) -> dict:
    """Dice/HD95 of the pre-aligned moving labels as they are (the 'affine only' row)."""
    m = ev.evaluate_run(data / "fixed.nii.gz", data / "fixed_seg.nii.gz", data / "moving_seg.nii.gz",
                        data / "moving_seg.nii.gz", None)
    return {"tool": "identity", "kind": "baseline", "label": "pre-aligned input (affine only)", "status": "ok",
            "metrics": m}


# ------------------------------------------------------------------------------------------------
# tables


def _fmt(v, spec: str, dash: str = "–") -> str:
    return dash if v is None else format(v, spec)


def markdown_table(res: float, records: list[dict]) -> str:
    ours = next((r for r in records if r["tool"] == "ours" and r.get("status") == "ok"), None)
    ours_t = ours.get("registration_seconds") if ours else None
    head = ("| tool | reg s | process s | peak MiB | mean Dice | Dice (linear) | HD95 mm | % det≤0 | NDV % "
            "| SDlogJ | time / ours | disp check |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [f"### {res:g} mm\n", head]
    for r in records:
        if r.get("status") != "ok":
            reason = str(r.get("reason") or "").replace("|", "/").replace("\n", " ")
            rows.append(f"| {r['label']} | {r.get('status', '?').upper()}: {reason[:160]} | | | | | | | | | | |")
            continue
        m = r["metrics"]
        t = r.get("registration_seconds")
        ratio = (t / ours_t) if (t is not None and ours_t) else None
        ratio_s = "1 (ref)" if r is ours else _fmt(ratio, ".2f")
        name = r["label"] + (f" {r['version']}" if r.get("version") else "")
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            name, _fmt(t, ".1f"), _fmt(r.get("process_seconds"), ".1f"), _fmt(r.get("peak_rss_mib"), ".0f"),
            _fmt(m.get("mean_dice"), ".4f"), _fmt(m.get("mean_dice_linear"), ".4f"), _fmt(m.get("mean_hd95_mm"), ".2f"),
            _fmt(m.get("pct_detj_le0"), ".4f"), _fmt(m.get("ndv_pct"), ".4f"), _fmt(m.get("sdlogj"), ".3f"), ratio_s,
            _fmt(m.get("disp_consistency_dice"), ".3f")))
    return "\n".join(rows) + "\n"


NOTES = """\
Notes: mean Dice / HD95 over the 30 evaluation labels present in both label maps, labels warped with
nearest neighbour (each tool's own label warp); `Dice (linear)`: the same labels warped one-hot trilinear +
argmax through each tool's displacement file (the TransMorph/MIR convention). SDlogJ inside the mask below.
Learned-model rows: `svreg register --model {model} [--refine N]`{model_note}. % det≤0 (central differences)
and NDV % (10 tetrahedra) inside `moving > 0` on the fixed grid (NDV also cropped by one voxel); `svreg_core.metrics`
for every tool. `reg s`: registration only, timed inside the tool's process; `process s`: the whole
child process (imports, I/O, label warp); `peak MiB`: `ru_maxrss` of the child from `os.wait4`.
`time / ours` = reg s / reg s of svreg (SPR). `disp check`: mean Dice between the tool's warped labels
and SimpleITK resampling of the moving labels through `displacement.nii.gz` (ITK convention, LPS);
> 0.98 means the displacement file is the tool's mapping. Every tool ran with {threads} threads
(OMP_NUM_THREADS / ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS = {threads}); the peers on the CPU, svreg on its default
device (`--device auto`: a CUDA GPU when there is one).
"""


def notes(threads: int, model: str) -> str:
    """The notes under the tables, with the thread count and learned model this run used."""
    shipped = " (the shipped model, trained on synthetic data only; see the README)" if model == "default" else ""
    return NOTES.format(threads=threads, model=model, model_note=shipped)


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=float, nargs="+", default=None,
                    help="isotropic resolutions in mm (default 2 1; with --quick: 4)")
    ap.add_argument("--peers", nargs="*", default=list(PEERS),
                    help=f"peers to run (default: {' '.join(PEERS)}; 'none' for none)")
    ap.add_argument("--ours", nargs="*", default=list(OURS_VARIANTS),
                    help="svreg variants: spr nospr native model model-fp32 model-oneway model-r20 model-r50 "
                         "(default all; 'none' to skip ours)")
    ap.add_argument("--ours-affine", action="store_true",
                    help="keep svreg's affine stage on the pre-aligned pair too (default: --no-affine, "
                         "deformable only like the peers; the native variant always runs it)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 mm by default, results named *_quick")
    ap.add_argument("--threads", type=int, default=2, help="threads for every tool (default 2)")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per run before it is killed")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse finished runs in .bench/runs made by the same command instead of rerunning")
    ap.add_argument("--data-source", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--bench-dir", type=Path, default=REPO / ".bench")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("--svreg", type=Path, default=REPO / ".venv" / "bin" / "svreg")
    ap.add_argument("--model", default="default",
                    help="learned model of the model variants: a shipped name or a checkpoint (default: default)")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--tag", help="suffix of the results' file names (benchmark_<date>_<tag>), so a day's runs "
                                  "do not replace each other")
    ap.add_argument("--check", action="store_true",
                    help="only check the arguments and that the data source holds the pair, then exit "
                         "(scripts/benchmark.sh runs this before it creates the peer venvs)")
    args = ap.parse_args(argv)
    args.peers = [p for p in args.peers if p != "none"]
    args.ours = [v for v in args.ours if v != "none"]
    # the children run in the repository: paths given relative to this process's folder are made absolute
    args.data_source, args.bench_dir, args.results_dir, args.svreg = (
        path.absolute() for path in (args.data_source, args.bench_dir, args.results_dir, args.svreg))
    model_shown = args.model
    if Path(args.model).exists():  # a checkpoint folder or file, not a shipped model's name: relative to the
        args.model = os.path.relpath(Path(args.model).absolute(), REPO)  # children's folder (no machine path)
    if args.resolutions is None:
        args.resolutions = [4.0] if args.quick else [2.0, 1.0]
    args.venvs = args.bench_dir / "venvs"
    for p in args.peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (known: {', '.join(PEERS)})")
    for v in args.ours:
        if v not in OURS_VARIANTS:
            ap.error(f"unknown svreg variant {v!r} (known: {', '.join(OURS_VARIANTS)})")
    if any(res <= 0 for res in args.resolutions) or args.threads < 1:
        ap.error("--resolutions must be positive millimetres and --threads at least 1")
    if not args.data_source.is_dir():
        ap.error(f"the data source {args.data_source} is not a folder (the brain pair: see benchmarks/README.md; "
                 "--data-source names another folder)")
    missing = [name for name in prep.IMAGES + prep.LABELS if not (args.data_source / name).is_file()]
    if missing:
        ap.error(f"the data source {args.data_source} lacks {', '.join(missing)} (the brain pair: see "
                 "benchmarks/README.md; --data-source names another folder)")
    if args.check:
        return 0

    # Which tools can run at all (decided once, reported clearly).
    skip: dict[str, str] = {}
    for p in args.peers:
        why = peer_status(p, args.venvs)
        if why:
            skip[p] = why
            log(f"SKIP {p}: {why}")
    ours_why = ours_status(args.svreg) if args.ours else None
    if ours_why:
        log(f"SKIP svreg: {ours_why}")
    tools = [("ours" if v == "spr" else f"ours_{v}", "ours") for v in args.ours]
    tools += [(p, "peer") for p in args.peers]

    started = _dt.datetime.now()
    results: dict = {
        "date": started.isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": args.threads,
        "quick": args.quick,
        "eval_labels": list(ev.EVAL_LABELS),
        "measurement": {"wall": "time.perf_counter around the child process",
                        "peak_memory": "ru_maxrss from os.wait4 on the child (kernel high-water RSS)",
                        "registration_seconds": "as timed inside the tool's process, excluding I/O"},
        "resolutions": {},
    }
    tables = []
    for res in args.resolutions:
        log(f"== {res:g} mm: preparing data")
        data = prep.prepare(args.data_source, args.bench_dir / "data", res, verbose=False)
        runs = args.bench_dir / "runs" / prep.res_name(res)
        records = [identity_baseline(data)]
        for tool, kind in tools:
            if kind == "peer" and tool in skip:
                records.append({"tool": tool, "kind": kind, "label": PEER_LABEL[tool], "status": "skipped",
                                "reason": skip[tool]})
                continue
            if kind == "ours" and ours_why:
                variant = tool.split("_", 1)[1] if "_" in tool else "spr"
                records.append({"tool": tool, "kind": kind, "label": OURS_LABEL[variant], "status": "skipped",
                                "reason": ours_why})
                continue
            rec = run_one(tool, kind, data, runs / tool, args)
            records.append(rec)
            if rec.get("status") == "ok":
                m = rec["metrics"]
                log(f"  {tool}: reg {_fmt(rec.get('registration_seconds'), '.1f')} s, process "
                    f"{rec['process_seconds']:.1f} s, peak {rec['peak_rss_mib']:.0f} MiB, Dice "
                    f"{m['mean_dice']:.4f}, det<=0 {_fmt(m.get('pct_detj_le0'), '.4f')} %, disp check "
                    f"{_fmt(m.get('disp_consistency_dice'), '.3f')}")
                if rec.get("warning"):
                    log(f"  {tool}: WARNING {rec['warning']}")
            else:
                log(f"  {tool}: {rec.get('status', '?').upper()} {rec.get('reason', '')}")
        results["resolutions"][prep.res_name(res)] = records
        table = markdown_table(res, records)
        tables.append(table)
        print("\n" + table, flush=True)

    md = f"# svreg benchmark {started:%Y-%m-%d %H:%M}\n\n" + "\n".join(tables) + "\n" + notes(args.threads, model_shown)
    if not args.no_write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stem = f"benchmark_{started:%Y-%m-%d}" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
        # paths relative to the repository, as in ct_known_warp's results: the file is committed
        (args.results_dir / f"{stem}.json").write_text(
            json.dumps(results, indent=1, default=str).replace(str(REPO) + "/", "") + "\n")
        (args.results_dir / f"{stem}.md").write_text(md)
        log(f"wrote {args.results_dir / stem}.json and .md")
    bad = [r for recs in results["resolutions"].values() for r in recs if r.get("status") not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
