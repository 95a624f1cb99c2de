"""``svreg tune --report`` and ``--apply-best``: what a study found, as files.

Report folder: ``summary.json`` (counts, best trial, the settings every trial ran with, every trial:
what programs such as the Slicer panel read instead of the database; ``--report`` while tuning also
rewrites it after every trial), ``summary.md`` (the same for people), ``trials.csv``
(:meth:`optuna.Study.trials_dataframe`), Optuna's ``optimization_history.png`` and
``param_importances.png`` (:mod:`optuna.visualization.matplotlib`) and ``dice_folding.png``.

``--apply-best`` of a pairwise study writes a preset holding the searched parameters on top of the
base preset, with the study's settings a ``--preset`` file changed (:data:`OVERRIDDEN_FOR_TUNING` — pyramid,
iterations, affine stage, device — only when asked: ``include_fixed``; all of them are listed under
``tuning.study_settings``); of a training study, the training configuration with the best values; of a code search
(:mod:`.codes`), a JSON ``{"model", "alpha_prime", "lambda_max", "refine", "command", "tuning"}``.
"""
from __future__ import annotations

import io
import json
import math
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from svreg_core.atomic import replaced_when_complete
from svreg_core.errors import InputError, OutputError, shortened
from svreg_core.optim.parameters import PRESETS
from svreg_core.training.config import TrainingConfig, save_config
from svreg_core.tuning.search_space import SearchSpace, plain
from svreg_core.tuning.study import best_trial, first_line, quiet_optuna, study_meta

FIGURES = ("optimization_history.png", "param_importances.png", "dice_folding.png")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def format_params(params: dict[str, Any]) -> str:
    """``alpha_prime=0.12, lambda_max=3.1`` (floats with 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _write(path: Path, content: str | bytes) -> None:
    """Write atomically (temporary file + rename), text as UTF-8, with the permissions the umask gives
    (not ``mkstemp``'s 0600, which hid reports and presets from the other users of a shared study)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_when_complete(path) as tmp:
            tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}).") from None


def _space(study: optuna.Study) -> SearchSpace | None:
    meta = study_meta(study)
    return SearchSpace.from_dict(meta["search_space"]) if "search_space" in meta else None


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    error = t.user_attrs.get("error") or ("worker lost (killed, or no heartbeat within the grace period)"
                                          if t.state == TrialState.FAIL else None)
    with quiet_optuna():
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
    return {"number": t.number, "state": t.state.name, "value": _num(t.value), "params": dict(t.params),
            "folding_percent": _num(t.user_attrs.get("folding_percent")),
            "duration_s": None if t.duration is None else round(t.duration.total_seconds(), 3),
            "pruned_reason": t.user_attrs.get("pruned_reason"), "error": error, "retry_of": retry_of,
            "enqueued": t.user_attrs.get("enqueued"), "run_dir": t.user_attrs.get("run_dir")}


def summarize_study(study: optuna.Study, storage_label: str = "") -> dict[str, Any]:
    """Counts, best trial, study settings and every trial as plain JSON-able values."""
    meta, space, best = study_meta(study), _space(study), best_trial(study)
    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    return {
        "study": study.study_name, "storage": storage_label, "objective": meta.get("objective"),
        "value_name": meta.get("value_name", "mean Dice"), "direction": study.direction.name.lower(),
        "steps": meta.get("steps"),
        "max_folding": meta.get("max_folding"), "model": meta.get("model"), "refine": meta.get("refine"),
        "counts": {s.name: sum(t["state"] == s.name for t in trials) for s in TrialState},
        "base_preset": None if space is None else space.base_preset,
        "searched": None if space is None else space.to_dict()["ranges"],
        "study_settings": None if space is None else space.fixed_settings(),
        "reference": None if space is None else space.reference(),
        "best": None if best is None else {**_trial_row(best), "step_values": best.user_attrs.get("step_values"),
                                           "folding_percent_max": _num(best.user_attrs.get("folding_percent_max"))},
        "trials": trials}


