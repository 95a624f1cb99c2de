"""``svreg tune --report`` and ``--apply-best``: what a study found, as files.

Report folder contents:

* ``summary.md`` — study, trial counts per state, best trial and parameters, the table of all trials;
* ``trials.csv`` — one row per trial (state, value, parameters, folding, duration, pruning reason, error);
* ``summary.json`` — the same numbers for programs;
* ``optimization_history.png`` — value per trial (pruned: last reported running mean) and best so far;
* ``param_importances.png`` — :func:`optuna.importance.get_param_importances` (a note when it cannot be
  computed, e.g. fewer than 2 complete trials);
* ``dice_folding.png`` — the Dice / folding trade-off of every trial that has both numbers.

Figures use Matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from svreg_core.errors import InputError, OutputError
from svreg_core.optim.parameters import PRESETS, RegistrationParameters
from svreg_core.tuning.search_space import SearchSpace
from svreg_core.tuning.study import best_trial, count_trials, quiet_optuna, study_meta

FIGURES = ("optimization_history.png", "param_importances.png", "dice_folding.png")

_STATE_STYLE = {"COMPLETE": ("tab:blue", "o"), "PRUNED": ("tab:orange", "x"), "FAIL": ("tab:red", "v")}


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _trial_value(t: FrozenTrial) -> float | None:
    """Value of a COMPLETE trial, or the last reported running value of a PRUNED one."""
    if t.state == TrialState.COMPLETE:
        return _num(t.value)
    if t.state == TrialState.PRUNED:
        if t.value is not None:
            return _num(t.value)
        if t.intermediate_values:
            return _num(t.intermediate_values[max(t.intermediate_values)])
    return None


def _error(t: FrozenTrial) -> str:
    if t.state != TrialState.FAIL:
        return ""
    return str(t.user_attrs.get("error") or "worker lost (no heartbeat within the grace period)")


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one row per trial (all states), in trial-number order."""
    trials = study.get_trials(deepcopy=False)
    names: list[str] = []
    for t in trials:
        for n in t.params:
            if n not in names:
                names.append(n)
    columns = ["number", "state", "value", *names, "folding_percent", "folding_percent_max", "steps_done",
               "duration_s", "pruned_reason", "error", "note"]
    rows = []
    for t in trials:
        note = []
        if "enqueued" in t.user_attrs:
            note.append(str(t.user_attrs["enqueued"]))
        if "retry_of" in t.user_attrs:
            note.append(f"retry of trial {t.user_attrs['retry_of']}")
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "value": _trial_value(t),
            **{n: t.params.get(n) for n in names},
            "folding_percent": _num(t.user_attrs.get("folding_percent")),
            "folding_percent_max": _num(t.user_attrs.get("folding_percent_max")),
            "steps_done": t.user_attrs.get("steps_done"),
            "duration_s": None if t.duration is None else round(t.duration.total_seconds(), 3),
            "pruned_reason": t.user_attrs.get("pruned_reason", "") if t.state == TrialState.PRUNED else "",
            "error": _error(t), "note": "; ".join(note),
        }
        rows.append(row)
    return columns, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    """Write atomically (temporary file + rename); :class:`OutputError` on failure."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}).") from None


def _make_dir(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the report folder {folder} ({exc.strerror or exc}).") from None
    if not os.access(folder, os.W_OK):
        raise OutputError(f"the report folder {folder} is not writable.")
    return folder


# ------------------------------------------------------------------------------------------- figures


def _figure(width: float = 6.4, height: float = 4.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    try:
        fig.savefig(str(path), format="png")
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}).") from None


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_history(study: optuna.Study, path: Path) -> None:
    """Value of every trial by number, coloured by state, and the best value so far."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    trials = study.get_trials(deepcopy=False)
    plotted = False
    for state, (color, marker) in _STATE_STYLE.items():
        pts = [(t.number, _trial_value(t)) for t in trials if t.state.name == state and _trial_value(t) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, marker=marker,
                       label=state.lower() if state != "PRUNED" else "pruned (last running mean)")
            plotted = True
    complete = sorted((t.number, t.value) for t in trials if t.state == TrialState.COMPLETE and _num(t.value) is not None)
    if complete:
        xs, best, cur = [], [], -math.inf
        for n, v in complete:
            cur = max(cur, v)
            xs.append(n)
            best.append(cur)
        ax.step(xs, best, where="post", color="tab:green", label="best so far")
    if plotted:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel("mean Dice")
        ax.legend(loc="lower right", fontsize="small")
        ax.grid(alpha=0.3)
    else:
        _note(ax, "no finished trial yet")
    ax.set_title(f"Optimisation history — {study.study_name}")
    fig.tight_layout()
    _save(fig, path)


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """Parameter importances, or ``None`` and the reason they cannot be computed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"parameter importances need at least 2 complete trials (this study has {len(complete)})"
    try:
        with quiet_optuna():
            imp = optuna.importance.get_param_importances(study)
    except Exception as exc:  # noqa: BLE001 - e.g. all values equal, a single parameter value
        return None, f"parameter importances could not be computed: {str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}"
    if not imp:
        return None, "no parameter varied across the complete trials"
    return {k: float(v) for k, v in imp.items()}, ""


def plot_importances(study: optuna.Study, path: Path) -> dict[str, float] | None:
    imp, reason = param_importances(study)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if imp is None:
        _note(ax, reason)
    else:
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (normalised)")
        ax.grid(axis="x", alpha=0.3)
    ax.set_title("Hyperparameter importances")
    fig.tight_layout()
    _save(fig, path)
    return imp


def plot_tradeoff(study: optuna.Study, path: Path, max_folding: float | None = None) -> None:
    """Mean Dice vs mean folding percent of every trial (pruned ones: over their evaluated pairs)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    trials = study.get_trials(deepcopy=False)
    plotted = False
    for state, (color, marker) in _STATE_STYLE.items():
        pts = [(_num(t.user_attrs.get("folding_percent")), _trial_value(t)) for t in trials if t.state.name == state]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, marker=marker, label=state.lower())
            plotted = True
    best = best_trial(study)
    if best is not None and _num(best.user_attrs.get("folding_percent")) is not None:
        ax.scatter([best.user_attrs["folding_percent"]], [best.value], s=250, marker="*", c="gold",
                   edgecolors="black", zorder=5, label=f"best (trial {best.number})")
    if max_folding is not None and plotted:
        ax.axvline(max_folding, color="tab:red", linestyle="--", label=f"max folding {max_folding:g}%")
    if plotted:
        xs = [_num(t.user_attrs.get("folding_percent")) for t in trials] + [max_folding]
        top = max([x for x in xs if x is not None] + [0.0])
        top = top * 1.15 if top > 0 else 0.1
        ax.set_xlim(-0.03 * top, top)
        ax.set_xlabel("folding: voxels with |J| ≤ 0 (%)")
        ax.set_ylabel("mean Dice")
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    else:
        _note(ax, "no trial with both a Dice and a folding measurement yet")
    ax.set_title("Dice – folding trade-off")
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------------- summary


