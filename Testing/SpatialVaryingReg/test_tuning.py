"""The tuning panel's helpers: the ``svreg tune`` child process, its summary.json, Stop/resume, Apply best."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_test_helpers import add_volume, blob_image, fiducials, process_group_alive, tiny_hyper_checkpoint

from SpatialVaryingRegLib import geometry, logic, runner, tuning

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group checks are POSIX-only here")

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -23.0
SHAPE = (24, 24, 24)
SHIFT = np.array([2.0, -1.5, 1.0])  # fixed point p shows what moving shows at p + SHIFT (mm)
POINTS = np.array([[0.0, 0.0, 0.0], [12.0, -8.0, 6.0], [-6.0, 5.0, -4.0], [5.0, 9.0, -7.0], [-9.0, -6.0, 8.0]])


@pytest.fixture
def validation_folder(scene, tmp_path):
    """One labelled pair written from scene nodes with the panel's 'Add the current pair' helper."""
    x = geometry.grid_points(SHAPE, AFFINE)
    f, m = blob_image(x + SHIFT), blob_image(x)
    nodes = [add_volume(scene, f, AFFINE, "fixed"), add_volume(scene, m, AFFINE, "moving"),
             add_volume(scene, (f > 0.5).astype(np.int16), AFFINE, "fl", labelmap=True),
             add_volume(scene, (m > 0.5).astype(np.int16), AFFINE, "ml", labelmap=True)]
    folder = tmp_path / "validation"
    target = tuning.export_pair(folder, "moving to fixed", *nodes)
    assert target.name == "moving_to_fixed"
    return folder


@pytest.fixture
def landmark_folder(scene, tmp_path):
    """One pair with corresponding fiducials and no label maps, the moving list under a parent transform."""
    import vtk

    x = geometry.grid_points(SHAPE, AFFINE)
    fixed = add_volume(scene, blob_image(x + SHIFT), AFFINE, "fixed")
    moving = add_volume(scene, blob_image(x), AFFINE, "moving")
    offset = np.array([10.0, 0.0, -5.0])
    moving_points = fiducials(scene, POINTS + SHIFT - offset, "M")  # world positions: POINTS + SHIFT
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "offset")
    matrix = vtk.vtkMatrix4x4()
    for i in range(3):
        matrix.SetElement(i, 3, offset[i])
    parent.SetMatrixTransformToParent(matrix)
    moving_points.SetAndObserveTransformNodeID(parent.GetID())
    nodes = (fixed, moving, None, None, fiducials(scene, POINTS, "F"), moving_points)
    return tmp_path / "landmarks", nodes


def fast_request(folder: Path, db: Path, n_trials: int, objective: str = "dice") -> tuning.TuneRequest:
    return tuning.TuneRequest(validation=folder, storage=db, study_name="test", n_trials=n_trials, preset="brain-mri",
                              device="cpu", seed=1, level_spacings=[8.0, 4.0], iterations=[4, 4], affine=False,
                              objective=objective)


def test_exported_pair_is_a_valid_validation_set(validation_folder):
    from svreg_core.tuning.pairs import discover_pairs, load_pair

    pairs = discover_pairs(validation_folder)
    assert [p.name for p in pairs] == ["moving_to_fixed"]
    loaded = load_pair(pairs[0])
    assert np.allclose(loaded.fixed.affine, AFFINE, atol=1e-4) and loaded.fixed_labels.data.max() == 1