def write_summary(study: optuna.Study, folder: str | Path, storage_label: str = "") -> Path:
    """Write ``summary.json`` only (cheap: done after every trial while tuning)."""
    path = Path(folder).expanduser() / "summary.json"
    _write(path, json.dumps(summarize_study(study, storage_label), indent=1, allow_nan=False) + "\n")
    return path


def _importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"parameter importances need at least 2 complete trials (this study has {len(complete)})"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same value
        return None, f"parameter importances could not be computed ({first_line(exc)})"


def _save_figure(fig: Any, path: Path) -> None:
    """Save ``fig`` as a 640x420 PNG (atomically)."""
    fig.set_size_inches(6.4, 4.2)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    _write(path, png.getvalue())


def plot_tradeoff(summary: dict[str, Any], path: Path) -> None:
    """Each trial's value (mean Dice, mean TRE...) against its mean folding percent (pruned: over its evaluated
    steps)."""
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    for state, color, marker in (("COMPLETE", "tab:blue", "o"), ("PRUNED", "tab:orange", "x")):
        pts = [(t["folding_percent"], t["value"]) for t in summary["trials"]
               if t["state"] == state and t["folding_percent"] is not None and t["value"] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, c=color, marker=marker, label=state.lower())
    best, limit = summary["best"], summary["max_folding"]
    if best is not None and best["folding_percent"] is not None:
        ax.scatter([best["folding_percent"]], [best["value"]], s=250, marker="*", c="gold", edgecolors="black",
                   zorder=5, label=f"best (trial {best['number']})")
    if limit is not None:
        ax.axvline(limit, color="tab:red", linestyle="--", label=f"max folding {limit:g}%")
    ax.set(xlabel="folding: voxels with |J| ≤ 0 (%)", ylabel=summary["value_name"],
           title=f"{summary['value_name']} – folding trade-off")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    _save_figure(ax.figure, path)


def write_report(study: optuna.Study, folder: str | Path, storage_label: str = "") -> list[Path]:
    """Write the report files (see module docstring) into ``folder``; return their paths."""
    import matplotlib
    import matplotlib.pyplot as plt  # Optuna's plots draw on pyplot figures: closed right away
    from optuna.visualization import matplotlib as optuna_plots

    folder = Path(folder).expanduser()
    summary = summarize_study(study, storage_label)
    imp, note = _importances(study)
    summary.update(importances=imp, importances_note=note)
    paths = [folder / "summary.json", folder / "summary.md", folder / "trials.csv"]
    _write(paths[2], study.trials_dataframe().to_csv(index=False))
    for name in FIGURES:  # a figure this study cannot draw (yet) must not be an earlier report's
        (folder / name).unlink(missing_ok=True)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    plots: tuple[tuple[str, Callable[..., Any], dict[str, Any], Any], ...] = (
        (FIGURES[0], optuna_plots.plot_optimization_history, {"target_name": summary["value_name"]}, summary["best"]),
        (FIGURES[1], optuna_plots.plot_param_importances, {"evaluator": evaluator}, imp))
    for name, plot, kwargs, wanted in plots:
        if wanted is not None:
            with quiet_optuna(), matplotlib.rc_context():  # Optuna switches the style sheet; restored afterwards
                fig = plot(study, **kwargs).figure
                try:
                    _save_figure(fig, folder / name)
                finally:
                    plt.close(fig)
    plot_tradeoff(summary, folder / FIGURES[2])
    summary["figures"] = [n for n in FIGURES if (folder / n).is_file()]
    _write(paths[0], json.dumps(summary, indent=1, allow_nan=False) + "\n")
    _write(paths[1], _markdown(summary))
    return paths + [folder / n for n in summary["figures"]]


