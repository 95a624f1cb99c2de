"""The tuned preset ``svreg tune --apply-best`` writes."""
from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import stat
from pathlib import Path

import optuna
import pytest

from svreg_core.errors import InputError, OutputError
from svreg_core.optim.parameters import PRESETS, load_parameters, preset_warning
from svreg_core.tuning.report import write_best_preset
from svreg_core.tuning.search_space import build_search_space
from svreg_core.tuning.study import (
    create_or_join,
    open_storage,
    quiet_optuna,
)

# ----------------------------------------------------------------------------------------- presets


def test_tuned_preset_keeps_the_pyramid_unless_searched(tmp_path: Path) -> None:
    """--apply-best writes only the searched parameters; fixed settings only when asked, then with a warning."""
    def best_preset(search: list[str], include_fixed: bool) -> Path:
        space = build_search_space("brain-mri", search=search,
                                   overrides={"level_spacings": (12, 6, 3), "iterations": (5, 5, 5), "affine": False})
        name = "-".join(search)
        study, _ = create_or_join(open_storage(tmp_path / "p.db"), name, {"search_space": space.to_dict()},
                                  default_params=None)
        with quiet_optuna():
            study.optimize(lambda trial: space.suggest(trial).alpha_prime, n_trials=3)
        path, _ = write_best_preset(study, tmp_path / f"{name}-{include_fixed}.json", include_fixed=include_fixed)
        return path

    default = PRESETS["brain-mri"]
    plain = best_preset(["alpha_prime", "lambda_max"], include_fixed=False)
    params = load_parameters(plain)
    assert set(json.loads(plain.read_text())["parameters"]) == {"alpha_prime", "lambda_max"}
    assert (params.level_spacings, params.iterations, params.affine) == (default.level_spacings,
                                                                         default.iterations, True)
    assert params.alpha_prime != default.alpha_prime and preset_warning(plain) is None
    settings = json.loads(plain.read_text())["tuning"]["study_settings"]  # what the study ran with
    assert settings["level_spacings"] == [12.0, 6.0, 3.0] and settings["affine"] is False

    fixed = best_preset(["alpha_prime", "lambda_max"], include_fixed=True)
    assert load_parameters(fixed).level_spacings == (12.0, 6.0, 3.0)
    warning = preset_warning(fixed)
    assert warning is not None and "\n" not in warning
    assert "preset (affine, level_spacings, iterations);" in warning

    with pytest.raises(InputError, match="searched iterations belong to the study's pyramid"):
        best_preset(["alpha_prime", "iterations"], include_fixed=False)  # 3 levels: no sense on the default 2
    searched = load_parameters(best_preset(["alpha_prime", "iterations"], include_fixed=True))
    assert searched.level_spacings == (12.0, 6.0, 3.0) and len(searched.iterations) == 3
    # written with the umask's permissions (readable by the group/others under the usual 022), not 0600
    previous = os.umask(0o022)
    try:
        shared = best_preset(["lambda_max"], include_fixed=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644


def test_tuned_preset_keeps_what_the_preset_file_changed(tmp_path: Path) -> None:
    """Tuning λ_max from a preset file with its own α′: the written preset keeps that α′ (it was dropped, and
    registering with the tuned preset then used the built-in preset's), not the tuning command's quick pyramid."""
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps({"base": "brain-mri", "parameters": {"alpha_prime": 0.05}}))
    space = build_search_space(custom, search=["lambda_max"], overrides={"level_spacings": (12, 6), "affine": False})
    study, _ = create_or_join(open_storage(tmp_path / "c.db"), "c", {"search_space": space.to_dict()},
                              default_params=None)
    with quiet_optuna():
        study.optimize(lambda trial: space.suggest(trial).lambda_max, n_trials=2)
    path, written = write_best_preset(study, tmp_path / "tuned.json")
    params = load_parameters(path)
    assert written == {"alpha_prime": 0.05, "lambda_max": pytest.approx(study.best_params["lambda_max"])}
    assert params.alpha_prime == 0.05 and params.level_spacings == PRESETS["brain-mri"].level_spacings
    assert params.affine is True