def test_a_pair_named_like_one_already_there_is_added_beside_it(scene, validation_folder):
    """Subjects' volumes loaded from files of one name are named alike ("moving", "fixed"): "Add pair" for the
    second subject deleted the first one's pair (same folder name) and said "Added pair". It is added beside it; the
    pair is replaced only when asked."""
    import nibabel as nib

    from svreg_core.tuning.pairs import discover_pairs

    x = geometry.grid_points(SHAPE, AFFINE)
    f, m = blob_image(x - SHIFT), blob_image(x)
    subject2 = [add_volume(scene, f, AFFINE, "fixed"), add_volume(scene, m, AFFINE, "moving"),
                add_volume(scene, (f > 0.5).astype(np.int16), AFFINE, "fl", labelmap=True),
                add_volume(scene, (m > 0.5).astype(np.int16), AFFINE, "ml", labelmap=True)]
    first = validation_folder / "moving_to_fixed" / "fixed.nii.gz"
    subject1 = np.asarray(nib.load(first).dataobj).copy()
    assert tuning.pair_folder(validation_folder, "moving to fixed") == first.parent
    assert tuning.export_pair(validation_folder, "moving to fixed", *subject2).name == "moving_to_fixed-2"
    assert tuning.export_pair(validation_folder, "moving to fixed", *subject2).name == "moving_to_fixed-3"
    assert np.array_equal(np.asarray(nib.load(first).dataobj), subject1)
    assert [p.name for p in discover_pairs(validation_folder)] == ["moving_to_fixed", "moving_to_fixed-2",
                                                                   "moving_to_fixed-3"]
    replaced = tuning.export_pair(validation_folder, "moving to fixed", *subject2, replace=True)
    assert replaced == first.parent and not np.array_equal(np.asarray(nib.load(first).dataobj), subject1)
    assert len(discover_pairs(validation_folder)) == 3


def test_exported_fiducials_are_a_landmark_validation_set(landmark_folder):
    """Fiducial lists go out as RAS mm CSVs in world coordinates (parent transforms applied) that the
    engine's landmark objective reads back; label maps are then optional."""
    from svreg_core.tuning.pairs import discover_pairs, load_pair

    folder, nodes = landmark_folder
    target = tuning.export_pair(folder, "m to f", *nodes)
    assert sorted(p.name for p in target.iterdir()) == ["fixed.nii.gz", "fixed_landmarks.csv", "moving.nii.gz",
                                                        "moving_landmarks.csv"]
    (pair,) = discover_pairs(folder, needs="landmarks")
    loaded = load_pair(pair)
    assert loaded.fixed_labels is None
    np.testing.assert_allclose(loaded.fixed_landmarks, POINTS, atol=1e-9)
    np.testing.assert_allclose(loaded.moving_landmarks, POINTS + SHIFT, atol=1e-9)


def test_export_refuses_unpairable_inputs_before_writing(scene, landmark_folder):
    folder, (fixed, moving, _, _, fixed_points, moving_points) = landmark_folder
    with pytest.raises(geometry.GeometryError, match="label map .* or a fixed and a moving fiducial list"):
        tuning.export_pair(folder, "p", fixed, moving, None, None, fixed_points, None)
    moving_points.RemoveNthControlPoint(0)
    with pytest.raises(geometry.GeometryError, match="fixed list has 5 points and the moving list 4"):
        tuning.export_pair(folder, "p", fixed, moving, None, None, fixed_points, moving_points)
    assert not folder.exists()


def test_tune_command_line_matches_the_engine_parser(tmp_path):
    from svreg_core.cli import build_parser

    request = tuning.TuneRequest(validation=tmp_path / "v", storage=tmp_path / "s.db", study_name="abc", n_trials=7,
                                 preset="ct", device="cpu", seed=3, level_spacings=[4.0, 2.0], iterations=[30, 20],
                                 affine=False, max_folding=0.5, labels=[1, 2])
    args = request.arguments()
    parser, _ = build_parser()
    ns = parser.parse_args(args[2:])
    assert ns.command == "tune" and ns.validation == str(tmp_path / "v") and ns.storage == str(tmp_path / "s.db")
    assert (ns.study_name, ns.n_trials, ns.preset, ns.device, ns.seed) == ("abc", 7, "ct", "cpu", 3)
    assert ns.level_spacings == [4.0, 2.0] and ns.iterations == [30, 20] and ns.no_affine
    assert ns.max_folding == 0.5 and ns.labels == [1, 2] and ns.progress == "json"
    assert ns.report == str(tmp_path / "abc-report")  # where read_study finds summary.json
    assert ns.objective == "dice" and "--objective" not in args  # the engine's default
    search = tuning.TuneRequest(validation=tmp_path / "v", storage=tmp_path / "s.db", model="m", refine=3)
    ns = parser.parse_args(search.arguments()[2:])
    assert (ns.model, ns.refine) == ("m", 3)
    for objective in tuning.OBJECTIVES:  # every objective the panel offers is one the engine accepts
        other = tuning.TuneRequest(validation=tmp_path / "v", storage=tmp_path / "s.db", objective=objective)
        assert parser.parse_args(other.arguments()[2:]).objective == objective