def _markdown(s: dict[str, Any]) -> str:
    words = {"FAIL": "failed", "WAITING": "queued"}  # as svreg tune's closing line: "1 failed", not "1 fail"
    counts = ", ".join(f"{n} {words.get(k, k.lower())}" for k, n in s["counts"].items() if n) or "none"
    md = [f"# Tuning report — study `{s['study']}`", "", f"Storage: `{s['storage']}`  ", f"Trials: {counts}  "]
    if s["objective"]:
        md.append(f"Objective: {s['objective']}, {s['value_name']} over {len(s['steps'] or [])} steps "
                  f"({shortened(s['steps'] or [], 3)}), {s['direction'][:-2]}sed  ")
    if s["model"]:
        md.append(f"Code search of model `{s['model']}`: each trial ran the network at its α′, λ_max"
                  + (f" (+ {s['refine']} refinement iterations)" if s["refine"] else "") + ", no training  ")
    if s["max_folding"] is not None:
        md.append(f"Constraint: folding ≤ {s['max_folding']:g} % on every step (violations are pruned)  ")
    best = s["best"]
    md += ["", "## Best trial", ""]
    if best is None:
        md += ["No complete trial yet.", ""]
    else:
        fold = "" if best["folding_percent"] is None else f", folding {best['folding_percent']:.4g} %"
        md += [f"Trial {best['number']}: {s['value_name']} **{best['value']:.4f}**{fold}", ""]
        md += [f"- {k} = {v:.6g}" if isinstance(v, float) else f"- {k} = {v}" for k, v in best["params"].items()]
        md += ["", "`svreg tune --storage ... --study-name ... --apply-best FILE` writes these values (" + (
                   "the model and its codes, with the `svreg register` command" if s["model"] else
                   "a preset: the fixed settings below only with `--include-fixed-settings`") + ").", ""]
    if s["study_settings"] is not None:
        ref, word = s["reference"], "preset" if s["base_preset"] else "default"
        md += [f"## Settings every trial ran with ({word} `{s['base_preset'] or 'svreg train'}`)", ""]
        md += [f"- {k} = {v}" + ("" if v == ref.get(k) else f" (**{word}: {ref.get(k)}**)")
               for k, v in s["study_settings"].items()] + [""]
    md += ["## Parameter importances", ""]
    md += [f"- {k}: {v:.3f}" for k, v in (s["importances"] or {}).items()] or [s["importances_note"] + "."]
    md += ["", "## Figures", "", *[f"![{n}]({n})" for n in s["figures"]], "", "All trials: `trials.csv`.", ""]
    return "\n".join(md)


def _value_key(study: optuna.Study, value: float) -> dict[str, float]:
    """The best value under its name in a preset's ``tuning`` record: ``mean_dice`` or ``mean_tre_mm``."""
    return {"mean_tre_mm" if str(study_meta(study).get("objective")).endswith("-tre") else "mean_dice": value}


def _best(study: optuna.Study, storage_label: str) -> tuple[SearchSpace, FrozenTrial, dict[str, Any]]:
    """The study's search space, best trial and the ``tuning`` provenance written with it."""
    space, best = _space(study), best_trial(study)
    if space is None:
        raise InputError(f"study {study.study_name!r} was not created by svreg tune (no search space stored).")
    if best is None:
        raise InputError(f"study {study.study_name!r} has no complete trial yet; nothing to apply.")
    assert best.value is not None  # a complete trial of a single-objective study
    return space, best, {"study": study.study_name, "storage": storage_label, "trial": best.number,
                         **_value_key(study, best.value),
                         "folding_percent": _num(best.user_attrs.get("folding_percent"))}


#: Fixed settings a tuning command overrides (``--level-spacings``, ``--iterations``, ``--no-affine``, ``--device``):
#: written by ``--apply-best`` only with ``--include-fixed-settings``.
OVERRIDDEN_FOR_TUNING = ("level_spacings", "iterations", "affine", "device")