def test_a_report_lists_only_its_own_figures(tmp_path: Path) -> None:
    """A report written into a folder that holds another study's report: that study's figures are not listed
    (nor embedded) as this study's when this one cannot draw them (no complete trial)."""
    from svreg_core.tuning.report import FIGURES, write_report

    space = build_search_space("brain-mri")
    storage = open_storage(tmp_path / "r.db")
    done, _ = create_or_join(storage, "done", {"search_space": space.to_dict()}, default_params=None)
    with quiet_optuna():
        done.optimize(lambda trial: space.suggest(trial).alpha_prime, n_trials=3)
    empty, _ = create_or_join(storage, "empty", {"search_space": space.to_dict()}, default_params=None)
    folder = tmp_path / "report"
    write_report(done, folder)
    assert (folder / FIGURES[0]).is_file()
    paths = write_report(empty, folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["figures"] == [n for n in FIGURES if (folder / n).is_file()]
    assert FIGURES[0] not in summary["figures"] and not (folder / FIGURES[0]).exists()
    assert all(p.is_file() for p in paths) and FIGURES[0] not in (folder / "summary.md").read_text()


def test_the_report_importances_dependency_is_declared() -> None:
    """optuna's fANOVA (the report's parameter importances) needs scikit-learn, which optuna does not require:
    svreg-core does, or a plain ``pip install svreg-core`` fails at the report of its first study."""
    requirements = importlib.metadata.requires("svreg-core") or []
    assert any(r.split(";")[0].replace(" ", "").startswith("scikit-learn>=") for r in requirements
               if "extra ==" not in r)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with quiet_optuna():
        study.optimize(lambda t: t.suggest_float("a", 0, 1) + 0.1 * t.suggest_float("b", 0, 1), n_trials=8)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    assert set(importances) == {"a", "b"} and importances["a"] > importances["b"]


def test_a_failed_report_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    """Reports and presets are written to a hidden temporary file renamed into place; when that fails (a full
    disk) the user gets one plain error and the study folder no hidden leftover."""
    from svreg_core.tuning import report

    def full_disk(source, target) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("svreg_core.atomic.os.replace", full_disk)  # the rename into place
    with pytest.raises(OutputError, match=r"cannot write .*best\.json \(No space left on device\)"):
        report._write(tmp_path / "best.json", "{}\n")
    assert list(tmp_path.iterdir()) == []


def test_the_optimisation_history_names_the_studys_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history figure's axis said Optuna's "Objective Value" whatever the study minimised or maximised; it names
    the value (here a landmark study's mean TRE in mm) as the trade-off figure and summary.md do; summary.md counts
    failed trials as svreg tune's closing line does."""
    from svreg_core.tuning import report

    space = build_search_space("brain-mri")
    study, _ = create_or_join(open_storage(tmp_path / "h.db"), "h", {"search_space": space.to_dict(),
                                                                     "value_name": "mean TRE (mm)"},
                              default_params=None, direction="minimize")
    with quiet_optuna():
        study.optimize(lambda trial: space.suggest(trial).alpha_prime, n_trials=1)  # no importances: quick
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    labels: dict[str, str] = {}
    save = report._save_figure

    def saved(fig, path: Path) -> None:  # the real writer, noting each figure's value axis first
        labels[path.name] = fig.axes[0].get_ylabel()
        save(fig, path)

    monkeypatch.setattr(report, "_save_figure", saved)
    report.write_report(study, tmp_path / "report")
    assert labels[report.FIGURES[0]] == labels[report.FIGURES[2]] == "mean TRE (mm)"
    assert "Trials: 1 complete, 1 failed  " in (tmp_path / "report" / "summary.md").read_text()  # it read "1 fail"