def test_read_study_from_summary_json(tmp_path):
    """The panel reads what `svreg tune --report` writes, not Optuna's tables (no Optuna in Slicer)."""
    optuna = pytest.importorskip("optuna")
    from svreg_core.tuning.report import write_summary

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize")
    for i, (state, value) in enumerate([("COMPLETE", 0.71), ("COMPLETE", 0.78), ("PRUNED", 0.5), ("FAIL", None)]):
        trial = study.ask({"alpha_prime": optuna.distributions.FloatDistribution(0.001, 1.0, log=True),
                           "levels": optuna.distributions.IntDistribution(1, 4),
                           "similarity": optuna.distributions.CategoricalDistribution(["lncc", "mind"])})
        trial.set_user_attr("folding_percent", 0.01 * i)
        if state == "PRUNED":
            trial.report(value, 0)
        if state == "FAIL":
            trial.set_user_attr("error", "pair01: cannot read moving.nii.gz")
        study.tell(trial, value if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    assert study.ask().number == 4  # a trial still running
    assert tuning.read_study(db, "s") is None  # no summary yet
    write_summary(study, tuning.report_folder(db, "s"))

    snap = tuning.read_study(db, "s")
    assert snap is not None and snap.name == "s"
    assert [t.state for t in snap.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "RUNNING"]
    reference = {t.number: t for t in study.get_trials()}
    for row in snap.trials[:4]:
        assert row.params == reference[row.number].params
        assert row.folding == pytest.approx(0.01 * row.number)
    assert snap.trials[2].value == pytest.approx(0.5)  # a pruned trial shows its last reported value
    assert snap.trials[3].error == "pair01: cannot read moving.nii.gz"
    assert snap.best.number == 1 and snap.best.value == pytest.approx(0.78)
    assert snap.count("COMPLETE") == 2
    assert tuning.read_study(db, "other") is None
    assert "alpha_prime=" in tuning.format_params(snap.best.params)


def test_tuning_runs_in_the_background_and_applies_the_best_preset(validation_folder, tmp_path, module):
    """The panel's background study, "Apply best" as the panel runs it, and the console's blocking
    ``applyBestParameters`` (which also selects the written preset)."""
    pytest.importorskip("optuna")
    db = tmp_path / "study" / "svreg-tune.db"
    events, log = [], []
    proc = tuning.start_tuning(fast_request(validation_folder, db, n_trials=2), on_event=events.append,
                               on_log=log.append)
    result = proc.wait(timeout=240)
    assert result.succeeded, (result.message, log[-10:])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["end", "report"] and kinds.count("trial") == 2
    last = [e for e in events if e["event"] == "trial"][-1]
    assert {"trial", "state", "value", "params", "best_value", "best_params", "elapsed_s", "folding"} <= set(last)

    snap = tuning.read_study(db, "test")
    assert snap is not None and snap.count("COMPLETE") + snap.count("PRUNED") == 2
    assert snap.best.value == pytest.approx(last["best_value"])
    assert (tuning.report_folder(db, "test") / "optimization_history.png").is_file()

    preset = tmp_path / "best.json"
    event = tuning.apply_best(db, "test", preset, timeout=120)
    assert event["event"] == "apply_best" and preset.is_file()
    doc = json.loads(preset.read_text())
    assert doc["parameters"]["alpha_prime"] == pytest.approx(snap.best.params["alpha_prime"])
    # the Register button accepts it as a 'custom file' preset
    merged = logic.RegistrationSettings(preset=str(preset), overrides={"spr": True}).preset_document()
    assert merged["parameters"]["lambda_max"] == pytest.approx(snap.best.params["lambda_max"])

    with pytest.raises(RuntimeError, match="no complete trial|not found|no study|does not exist"):
        tuning.apply_best(db, "no-such-study", tmp_path / "x.json", timeout=120)

    p = module.SpatialVaryingRegParameterNode()
    p.tuningStudyName = "test"
    written = module.SpatialVaryingRegLogic().applyBestParameters(p, db)
    assert written == module.SpatialVaryingRegLogic.bestPresetPath(db, "test")
    assert json.loads(written.read_text()) == doc
    assert p.preset == module.CUSTOM_PRESET and p.customPresetFile == str(written)


def test_landmark_objective_from_exported_fiducials(landmark_folder, tmp_path):
    """The panel's landmark objective end to end: fiducials exported from the scene, a TRE study in the
    background, its table column and best trial (the smallest error) read back."""
    pytest.importorskip("optuna")
    folder, nodes = landmark_folder
    tuning.export_pair(folder, "m to f", *nodes)
    db = tmp_path / "tre.db"
    events, log = [], []
    result = tuning.start_tuning(fast_request(folder, db, n_trials=2, objective="tre"), on_event=events.append,
                                 on_log=log.append).wait(timeout=240)
    assert result.succeeded, (result.message, log[-10:])
    snap = tuning.read_study(db, "test")
    assert snap.value_name == tuning.OBJECTIVES["tre"] == "mean TRE (mm)"
    values = [t.value for t in snap.trials if t.state == "COMPLETE"]
    assert len(values) == 2 and snap.best.value == pytest.approx(min(values))
    assert snap.best.value < 0.5 * np.linalg.norm(SHIFT)  # every point starts |SHIFT| = 2.69 mm away


def test_code_search_of_a_hyper_model_and_its_best_codes(validation_folder, tmp_path):
    """With a learned model the panel's tuning searches its codes (inference only); Apply best writes a
    codes file whose codes the panel reads back (not a preset)."""
    pytest.importorskip("optuna")
    checkpoint = tiny_hyper_checkpoint(tmp_path / "hyper")
    db = tmp_path / "codes.db"
    request = fast_request(validation_folder, db, n_trials=2)
    request.model = str(checkpoint)
    log = []
    result = tuning.start_tuning(request, on_log=log.append).wait(timeout=240)
    assert result.succeeded, (result.message, log[-10:])
    snap = tuning.read_study(db, "test")
    assert snap.count("COMPLETE") == 2 and snap.trials[0].params == {"alpha_prime": 0.175, "lambda_max": 1.0}
    path = tmp_path / "best.json"
    tuning.apply_best(db, "test", path, timeout=120)
    best = tuning.best_codes(path)
    assert (best.alpha_prime, best.lambda_max) == pytest.approx((snap.best.params["alpha_prime"],
                                                                 snap.best.params["lambda_max"]))
    assert (best.model, best.refine) == (str(checkpoint), 0)
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"base": "brain-mri", "parameters": {"alpha_prime": 0.2}}))
    assert tuning.best_codes(preset) is None  # a pairwise study's preset file


def test_stop_keeps_finished_trials_and_start_resumes(validation_folder, tmp_path):
    pytest.importorskip("optuna")
    db = tmp_path / "svreg-tune.db"
    events = []
    proc = tuning.start_tuning(fast_request(validation_folder, db, n_trials=50), on_event=events.append)
    t0 = time.monotonic()
    while not any(e["event"] == "trial" for e in events):
        assert proc.poll(), "tuning ended before it could be stopped"
        assert time.monotonic() - t0 < 180
        time.sleep(0.1)
    tuning.stop_tuning(proc)  # what the Stop button does: returns at once, the panel keeps polling
    result = proc.wait(timeout=60)
    assert result.status == runner.CANCELLED
    assert not process_group_alive(proc.process.pid)

    snap = tuning.read_study(db, "test")
    finished = snap.count("COMPLETE") + snap.count("PRUNED")
    assert finished >= 1 and snap.count("RUNNING") == 0

    resumed = tuning.start_tuning(fast_request(validation_folder, db, n_trials=finished + 1)).wait(timeout=240)
    assert resumed.succeeded, resumed.message
    again = tuning.read_study(db, "test")
    assert again.count("COMPLETE") + again.count("PRUNED") == finished + 1