def check_preset_export(space: SearchSpace, include_fixed: bool) -> None:
    """:class:`InputError` when a preset written from a pairwise study over ``space`` would need
    ``include_fixed`` (``--include-fixed-settings``): iterations searched on another pyramid than the preset's
    (checked before the first trial when ``svreg tune`` is to write the preset at the end)."""
    if space.base_preset is None or "iterations" not in space.searched_fields() or include_fixed:
        return
    spacings = space.fixed_settings()["level_spacings"]
    if tuple(spacings) != PRESETS[space.base_preset].level_spacings:
        raise InputError(f"the searched iterations belong to the study's pyramid (level_spacings {spacings}), not "
                         "the preset's; add --include-fixed-settings.")


def preset_document(study: optuna.Study, *, include_fixed: bool = False, storage_label: str = "") -> dict[str, Any]:
    """``{"base", "parameters", "tuning"}``: the best trial of a pairwise study as a preset (module docstring)."""
    space, best, tuning = _best(study, storage_label)
    assert space.base_preset is not None  # a pairwise study (write_best_preset)
    check_preset_export(space, include_fixed)
    base, searched, fixed = PRESETS[space.base_preset], space.searched_fields(), space.fixed_settings()
    values, reference = plain(space.parameters(best.params)), plain(base)
    # the study's own settings that differ from the built-in preset (from a --preset file) are written; the
    # pyramid, iterations, affine stage and device (what tuning commands override for speed) only on request
    differs = {k for k in fixed if fixed[k] != reference[k]}
    keep = searched | (differs if include_fixed else differs - set(OVERRIDDEN_FOR_TUNING))
    return {"base": space.base_preset, "parameters": {k: values[k] for k in values if k in keep},
            "tuning": {**tuning, "searched": sorted(searched), "validation_pairs": study_meta(study).get("steps"),
                       "study_settings": fixed}}


def codes_document(study: optuna.Study, storage_label: str = "") -> dict[str, Any]:
    """The best trial of a code search: the model, its codes, refinement, and the command registering with them
    (with the study's base preset: its affine stage and the refinement's pyramid and control grid; what a
    ``--preset`` file changed in it is listed under ``tuning.study_settings``)."""
    space, best, tuning = _best(study, storage_label)
    meta, values = study_meta(study), space.parameters(best.params)
    assert space.base_preset is not None  # a code search's base is a preset
    command = ["svreg", "register", "FIXED", "MOVING", "-o", "OUT", "--model", meta["model"],
               "--preset", space.base_preset, *(["--refine", str(meta["refine"])] if meta["refine"] else []),
               "--alpha-prime", f"{values.alpha_prime:.6g}", "--lambda-max", f"{values.lambda_max:.6g}"]
    return {"model": meta["model"], "alpha_prime": values.alpha_prime, "lambda_max": values.lambda_max,
            "refine": meta["refine"], "command": shlex.join(command),
            "tuning": {**tuning, "validation_pairs": meta.get("steps"), "study_settings": space.fixed_settings()}}


def write_best_preset(study: optuna.Study, path: str | Path, *, include_fixed: bool = False,
                      storage_label: str = "") -> tuple[Path, dict[str, Any]]:
    """Write the best trial as a preset file (``svreg register --preset PATH``) or, for a training study, as
    a training configuration (``svreg train --config PATH``; YAML or JSON by the suffix, the full schedule),
    or, for a code search, the model and its codes (:func:`codes_document`).

    Returns the path and the parameters written (a preset's ``parameters``; the searched training values;
    a code search's document without ``tuning``).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"--apply-best needs a file name, {path} is a folder.")
    space, best, _ = _best(study, storage_label)
    if space.base_preset is None:
        config = space.parameters(best.params)
        assert isinstance(config, TrainingConfig)  # the base of a study without a base preset
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_config(config, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc}).") from None
        return path, {k: getattr(config, k) for k in sorted(space.searched_fields())}
    codes = bool(study_meta(study).get("model"))
    doc = (codes_document(study, storage_label) if codes
           else preset_document(study, include_fixed=include_fixed, storage_label=storage_label))
    _write(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path, {k: v for k, v in doc.items() if k != "tuning"} if codes else doc["parameters"]
