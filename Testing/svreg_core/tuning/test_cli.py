"""``svreg tune`` end to end (``svreg_core.tuning.cli``): argument errors, and real studies with the real engine,
real Optuna, real SQLite (and PostgreSQL when available)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from svreg_core.cli import main
from svreg_core.errors import InputError, OutputError
from svreg_core.optim.parameters import PRESETS, load_parameters, preset_warning
from svreg_core.tuning.cli import run_tune
from svreg_core.tuning.study import quiet_optuna

STUDY = "t"


def test_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], helpers: Any) -> None:
    with pytest.raises(InputError, match="give a validation set"):
        run_tune(helpers.parse_args())
    with pytest.raises(InputError, match="grace-period longer"):
        run_tune(helpers.parse_args(tmp_path, "--heartbeat-interval", "10", "--grace-period", "5"))
    assert main(["tune", str(tmp_path / "missing"), "--storage", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svreg: error: validation set not found")
    assert not (tmp_path / "s.db").exists()  # found before the study storage is created


@pytest.mark.parametrize(("extra", "message"), [
    (["--device", "gpu"], "unknown device 'gpu'; use auto, cpu or cuda"),
    (["--epochs-per-trial", "3"], "--epochs-per-trial and --runs-dir apply to the training objective only"),
    (["--runs-dir", "{tmp}/runs"], "--epochs-per-trial and --runs-dir apply to the training objective only"),
    (["--study-name", " "], "--study-name must not be empty"),
    (["--search", "lambda_max", "--alpha-prime-range", "0.01", "0.1"],
     r"--alpha-prime-range sets the search range of alpha_prime, which --search leaves out \(lambda_max\)"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, not -1"),
    (["--seed", str(2**32)], "--seed must be a whole number from 0 to 4294967295, not 4294967296"),
    (["--timeout", "-5"], "--timeout must be a number of seconds above 0"),
    (["--timeout", "nan"], "--timeout must be a number of seconds above 0"),
    (["--max-folding", "inf"], "--max-folding must be a percentage"),
    (["--max-folding", "nan"], "--max-folding must be a percentage"),
    (["--lambda-max-range", "-5", "-1"], r"search range of lambda_max \[-5, -1\]: lambda_max -5 is out of range"),
    (["--alpha-prime-range", "0.01", "inf"], "search range of alpha_prime must be finite"),
    (["--apply-best", "{tmp}"], "--apply-best needs a file name"),
    (["--apply-best", "{tmp}/custom.json", "--preset", "{tmp}/custom.json"], "is the --preset file"),
    (["--report", "{tmp}/custom.json"], "--report needs a folder"),
    (["--report", "{tmp}/custom.json/report"], "--report: cannot write .*custom.json is a file, not a folder"),
    (["--apply-best", "{tmp}/custom.json/new/best.json"], "--apply-best: cannot write .*custom.json is a file"),
    (["--search", "alpha_prime", "iterations", "--apply-best", "{tmp}/best.json"],
     r"the searched iterations belong to the study's pyramid \(level_spacings \[12.0, 6.0\]\), not the preset's; "
     "add --include-fixed-settings"),
])
def test_bad_settings_are_refused_before_any_trial(demo_pairs: Path, tmp_path: Path, helpers: Any,
                                                  extra: list[str], message: str) -> None:
    """Refused before the study storage is created: an unknown --device (as CUDA on a machine without) failed five
    trials into the new study, --epochs-per-trial or --runs-dir of pairwise tuning did nothing without a word, a
    negative --timeout ran no trial and exited 0, a --seed NumPy refuses crashed with a traceback once the study was
    created, an empty --study-name made a study named '' (and a training study's runs folder '-runs'), an infinite
    --max-folding crashed the JSON report after the first trial, a NaN one disabled the limit, a negative λ_max
    range failed every trial as a lost worker, an --alpha-prime-range of an unsearched α′ was ignored without a word,
    and
    --apply-best problems (a folder; the --preset file it would overwrite; a file in the way of its folder, as of
    --report's: "cannot write ... (File exists)"; iterations searched on the study's quick pyramid without
    --include-fixed-settings) surfaced after all trials."""
    (tmp_path / "custom.json").write_text(json.dumps({"base": "brain-mri", "parameters": {"alpha_prime": 0.05}}))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    with pytest.raises((InputError, OutputError), match=message):
        run_tune(helpers.parse_args(demo_pairs, *helpers.FAST, "--storage", tmp_path / "s.db", "--n-trials", 1,
                                    "--progress", "none", *argv))
    assert not (tmp_path / "s.db").exists()


def test_a_run_stopped_by_its_timeout_says_so(one_pair_list: Path, tmp_path: Path, helpers: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A run that --timeout stopped printed the same summary as a finished study: nothing told that the trials
    asked for were not all run."""
    assert main(["tune", str(one_pair_list), *helpers.FAST, "--storage", str(tmp_path / "s.db"), "--n-trials", "3",
                 "--timeout", "0.001", "--progress", "none"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("study svreg-tune: 1 complete, 0 pruned, 0 failed trials; best mean Dice")
    assert out[1:] == ["stopped by --timeout with 1 of 3 trials finished; run the same command to go on."]


def test_apply_best_never_replaces_what_the_command_reads(one_pair_list: Path, tmp_path: Path, helpers: Any) -> None:
    """``--apply-best study.db`` replaced the whole study with the preset's JSON (the next run: "the study storage
    ... is damaged"); the pair list or the training configuration of the command were replaced the same way."""
    db, pairs, config = tmp_path / "s.db", Path(shutil.copy(one_pair_list, tmp_path / "pairs.csv")), tmp_path / "t.yaml"
    config.write_text("epochs: 1\n")
    assert run_tune(helpers.parse_args(pairs, *helpers.FAST, "--storage", db, "--n-trials", 1,
                                       "--progress", "none")) == 0
    files = {path: path.read_bytes() for path in (db, pairs, config)}
    cases = [(["--storage", db, "--apply-best", db], "is the study storage"),
             ([pairs, *helpers.FAST, "--storage", tmp_path / "new.db", "--n-trials", 1, "--apply-best",
               tmp_path / "new.db"], "is the study storage"),  # the study this run would create
             ([pairs, *helpers.FAST, "--storage", db, "--n-trials", 1, "--apply-best", pairs],
              "is the validation pair list"),
             (["--train-config", config, "--synthetic", tmp_path, "--storage", tmp_path / "u.db", "--apply-best",
               config], "is the --train-config file")]
    for argv, message in cases:
        with pytest.raises(InputError, match=f"--apply-best .* {message}; write the tuned settings to another file"):
            run_tune(helpers.parse_args(*argv, "--progress", "none"))
        assert {path: path.read_bytes() for path in files} == files
    assert len(helpers.load(db, "svreg-tune").trials) == 1 and not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("flag, name", [("--report", "svreg-test-report"),
                                        ("--apply-best", "svreg-test/deeper/best.json")])
def test_unwritable_report_and_preset_locations_are_refused_before_any_trial(
        demo_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], helpers: Any, unwritable_folder: Path,
        flag: str, name: str) -> None:
    """A folder that accepts no new folder even for root: the report (after the first trial) and the tuned preset
    (after the last) failed only once the trials had run."""
    target = str(unwritable_folder / name)
    assert main(["tune", str(demo_pairs), *helpers.FAST, "--storage", str(tmp_path / "s.db"), "--n-trials", "1",
                 "--progress", "none", flag, target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"svreg: error: {flag}: cannot write the output file {target}")
    assert f"creating a folder in {unwritable_folder} fails" in err[0]
    assert not (tmp_path / "s.db").exists() and not Path(target).exists()


def test_an_mr_preset_on_ct_pairs_is_warned_about_before_any_trial(demo_pairs: Path, tmp_path: Path, helpers: Any,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The first pair read as CT (the demo pair turned into Hounsfield units) with the default brain-mri preset:
    one warning line before the trials, which still run."""
    import nibabel as nib

    pair = demo_pairs / "pair01"
    for role in ("fixed", "moving"):
        image = nib.load(str(pair / f"{role}.nii.gz"))
        data = np.asarray(image.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(data / data.max() * 1040.0 - 1000.0, image.affine), str(tmp_path / f"{role}.nii.gz"))
    (tmp_path / "pairs.csv").write_text("name,fixed,moving,fixed_labels,moving_labels\n"
                                        f"ct,fixed.nii.gz,moving.nii.gz,{pair / 'fixed_labels.nii.gz'},"
                                        f"{pair / 'moving_labels.nii.gz'}\n")
    assert main(["tune", str(tmp_path / "pairs.csv"), "--storage", str(tmp_path / "s.db"), "--n-trials", "1",
                 "--progress", "none", *helpers.FAST]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "look like CT" in ln]
    assert warned == ["svreg: warning: both images look like CT (Hounsfield units), but the brain-mri preset was "
                      "tuned on MR: --preset ct (or lung-ct for the chest), tuned on CT, gave a 32-44 % lower mean "
                      "end-point error and smoother fields on svreg's CT test cases."]


@pytest.fixture(scope="module")
def tuned(demo_pairs: Path, tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> dict[str, Any]:
    """A 4-trial study over both demo pairs, run in-process with JSON progress (captured)."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("tuned")
    db = work / "study.db"
    args = helpers.parse_args(demo_pairs, "--storage", db, "--study-name", STUDY, "--n-trials", 4, "--seed", 3,
                              "--progress", "json", *helpers.FAST)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_tune(args)
    assert code == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return {"db": db, "lines": lines, "work": work, "study": helpers.load(db, STUDY)}


def _default_objective(pairs: Path) -> float:
    """Mean Dice of the preset's parameters, computed directly with the engine (independent of tuning)."""
    from svreg_core.metrics import dice
    from svreg_core.registration import register
    from svreg_core.tuning.pairs import discover_pairs, load_pair

    params = load_parameters("brain-mri", level_spacings=(12.0, 6.0), iterations=(10, 10), affine=False,
                             device="cpu")
    means = []
    for pair in discover_pairs(pairs):
        d = load_pair(pair)
        warped = register(d.fixed, d.moving, params).warp_image(d.moving_labels, labels=True)
        scores = dice(d.fixed_labels.data, warped.data)
        means.append(np.mean(list(scores.values())))
    return float(np.mean(means))


def test_study_completes_and_best_beats_default(tuned: dict[str, Any], demo_pairs: Path) -> None:
    study = tuned["study"]
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # trial 0 is the preset itself (enqueued), so the best can never be worse than the default
    assert trials[0].params == {"alpha_prime": PRESETS["brain-mri"].alpha_prime,
                                "lambda_max": PRESETS["brain-mri"].lambda_max}
    default = _default_objective(demo_pairs)
    assert trials[0].value == pytest.approx(default, abs=1e-6)
    assert study.best_value >= default
    # other trials explored the brain ranges of METHOD.md
    for t in trials[1:]:
        assert 0.01 <= t.params["alpha_prime"] <= 0.2 and 0.5 <= t.params["lambda_max"] <= 5.0
    assert len({(t.params["alpha_prime"], t.params["lambda_max"]) for t in trials}) == 4
    # per-trial numbers: Dice per pair and folding
    for t in trials:
        assert t.user_attrs["step_labels"] == ["pair01", "pair02"]
        assert len(t.user_attrs["step_values"]) == 2
        assert t.value == pytest.approx(np.mean(t.user_attrs["step_values"]))
        assert 0.0 <= t.user_attrs["folding_percent"] <= 100.0
    assert 0.5 < study.best_value <= 1.0


def test_json_progress_lines(tuned: dict[str, Any], helpers: Any) -> None:
    lines = tuned["lines"]
    for line in lines:
        assert helpers.JSON_KEYS <= set(line), line
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end" and lines[-1]["message"] == "done"
    assert lines[0]["message"] == "0 of 4 trials already finished"
    trial_events = [e for e in lines if e["event"] == "trial"]
    assert [e["trial"] for e in trial_events] == [0, 1, 2, 3]
    assert all(e["state"] == "COMPLETE" and isinstance(e["value"], float) for e in trial_events)
    # each event carries its trial's value, settings and folding as the study stored them
    trials = tuned["study"].get_trials()
    assert [(e["value"], e["params"], e["folding"]) for e in trial_events] == [
        (t.value, t.params, t.user_attrs["folding_percent"]) for t in trials]
    assert len({e["value"] for e in trial_events}) > 1  # trials that differ
    assert [e["finished"] for e in trial_events] == [1, 2, 3, 4]
    best = [e["best_value"] for e in trial_events]
    assert best == sorted(best) and best[-1] == pytest.approx(tuned["study"].best_value)
    assert trial_events[-1]["best_params"] == tuned["study"].best_params
    elapsed = [e["elapsed_s"] for e in lines]
    assert elapsed == sorted(elapsed)
    steps = [e for e in lines if e["event"] == "step"]
    assert len(steps) == 8 and {e["step_label"] for e in steps} == {"pair01", "pair02"}


def test_report_and_apply_best(tuned: dict[str, Any], helpers: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out, preset = tuned["work"] / "report", tuned["work"] / "presets" / "best.json"
    args = helpers.parse_args("--storage", tuned["db"], "--study-name", STUDY, "--report", out,
                              "--apply-best", preset, "--progress", "none")
    assert run_tune(args) == 0
    for name in ("optimization_history.png", "param_importances.png", "dice_folding.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    study = tuned["study"]
    summary = (out / "summary.md").read_text()
    assert f"Trial {study.best_trial.number}: mean Dice **{study.best_value:.4f}**" in summary
    assert "- level_spacings = [12.0, 6.0] (**preset: [4.0, 2.0]**)" in summary  # what the study ran with
    rows = (out / "trials.csv").read_text().strip().splitlines()  # Optuna's trials_dataframe
    assert len(rows) == 5 and {"number", "value", "state", "params_alpha_prime"} <= set(rows[0].split(","))
    doc = json.loads((out / "summary.json").read_text())
    assert doc["best"]["number"] == study.best_trial.number and doc["counts"]["COMPLETE"] == 4
    assert set(doc["importances"]) == {"alpha_prime", "lambda_max"}
    assert doc["study_settings"]["iterations"] == [10, 10] and doc["study_settings"]["affine"] is False
    assert [t["number"] for t in doc["trials"]] == [0, 1, 2, 3] and doc["trials"][0]["enqueued"] == "base preset"

    # `svreg register --preset best.json`: the searched values, and the preset's own pyramid and iterations
    params = load_parameters(preset)
    assert params.alpha_prime == pytest.approx(study.best_params["alpha_prime"])
    assert params.lambda_max == pytest.approx(study.best_params["lambda_max"])
    default = PRESETS["brain-mri"]
    assert (params.level_spacings, params.iterations, params.affine) == (default.level_spacings, default.iterations,
                                                                         default.affine)
    assert preset_warning(preset) is None and json.loads(preset.read_text())["base"] == "brain-mri"
    # asked for: the study's fixed settings too, and registering with it warns in one line
    full = tuned["work"] / "presets" / "full.json"
    capsys.readouterr()
    assert run_tune(helpers.parse_args("--storage", tuned["db"], "--study-name", STUDY, "--apply-best", full,
                                       "--include-fixed-settings")) == 0
    best = study.best_params  # as the closing line of a study shows them (it printed a Python dict, all 17 digits)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"best trial {study.best_trial.number} written to {full}: alpha_prime={best['alpha_prime']:.4g}, "
        f"lambda_max={best['lambda_max']:.4g}, affine=False, level_spacings=[12.0, 6.0], iterations=[10, 10]")
    assert load_parameters(full).level_spacings == (12.0, 6.0) and load_parameters(full).device == default.device
    assert "(affine, level_spacings, iterations)" in (preset_warning(full) or "")


def test_same_study_with_other_settings_is_refused(tuned: dict[str, Any], demo_pairs: Path, helpers: Any) -> None:
    args = helpers.parse_args(demo_pairs, "--storage", tuned["db"], "--study-name", STUDY, "--n-trials", 5,
                              "--alpha-prime-range", "0.05", "0.1", "--progress", "none", *helpers.FAST)
    with pytest.raises(InputError, match="different search_space"):
        run_tune(args)
    assert len(tuned["study"].get_trials()) == 4
    # the same pair names on other images (fixed and moving swapped): not the study's validation data
    swapped = tuned["work"] / "swapped"
    for pair in ("pair01", "pair02"):
        (swapped / pair).mkdir(parents=True)
        for a, b in (("fixed", "moving"), ("moving", "fixed"), ("fixed_labels", "moving_labels"),
                     ("moving_labels", "fixed_labels")):
            shutil.copy(demo_pairs / pair / f"{a}.nii.gz", swapped / pair / f"{b}.nii.gz")
    args = helpers.parse_args(swapped, "--storage", tuned["db"], "--study-name", STUDY, "--n-trials", 5, "--seed", 3,
                              "--progress", "none", *helpers.FAST)
    with pytest.raises(InputError, match="different validation_data"):
        run_tune(args)
    assert len(tuned["study"].get_trials()) == 4


def test_unusable_pair_files_are_refused_before_any_trial(demo_pairs: Path, tmp_path: Path, helpers: Any) -> None:
    """A damaged file of the last pair stopped the study only after the first pairs had been registered by five
    failing trials; a landmark file a Dice study never uses is not read at all."""
    shutil.copytree(demo_pairs, tmp_path / "val")
    points = tmp_path / "val" / "pair02" / "moving_landmarks.csv"
    points.write_text("\n".join(points.read_text().splitlines()[:-1]) + "\n")  # one point fewer: unused by Dice
    (tmp_path / "val" / "pair02" / "moving_labels.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="pair 'pair02' moving_labels"):
        run_tune(helpers.parse_args(tmp_path / "val", *helpers.FAST, "--storage", tmp_path / "s.db"))
    assert not (tmp_path / "s.db").exists()
    with pytest.raises(InputError, match=r"pair 'pair02': .* same number"):
        run_tune(helpers.parse_args(tmp_path / "val", *helpers.FAST, "--objective", "tre", "--storage",
                                    tmp_path / "s.db"))
    assert not (tmp_path / "s.db").exists()
    shutil.copy(demo_pairs / "pair02" / "moving_labels.nii.gz", tmp_path / "val" / "pair02")
    assert run_tune(helpers.parse_args(tmp_path / "val", *helpers.FAST, "--storage", tmp_path / "s.db",
                                       "--n-trials", 1, "--no-default-trial", "--progress", "none")) == 0


def test_pairs_and_labels_dice_cannot_score_are_refused_before_any_trial(demo_pairs: Path, tmp_path: Path,
                                                                        helpers: Any) -> None:
    """A pair whose label maps share no label (another numbering in the moving map), or ``--labels`` none of which
    a pair's maps hold, failed every trial after registering the pair ("stopped after 5 failed trials in a row;
    last error: pair01: ValueError: no label is present in both the fixed and the warped moving labels"); a
    ``--labels`` value in no pair (a typo next to good ones) was skipped without a word."""
    import nibabel as nib

    shutil.copytree(demo_pairs, tmp_path / "val")
    db = tmp_path / "s.db"
    cases = [(["--labels", "7", "9"], r"pair 'pair01': neither label map holds any of --labels 7 9 \(fixed: 0, 1, 2; "
                                      r"moving: 0, 1, 2\), so there is nothing for Dice to score"),
             (["--labels", "2", "1", "99"], "--labels 99: no validation pair's label maps hold this label, so Dice "
                                            "would never score it")]
    for extra, message in cases:
        with pytest.raises(InputError, match=message):
            run_tune(helpers.parse_args(tmp_path / "val", *helpers.FAST, "--storage", db, "--n-trials", 1,
                                        "--progress", "none", *extra))
        assert not db.exists()
    moving = tmp_path / "val" / "pair02" / "moving_labels.nii.gz"
    image = nib.load(str(moving))
    data = np.asarray(image.dataobj, dtype=np.int16)
    nib.save(nib.Nifti1Image(np.where(data > 0, data + 10, 0).astype(np.int16), image.affine), str(moving))
    with pytest.raises(InputError, match=r"pair 'pair02': its fixed and moving label maps share no label other "
                                         r"than 0 \(fixed: 0, 1, 2; moving: 0, 11, 12\)"):
        run_tune(helpers.parse_args(tmp_path / "val", *helpers.FAST, "--storage", db, "--n-trials", 1,
                                    "--progress", "none"))
    assert not db.exists()


def _landmark_errors(pair: Path, result: Any) -> np.ndarray:
    """Distances (mm) between the fixed landmarks mapped by ``result`` and the moving ones, read with numpy."""
    fixed, moving = (np.loadtxt(pair / f"{role}_landmarks.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3))
                     for role in ("fixed", "moving"))
    return np.linalg.norm(result.transform_points(fixed) - moving, axis=1)


def test_tre_objective_is_minimised(demo_pairs: Path, tmp_path: Path, helpers: Any) -> None:
    from optuna.study import StudyDirection

    from svreg_core.image import load_image
    from svreg_core.registration import register

    db, out, preset = tmp_path / "tre.db", tmp_path / "report", tmp_path / "tre.json"
    args = helpers.parse_args(demo_pairs, "--objective", "tre", "--storage", db, "--study-name", "tre",
                              "--n-trials", 3, "--seed", 1, "--no-pruning", "--progress", "none", "--report", out,
                              "--apply-best", preset, *helpers.FAST)
    assert run_tune(args) == 0
    study = helpers.load(db, "tre")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert study.direction == StudyDirection.MINIMIZE and len(complete) == 3
    assert study.best_value == min(t.value for t in complete)
    # the base preset's trial, recomputed with the engine and numpy: mean over pairs of the mean landmark error
    params = load_parameters("brain-mri", level_spacings=(12.0, 6.0), iterations=(10, 10), affine=False, device="cpu")
    errors, before = [], []
    for pair in (demo_pairs / "pair01", demo_pairs / "pair02"):
        fixed, moving = (load_image(pair / f"{role}.nii.gz") for role in ("fixed", "moving"))
        result = register(fixed, moving, params)
        errors.append(_landmark_errors(pair, result).mean())
        before.append(np.linalg.norm(np.loadtxt(pair / "fixed_landmarks.csv", delimiter=",", skiprows=1,
                                                usecols=(1, 2, 3))
                                     - np.loadtxt(pair / "moving_landmarks.csv", delimiter=",", skiprows=1,
                                                  usecols=(1, 2, 3)), axis=1).mean())
    (base,) = [t for t in complete if t.user_attrs.get("enqueued") == "base preset"]
    assert base.value == pytest.approx(float(np.mean(errors)), rel=1e-5)
    assert base.value < 0.6 * float(np.mean(before))  # the registration moved the landmarks most of the way
    assert "Objective: pairwise-tre, mean TRE (mm) over 2 steps (pair01, pair02), minimised" in (
        out / "summary.md").read_text()
    assert json.loads(preset.read_text())["tuning"]["mean_tre_mm"] == pytest.approx(study.best_value)
    # the study cannot be joined with the Dice objective (the other direction)
    with pytest.raises(InputError, match="other objective direction"):
        run_tune(helpers.parse_args(demo_pairs, "--storage", db, "--study-name", "tre", "--n-trials", 4,
                                    "--progress", "none", *helpers.FAST))


def test_landmarks_outside_the_fixed_image_are_refused_or_warned_about(demo_pairs: Path, tmp_path: Path,
                                                                       helpers: Any,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Fixed landmarks in another frame (here 500 mm off along x) were scored as they were: the study minimised an
    error the registration cannot change. None inside the fixed image: refused before any trial; some: a warning
    (which said the field's border values continued there: beyond the fixed grid the points map by the affine)."""
    shutil.copytree(demo_pairs / "pair01", tmp_path / "val" / "p1")
    points, db = tmp_path / "val" / "p1" / "fixed_landmarks.csv", tmp_path / "s.db"
    header, *rows = points.read_text().splitlines()
    shifted = [f"{n},{float(x) + 500.0!r},{y},{z}" for n, x, y, z in (row.split(",") for row in rows)]
    points.write_text("\n".join([header, *shifted]) + "\n")
    argv = ["tune", str(tmp_path / "val"), *helpers.FAST, "--objective", "tre", "--storage", str(db), "--n-trials",
            "1", "--progress", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"svreg: error: pair 'p1': none of its {len(rows)} fixed landmarks lies in the fixed image; are "
                   "they in its space, in RAS mm (a .csv is read as RAS x, y, z; .fcsv and .mrk.json carry their own "
                   "frame)?"]
    assert not db.exists()
    points.write_text("\n".join([header, shifted[0], *rows[1:]]) + "\n")
    assert main(argv) == 0
    assert [ln for ln in capsys.readouterr().err.splitlines() if "landmarks outside" in ln] == [
        "svreg: warning: fixed landmarks outside their fixed images: 1 (in 1 of 1 pairs); the registration maps "
        "them by its affine alone there (its field is zero beyond the fixed grid), so they add nearly the same error "
        "to every trial."]


def test_tre_objective_refuses_label_choices(demo_pairs: Path, tmp_path: Path, helpers: Any) -> None:
    db = tmp_path / "tre.db"
    with pytest.raises(InputError, match="does not combine with training or --labels") as err:
        run_tune(helpers.parse_args(demo_pairs, "--objective", "tre", "--labels", 1, "--storage", db,
                                    "--progress", "none", *helpers.FAST))
    assert "\n" not in str(err.value) and not db.exists()


def test_kill_and_resume(one_pair_list: Path, tmp_path: Path, helpers: Any) -> None:
    """A worker killed in its third trial and the same command run again at once (well within the heartbeat's
    grace period): the killed trial is failed and re-run (it stayed RUNNING, the resumed study finished without
    it)."""
    db = tmp_path / "resume.db"
    argv = [one_pair_list, "--storage", db, "--study-name", "r", "--n-trials", 3, "--seed", 1, "--progress", "json",
            *helpers.FAST]
    proc = helpers.start_cli(*argv, cwd=tmp_path)
    # two trials finished and the third one has started: kill it in the middle of that trial
    helpers.kill_mid_trial(proc, db, lambda e: e["event"] == "trial_start" and e["finished"] == 2)
    assert proc.returncode == -signal.SIGKILL
    before = helpers.load(db, "r").get_trials()
    done_before = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    assert len(done_before) == 2 and before[2].state == TrialState.RUNNING

    rerun = subprocess.run(helpers.cli_command(*argv), cwd=tmp_path, env=helpers.child_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    events = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[0]["finished"] == 2
    trials = helpers.load(db, "r").get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, value in done_before.items():  # nothing finished before the kill was lost or redone
        assert trials[number].state == TrialState.COMPLETE and trials[number].value == value
    (killed,) = [t for t in trials if t.state == TrialState.FAIL]  # the interrupted trial: failed, then retried
    assert killed.number == 2
    with quiet_optuna():
        (retry,) = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 2]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert not list(tmp_path.glob("*.lock"))


def test_stopped_default_trial_runs_on_the_next_run(one_pair_list: Path, tmp_path: Path, helpers: Any) -> None:
    """Trial 0 (the preset) stopped by SIGTERM, then its re-queued copy killed (SIGKILL, no Optuna retry
    left): the third run still evaluates the preset (issue 14: the default was missing after kills)."""
    db = tmp_path / "default.db"
    argv = [one_pair_list, "--storage", db, "--study-name", "d", "--n-trials", 2, "--seed", 1, "--progress", "json",
            "--heartbeat-interval", 1, "--grace-period", 2, "--max-retry", 0, *helpers.FAST]
    for stop in (signal.SIGTERM, signal.SIGKILL):
        proc = helpers.start_cli(*argv, cwd=tmp_path)
        try:
            (event,) = [e for e in helpers.read_json_until(proc, lambda e: e["event"] == "trial_start")
                        if e["event"] == "trial_start"]
            if stop == signal.SIGKILL:
                helpers.wait_for_heartbeat(db, event["trial"])
            proc.send_signal(stop)
            proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == (143 if stop == signal.SIGTERM else -signal.SIGKILL)
        trials = helpers.load(db, "d").get_trials()
        assert event["trial"] == trials[-1].number and trials[-1].user_attrs["enqueued"] == "base preset"
    # no wait for the killed trial's heartbeat to go stale: its worker, a process of this host, no longer runs
    rerun = subprocess.run(helpers.cli_command(*argv), cwd=tmp_path, env=helpers.child_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = helpers.load(db, "d").get_trials()
    default = [t for t in trials if t.user_attrs.get("enqueued") == "base preset"]
    assert [t.state for t in default] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert default[0].user_attrs["interrupted"] is True and "error" not in default[1].user_attrs  # SIGTERM, SIGKILL
    assert default[2].params == {"alpha_prime": PRESETS["brain-mri"].alpha_prime,
                                 "lambda_max": PRESETS["brain-mri"].lambda_max}
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_a_killed_default_trial_runs_on_a_resume_straight_after(one_pair_list: Path, tmp_path: Path,
                                                                 helpers: Any) -> None:
    """The preset's trial killed (SIGKILL) and the same command run again at once, well within the heartbeat's
    grace period: the killed worker was a process of this host that no longer runs, so its trial is failed and
    the preset queued again (it stayed RUNNING, and the resumed study finished without it)."""
    db = tmp_path / "k.db"
    argv = [one_pair_list, "--storage", db, "--study-name", "k", "--n-trials", 2, "--seed", 0, "--progress", "json",
            *helpers.FAST]
    proc = helpers.start_cli(*argv, cwd=tmp_path)
    events = helpers.kill_mid_trial(proc, db, lambda e: e["event"] == "trial_start")
    assert events[-1]["trial"] == 0 and proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(helpers.cli_command(*argv), cwd=tmp_path, env=helpers.child_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = helpers.load(db, "k").get_trials()
    default = [t for t in trials if t.user_attrs.get("enqueued") == "base preset"]
    assert [t.state for t in default] == [TrialState.FAIL, TrialState.COMPLETE]
    assert default[0].user_attrs["worker"].endswith(f":{proc.pid}")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def _tiny_study(pairs: Path, db: Path, helpers: Any) -> None:
    """A real one-trial study in the SQLite file ``db``."""
    args = helpers.parse_args(pairs, "--storage", db, "--study-name", "s", "--n-trials", 1, "--progress", "none",
                              *helpers.FAST)
    assert run_tune(args) == 0


def test_damaged_study_file_is_a_one_line_error(one_pair_list: Path, tmp_path: Path, helpers: Any) -> None:
    """A study file with a corrupted page in the middle: --report and tuning end with one line, exit 2."""
    import sqlite3

    db = tmp_path / "study.db"
    _tiny_study(one_pair_list, db, helpers)
    with sqlite3.connect(db) as con:
        page, pages, free = (con.execute(f"PRAGMA {k}").fetchone()[0] for k in ("page_size", "page_count",
                                                                                 "freelist_count"))
    assert free == 0  # every page is in use: the corrupted one holds data
    with db.open("r+b") as f:
        f.seek(page * (pages // 2))
        f.write(np.random.default_rng(0).integers(0, 256, page, dtype=np.uint8).tobytes())
    damaged = db.read_bytes()
    for argv in (["--storage", db, "--study-name", "s", "--report", tmp_path / "report"],
                 [one_pair_list, "--storage", db, "--study-name", "s", "--n-trials", 2, *helpers.FAST]):
        proc = subprocess.run(helpers.cli_command(*argv), cwd=tmp_path, env=helpers.child_env(), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"svreg: error: the study storage {db} is damaged (")  # SQLite's words
        assert "); restore it from a backup, or give another --storage file" in proc.stderr
    assert db.read_bytes() == damaged and not (tmp_path / "report").exists()


def test_storage_broken_during_the_run_is_a_one_line_error(one_pair_list: Path, tmp_path: Path,
                                                           helpers: Any) -> None:
    """The study file cut short while trials run (Optuna's StorageInternalError): one plain line."""
    db = tmp_path / "cut.db"

    def reporter(event: Any) -> None:
        if event.event == "trial" and event.trial == 0:
            with db.open("r+b") as f:
                f.truncate(db.stat().st_size // 2)

    args = helpers.parse_args(one_pair_list, "--storage", db, "--study-name", "c", "--n-trials", 3, *helpers.FAST)
    with pytest.raises(InputError) as info:
        run_tune(args, reporter=reporter)
    message = str(info.value)
    assert message.startswith(f"the study storage sqlite:///{db} failed: database disk image is malformed; ")
    assert "\n" not in message and type(info.value.__context__).__name__ == "StorageInternalError"


def _two_workers(storage: str | Path, pairs: Path, cwd: Path, helpers: Any, study: str) -> None:
    """Two processes started together on one study: 4 finished trials in total, shared, none run twice."""
    argv = [pairs, "--storage", storage, "--study-name", study, "--n-trials", 4, "--seed", 2, *helpers.FAST]
    procs = [helpers.start_cli(*argv, "--progress", "json", cwd=cwd),
             helpers.start_cli(*argv, "--progress", "auto", cwd=cwd)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    trials = helpers.load(storage, study).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) in (4, 5)  # a trial running in the other worker when the 4th finished finishes too
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({tuple(t.params.values()) for t in finished}) == len(finished)  # no parameters tried twice
    json_out, (auto_out, auto_err) = outs[0][0], outs[1]
    mine = {e["trial"] for e in map(json.loads, json_out.splitlines()) if e["event"] == "trial"}
    assert 0 < len(mine) < len(finished)  # both workers ran trials
    assert auto_out.startswith("study ") and "best mean Dice" in auto_out  # one summary line
    assert "trial/s" not in auto_err and "\r" not in auto_err  # no progress bar in a pipe: a line per trial
    assert {int(line.split()[3]) for line in auto_err.splitlines() if line.startswith("svreg tune: trial ")} \
        == {t.number for t in finished} - mine
    assert not list(cwd.glob("*.lock"))


def test_two_workers_sqlite(one_pair_list: Path, tmp_path: Path, helpers: Any) -> None:
    _two_workers(tmp_path / "shared.db", one_pair_list, tmp_path, helpers, "w")


def _pg_bin(name: str) -> str | None:
    import glob

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture
def postgres_url(tmp_path: Path) -> Any:
    """A PostgreSQL server on 127.0.0.1 (``SVREG_TEST_POSTGRES_URL`` if set, else started here)."""
    import socket
    import tempfile

    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for the PostgreSQL test")
    env_url = os.environ.get("SVREG_TEST_POSTGRES_URL")
    if env_url:
        yield env_url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl); install the postgresql package")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser to start PostgreSQL as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="svreg-pg-"))
    if prefix:
        shutil.chown(base, "postgres")
    data, log = base / "data", base / "server.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "svreg", "--auth=trust", "--no-locale",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {detail.decode(errors='replace')[-500:]}")
    try:
        yield f"postgresql+psycopg2://svreg@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
def test_two_workers_postgres(postgres_url: str, one_pair_list: Path, tmp_path: Path, helpers: Any) -> None:
    name = f"pg{os.getpid()}_{time.time_ns()}"  # unique on a shared server (SVREG_TEST_POSTGRES_URL)
    _two_workers(postgres_url, one_pair_list, tmp_path, helpers, name)


def _copy_pairs(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_failing_trial_is_recorded_and_study_continues(demo_pairs: Path, tmp_path: Path, helpers: Any) -> None:
    """A file damaged once the study runs (the pairs were read before the first trial) fails the trial (FAIL +
    error message); once the file is repaired the study goes on."""
    pairs = _copy_pairs(demo_pairs, tmp_path / "val")
    target = pairs / "pair02" / "moving.nii.gz"
    good = target.read_bytes()
    events: list[Any] = []

    def reporter(event: Any) -> None:
        events.append(event)
        if event.event == "start":
            target.write_bytes(b"this is not a NIfTI file")
        if event.event == "trial" and event.state == "FAIL":
            target.write_bytes(good)  # the user fixes the file while the study keeps running

    db = tmp_path / "fail.db"
    args = helpers.parse_args(pairs, "--storage", db, "--study-name", "f", "--n-trials", 2, "--seed", 0,
                              *helpers.FAST)
    assert run_tune(args, reporter=reporter) == 0
    trials = helpers.load(db, "f").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    error = trials[0].user_attrs["error"]
    assert "pair02" in error and "moving" in error and "cannot read" in error
    assert len(trials[0].user_attrs["step_values"]) == 1  # pair01 ran
    failed = [e for e in events if e.event == "trial" and e.state == "FAIL"]
    assert len(failed) == 1 and failed[0].error == error


def test_repeated_failures_stop_with_a_clear_error(demo_pairs: Path, tmp_path: Path, helpers: Any) -> None:
    pairs = _copy_pairs(demo_pairs, tmp_path / "val")

    def damage(event: Any) -> None:  # once the pairs were checked: a file damaged while the study runs
        if event.event == "start":
            (pairs / "pair01" / "fixed.nii.gz").write_bytes(b"\x1f\x8b garbage")

    db = tmp_path / "bad.db"
    args = helpers.parse_args(pairs, "--storage", db, "--study-name", "b", "--n-trials", 3, "--max-failures", 2,
                              *helpers.FAST)
    with pytest.raises(InputError, match=r"2 failed trials in a row; last error: .*pair01.*fixed"):
        run_tune(args, reporter=damage)
    trials = helpers.load(db, "b").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("cannot read" in t.user_attrs["error"] for t in trials)
    # a report of a study without complete trials still works; there is nothing to apply
    out = tmp_path / "report"
    assert run_tune(helpers.parse_args("--storage", db, "--study-name", "b", "--report", out)) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["best"] is None and doc["importances"] is None and "at least 2 complete" in doc["importances_note"]
    assert doc["figures"] == ["dice_folding.png"]
    assert all((out / n).stat().st_size > 1000 for n in doc["figures"])
    assert [t["error"] for t in doc["trials"]] == [t.user_attrs["error"] for t in trials]
    assert "No complete trial yet" in (out / "summary.md").read_text()
    with pytest.raises(InputError, match="no complete trial"):
        run_tune(helpers.parse_args("--storage", db, "--study-name", "b", "--apply-best", tmp_path / "p.json"))