def summarize_study(study: optuna.Study, storage_label: str = "") -> dict[str, Any]:
    """Counts, best trial and definition of the study as plain JSON-able values."""
    meta = study_meta(study)
    best = best_trial(study)
    out: dict[str, Any] = {"study": study.study_name, "storage": storage_label, "counts": count_trials(study),
                           "objective": meta.get("objective"), "max_folding": meta.get("max_folding"),
                           "steps": meta.get("steps"), "best": None}
    if best is not None:
        out["best"] = {"trial": best.number, "value": best.value, "params": dict(best.params),
                       "folding_percent": _num(best.user_attrs.get("folding_percent")),
                       "folding_percent_max": _num(best.user_attrs.get("folding_percent_max")),
                       "step_values": best.user_attrs.get("step_values")}
        space = _space(study)
        if space is not None:
            out["best"]["parameters"] = preset_document(study, space, best)["parameters"]
    return out


def write_report(study: optuna.Study, folder: str | Path, storage_label: str = "") -> list[Path]:
    """Write the report files (see module docstring) into ``folder``; return their paths."""
    folder = _make_dir(Path(folder).expanduser())
    summary = summarize_study(study, storage_label)
    columns, rows = trial_rows(study)
    paths = []

    csv_path = folder / "trials.csv"
    try:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    except OSError as exc:
        raise OutputError(f"cannot write {csv_path} ({exc.strerror or exc}).") from None
    paths.append(csv_path)

    history, importance, tradeoff = (folder / n for n in FIGURES)
    plot_history(study, history)
    imp = plot_importances(study, importance)
    plot_tradeoff(study, tradeoff, summary.get("max_folding"))
    summary["importances"] = imp
    summary["importances_note"] = param_importances(study)[1] if imp is None else ""

    json_path = folder / "summary.json"
    _write_text(json_path, json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
    paths.append(json_path)

    md = [f"# Tuning report — study `{study.study_name}`", ""]
    if storage_label:
        md.append(f"Storage: `{storage_label}`  ")
    if summary["objective"]:
        md.append(f"Objective: {summary['objective']} (mean over {len(summary['steps'] or [])} validation pairs, "
                  f"maximised)  ")
    if summary["max_folding"] is not None:
        md.append(f"Constraint: folding ≤ {summary['max_folding']:g} % on every pair (violations are pruned)  ")
    counts = summary["counts"]
    md.append("Trials: " + ", ".join(f"{counts[k]} {k.lower()}" for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING",
                                                                        "WAITING") if counts.get(k)) or "none")
    md.append("")
    best = summary["best"]
    if best is None:
        md += ["## Best trial", "", "No complete trial yet.", ""]
    else:
        fold = best["folding_percent"]
        md += ["## Best trial", "", f"Trial {best['trial']}: mean Dice **{best['value']:.4f}**"
               + (f", folding {fold:.4g} %" if fold is not None else ""), ""]
        md += ["| parameter | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in best["params"].items()]
        md.append("")
        md.append("Write it as a preset: `svreg tune --storage ... --study-name ... --apply-best best.json`, "
                  "then `svreg register --preset best.json ...`.")
        md.append("")
    if imp:
        md += ["## Parameter importances", ""] + [f"- {k}: {v:.3f}" for k, v in imp.items()] + [""]
    else:
        md += ["## Parameter importances", "", summary["importances_note"] + ".", ""]
    md += ["## Figures", ""] + [f"![{n}]({n})" for n in FIGURES] + [""]
    md += ["## Trials", "", markdown_table(columns, rows)]
    md_path = folder / "summary.md"
    _write_text(md_path, "\n".join(md))
    paths.append(md_path)
    return [md_path, csv_path, json_path, history, importance, tradeoff]


# ------------------------------------------------------------------------------------------- best preset


def _space(study: optuna.Study) -> SearchSpace | None:
    meta = study_meta(study)
    if "search_space" not in meta:
        return None
    return SearchSpace.from_dict(meta["search_space"])


def best_parameters(study: optuna.Study) -> tuple[RegistrationParameters, FrozenTrial]:
    """The registration parameters of the best complete trial."""
    space = _space(study)
    if space is None:
        raise InputError(f"study {study.study_name!r} was not created by svreg tune (no search space stored).")
    best = best_trial(study)
    if best is None:
        raise InputError(f"study {study.study_name!r} has no complete trial yet; nothing to apply.")
    return space.parameters(best.params), best


def preset_document(study: optuna.Study, space: SearchSpace, best: FrozenTrial,
                    storage_label: str = "") -> dict[str, Any]:
    """``{"base": ..., "parameters": {...}, "tuning": {...}}`` for the best trial.

    ``parameters`` holds every value that differs from the base preset (the device excepted, so the
    file works on any machine) plus all searched values.
    """
    params = space.parameters(best.params)
    base = PRESETS[space.base_preset]
    searched = {"iterations" if r.name.startswith("iterations_") else r.name for r in space.ranges}
    values = json.loads(json.dumps(params.to_dict()))
    reference = json.loads(json.dumps(base.to_dict()))
    chosen = {k: v for k, v in values.items() if k != "device" and (k in searched or v != reference.get(k))}
    return {"base": space.base_preset, "parameters": chosen,
            "tuning": {"study": study.study_name, "storage": storage_label, "trial": best.number,
                       "mean_dice": best.value, "folding_percent": _num(best.user_attrs.get("folding_percent")),
                       "validation_pairs": study_meta(study).get("steps")}}


def write_best_preset(study: optuna.Study, path: str | Path, storage_label: str = "") -> Path:
    """Write the best trial as a preset file that ``load_parameters(path)`` / ``--preset path`` accepts."""
    space = _space(study)
    params, best = best_parameters(study)
    assert space is not None
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"--apply-best needs a file name, {path} is a folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {path} ({exc.strerror or exc}).") from None
    doc = preset_document(study, space, best, storage_label)
    _write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path
