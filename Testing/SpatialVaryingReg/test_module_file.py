"""The module file ``SpatialVaryingReg.py`` itself, imported with stand-ins for what slicer-core lacks.

Qt, CTK, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n`` only
exist inside the Slicer application. Minimal stand-ins (``conftest.py``) let the real module file load on top
of the real MRML library, so that the Python-console path (``SpatialVaryingRegLogic().register``),
the parameter-node translation and the in-Slicer self-test's own code run here. The Qt widget is not
exercised (it needs Slicer).
"""
from __future__ import annotations

import sys
import typing
import unittest
from pathlib import Path

import numpy as np
import pytest


def test_parameter_node_translates_into_engine_settings(module, scene):
    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    settings = logic.settingsFromParameterNode(p)
    assert settings.preset == "brain-mri" and settings.device == "auto"
    assert settings.overrides == {"spr": True, "affine": True, "pose_search": True}  # nothing else overrides it
    p.usePoseSearch = False
    assert logic.settingsFromParameterNode(p).overrides["pose_search"] is False
    assert logic.settingsFromParameterNode(p).preset_document()["parameters"]["pose_search"] is False
    p.usePoseSearch = True
    p.useCpu, p.alphaPrime, p.similarity, p.levelSpacings, p.iterations = True, 0.05, "mind", "4, 2", "30 20"
    p.labelsToScore = "2 3"
    settings = logic.settingsFromParameterNode(p)
    assert settings.device == "cpu" and settings.labels == [2, 3]
    assert settings.overrides["alpha_prime"] == 0.05 and settings.overrides["similarity"] == "mind"
    assert settings.overrides["level_spacings"] == [4.0, 2.0] and settings.overrides["iterations"] == [30, 20]
    p.iterations = "30"
    with pytest.raises(module.svlogic.RegistrationError, match="one number per level"):
        logic.settingsFromParameterNode(p)
    p.iterations, p.preset = "30 20", module.CUSTOM_PRESET
    with pytest.raises(module.svlogic.RegistrationError, match="preset file"):
        logic.settingsFromParameterNode(p)
    p.levelSpacings = "4 two"
    with pytest.raises(ValueError, match="not a list of numbers"):
        logic.settingsFromParameterNode(p)


def test_advanced_codes_regularise_a_plain_models_refinement(module, scene, tmp_path):
    """Advanced α′ and λ max "override the preset": written into the preset document only, they were ignored by a
    learned model's refine steps (brain-mri's own refinement codes win there); for a plain model with refine steps
    they go to the engine as the refinement's codes, whose parameters then hold them (the engine's parser)."""
    from slicer_test_helpers import add_volume

    from svreg_core.cli import build_parser, registration_parameters
    from svreg_core.optim.parameters import PRESETS

    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    p.method, p.model, p.refineSteps, p.alphaPrime = module.METHOD_LABELS["learned"], "brain-unet-spr", 20, 0.05
    settings = logic.settingsFromParameterNode(p)
    assert settings.codes == (0.05, None) and settings.overrides["alpha_prime"] == 0.05
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = add_volume(scene, np.random.default_rng(0).random((16, 16, 16)), affine, "fixed")
    moving = add_volume(scene, np.random.default_rng(1).random((16, 16, 16)), affine, "moving")
    job = module.svlogic.RegistrationJob(fixed, moving, settings=settings, scene=scene)
    job.validate()
    args = job.export_inputs(tmp_path).arguments()
    params = registration_parameters(build_parser()[0].parse_args(args[2:]))
    assert params.refine_codes == (0.05, PRESETS["brain-mri"].refine_codes[1])  # λ max: the preset's refinement's
    p.refineSteps = 0  # a plain model's prediction alone: no refinement to regularise
    assert logic.settingsFromParameterNode(p).codes == (None, None)
    p.refineSteps, p.model = 20, "brain-hyper-unet-spr"  # a hyper model's codes are its sliders'
    assert logic.settingsFromParameterNode(p).codes == (None, None)


def test_the_only_seed_is_the_tuning_samplers(module, tmp_path):
    """Registration draws no random numbers, so the panel's one seed is the tuning sampler's."""
    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    assert not hasattr(p, "seed") and p.tuningSeed == 0
    assert "seed" not in logic.settingsFromParameterNode(p).overrides
    (tmp_path / "pairs").mkdir()
    p.tuningValidationSet, p.tuningSeed = str(tmp_path / "pairs"), 11
    args = logic.tuneRequest(p, tmp_path / "study.db").arguments()
    assert args[args.index("--seed") + 1] == "11"


def test_tuning_trials_register_with_the_advanced_settings(module, tmp_path):
    """The similarity, the uniform regulariser and the pose search chosen under Advanced reach the trials (as a
    preset file next to the study; svreg tune has no flags for them), the searched α′ and λ_max do not."""
    import json

    from svreg_core.optim.parameters import load_parameters

    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    (tmp_path / "pairs").mkdir()
    p.tuningValidationSet, p.similarity, p.useSpr, p.usePoseSearch = str(tmp_path / "pairs"), "mind", False, False
    p.alphaPrime = 0.05
    args = logic.tuneRequest(p, tmp_path / "studies" / "study.db").arguments()
    preset = Path(args[args.index("--preset") + 1])
    assert preset.parent == tmp_path / "studies"
    parameters = load_parameters(preset)
    assert (parameters.similarity, parameters.spr, parameters.pose_search) == ("mind", False, False)
    assert "alpha_prime" not in json.loads(preset.read_text())["parameters"]


def test_tuning_objective_choice_sets_the_engine_objective(module, tmp_path):
    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    (tmp_path / "pairs").mkdir()
    p.tuningValidationSet = str(tmp_path / "pairs")
    assert logic.tuneRequest(p, tmp_path / "study.db").objective == "dice"
    p.tuningObjective = module.TUNING_OBJECTIVE_LABELS["tre"]
    args = logic.tuneRequest(p, tmp_path / "study.db").arguments()
    assert args[args.index("--objective") + 1] == "tre"
    assert set(module.TUNING_OBJECTIVE_LABELS) == set(module.tuning.OBJECTIVES)


def test_tuning_a_learned_model_searches_its_codes_and_apply_best_sets_them(module, tmp_path):
    import json

    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    (tmp_path / "pairs").mkdir()
    p.tuningValidationSet = str(tmp_path / "pairs")
    assert "--model" not in logic.tuneRequest(p, tmp_path / "study.db").arguments()  # pairwise: the preset
    p.method, p.model, p.refineSteps = module.METHOD_LABELS["learned"], "brain-hyper-unet-spr", 7
    args = logic.tuneRequest(p, tmp_path / "study.db").arguments()
    assert args[args.index("--model") + 1] == "brain-hyper-unet-spr" and args[args.index("--refine") + 1] == "7"
    # svreg tune refuses --iterations with --model (--refine sets them) and --level-spacings without --refine
    p.levelSpacings, p.iterations = "4 2", "80 60"
    args = logic.tuneRequest(p, tmp_path / "study.db").arguments()
    assert "--iterations" not in args and args[args.index("--level-spacings") + 1:][:2] == ["4.0", "2.0"]
    p.refineSteps = 0
    args = logic.tuneRequest(p, tmp_path / "study.db").arguments()
    assert "--iterations" not in args and "--level-spacings" not in args and "--refine" not in args
    p.levelSpacings, p.iterations, p.refineSteps = "", "", 7
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"model": "brain-hyper-unet-spr", "alpha_prime": 0.12, "lambda_max": 4.5,
                                 "refine": 7}))
    p.model, p.refineSteps = "brain-unet-spr", 3  # another model chosen while the search ran: its codes were not its
    assert "brain-hyper-unet-spr with 7 refine steps at alpha_prime 0.12" in logic.useBest(p, codes)
    assert (p.model, p.refineSteps, p.hyperAlphaPrime, p.hyperLambdaMax) == ("brain-hyper-unet-spr", 7, 0.12, 4.5)
    assert p.preset == "brain-mri"
    checkpoint = tmp_path / "runs" / "hyper"  # a checkpoint's search: the checkpoint is chosen again
    codes.write_text(json.dumps({"model": str(checkpoint), "alpha_prime": 0.2, "lambda_max": 3.0, "refine": 0}))
    p.method = module.METHOD_LABELS["pairwise"]
    logic.useBest(p, codes)
    assert (p.method, p.model, p.modelCheckpoint, p.refineSteps) == (module.METHOD_LABELS["learned"],
                                                                     module.CHECKPOINT_CHOICE, str(checkpoint), 0)
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"base": "brain-mri", "parameters": {"alpha_prime": 0.2}}))
    logic.useBest(p, preset)
    assert p.preset == module.CUSTOM_PRESET and p.customPresetFile == str(preset)


def test_parameter_node_choices_match_the_ui_choices(module):
    hints = typing.get_type_hints(module.SpatialVaryingRegParameterNode, include_extras=True)
    preset_choice = hints["preset"].__metadata__[0]
    assert preset_choice[1] == (*module.svlogic.PRESET_NAMES, module.CUSTOM_PRESET)
    assert hints["similarity"].__metadata__[0][1][0] == module.FROM_PRESET
    assert hints["method"].__metadata__[0][1] == ("Pairwise optimisation (no training)", "Learned model")
    assert set(module.METHOD_LABELS) == set(module.svlogic.METHODS)
    assert hints["tuningObjective"].__metadata__[0][1] == tuple(module.TUNING_OBJECTIVE_LABELS.values())
    assert hints["refineSteps"].__metadata__[0] == ("WithinRange", 0, 500)


def test_parameter_node_has_the_method_fields(module):
    p = module.SpatialVaryingRegParameterNode()
    assert p.method == "Pairwise optimisation (no training)"  # the default: no trained model needed
    assert p.model == "brain-unet-spr" and p.modelCheckpoint == "" and p.refineSteps == 20


def test_learned_method_settings_from_the_parameter_node(module, tmp_path):
    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    assert logic.settingsFromParameterNode(p).method == "pairwise"
    p.method, p.refineSteps = module.METHOD_LABELS["learned"], 0
    settings = logic.settingsFromParameterNode(p)
    assert (settings.method, settings.model, settings.refine_steps) == ("learned", "brain-unet-spr", 0)
    p.model, p.modelCheckpoint = module.CHECKPOINT_CHOICE, str(tmp_path / "run" / "model.json")
    settings = logic.settingsFromParameterNode(p)
    assert settings.model == str(tmp_path / "run" / "model.json")


def test_console_register_with_a_bad_checkpoint(module, scene, monkeypatch, tmp_path):
    """``logic.register(..., method="learned", model=<path>)``: a plain message, nothing started or added."""
    from slicer_test_helpers import add_volume

    monkeypatch.setattr(module.svlogic, "default_temp_root", lambda: str(tmp_path / "temp"))
    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = add_volume(scene, np.random.default_rng(0).random((16, 16, 16)), affine, "fixed")
    moving = add_volume(scene, np.random.default_rng(1).random((16, 16, 16)), affine, "moving")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    nodes_before = scene.GetNumberOfNodes()
    logic = module.SpatialVaryingRegLogic()
    with pytest.raises(module.svlogic.RegistrationError, match=r"the checkpoint folder .*run has no model.json"):
        logic.register(fixed, moving, method="learned", model=str(run / "model.safetensors"), refineSteps=20,
                       ensureDependencies=False)
    with pytest.raises(module.svlogic.RegistrationError, match="refine steps must be a whole number from 0 to 500"):
        logic.register(fixed, moving, method="learned", model=str(run), refineSteps=-1, ensureDependencies=False)
    assert scene.GetNumberOfNodes() == nodes_before and moving.GetParentTransformNode() is None
    assert not (tmp_path / "temp").exists()


def test_in_slicer_self_test_code_runs_against_real_mrml(module, scene, monkeypatch, tmp_path):
    """Runs the module's own Test class (the code run by the in-Slicer self-test) on slicer-core."""
    monkeypatch.setattr(module.svlogic, "default_temp_root", lambda: str(tmp_path))
    test = module.SpatialVaryingRegTest("test_RegisterSyntheticPair")
    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    scene.Clear(0)
    test.test_RegisterSyntheticPair()
    scene.Clear(0)
    test.test_BadInputsGivePlainMessages()
    scene.Clear(0)
    test.test_LearnedModel()  # registers with the first shipped model; says "skipped" when none is shipped
    assert list(tmp_path.iterdir()) == []


def test_in_slicer_self_test_skips_with_a_reason_without_torch(module, scene, monkeypatch, tmp_path):
    """The ctest on a build machine without torch: skipped (not failed), saying what is missing."""
    site = tmp_path / "empty-site"
    site.mkdir()
    python = tmp_path / "PythonSlicer"
    python.write_text(f'#!/bin/sh\nexport PYTHONPATH="{site}"\nexec "{sys.executable}" -S -s "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("SVREG_PYTHON", str(python))  # the interpreter the module's children use
    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    result = unittest.TestResult()
    module.SpatialVaryingRegTest("runTest").run(result)
    assert result.failures == [] and result.errors == []
    assert len(result.skipped) == 1 and "PyTorch is not installed" in result.skipped[0][1]


def test_parameter_node_codes_reach_the_learned_settings_only(module, tmp_path):
    logic = module.SpatialVaryingRegLogic()
    p = module.SpatialVaryingRegParameterNode()
    assert (p.hyperAlphaPrime, p.hyperLambdaMax) == (-1.0, -1.0)  # the model's defaults
    p.hyperLambdaMax = 5.0
    assert logic.settingsFromParameterNode(p).codes == (None, None)  # pairwise: the preset's own values
    p.method = module.METHOD_LABELS["learned"]
    assert logic.settingsFromParameterNode(p).codes == (None, 5.0)
    p.hyperAlphaPrime = 0.2
    assert logic.settingsFromParameterNode(p).codes == (0.2, 5.0)


def test_the_slider_preview_keeps_the_masks_its_affine_stage_uses(module, scene, monkeypatch, tmp_path):
    """Masks and refine steps chosen for Register, then a Regularisation slider moved: the preview (the network
    alone after the affine stage, run once) sends both masks, which restrict that stage's similarity as in Register
    (the moving mask was left out, so the preview's alignment was not Register's); without the affine stage, which
    alone uses them there, it leaves them out instead of being refused. Register itself sends them."""
    from slicer_test_helpers import HYPER, add_volume, write_model

    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    p = module.SpatialVaryingRegParameterNode()
    p.fixedVolume = add_volume(scene, np.ones((8, 8, 8), np.float32), affine, "fixed")
    p.movingVolume = add_volume(scene, np.ones((8, 8, 8), np.float32), affine, "moving")
    p.fixedMask = add_volume(scene, np.ones((8, 8, 8), np.int16), affine, "fixed mask", labelmap=True)
    p.movingMask = add_volume(scene, np.ones((8, 8, 8), np.int16), affine, "moving mask", labelmap=True)
    p.method, p.model = module.METHOD_LABELS["learned"], module.CHECKPOINT_CHOICE
    p.modelCheckpoint = str(write_model(tmp_path / "hyper", config={"hyper": HYPER}, alpha_prime=0.175, lambda_max=1.0))
    p.hyperLambdaMax = 5.0
    logic = module.SpatialVaryingRegLogic()
    for use_affine, masks in ((True, (p.fixedMask, p.movingMask)), (False, (None, None))):
        p.useAffine = use_affine
        preview = logic.createJob(p, preview=True)
        preview.validate()
        assert (preview.fixed_mask, preview.moving_mask) == masks and preview.settings.refine_steps == 0
        (tmp_path / f"preview-{use_affine}").mkdir()
        args = preview.export_inputs(tmp_path / f"preview-{use_affine}").preview_arguments()
        assert ("--fixed-mask" in args, "--moving-mask" in args) == (use_affine, use_affine)
        register = logic.createJob(p)
        register.validate()
        assert (register.fixed_mask, register.moving_mask) == (p.fixedMask, p.movingMask)
        assert register.settings.refine_steps == 20


def test_fiducial_lists_that_cannot_pair_leave_the_slider_preview_without_a_tre(module, scene, monkeypatch, tmp_path):
    """A fixed list of 4 points and a moving list of 3 (landmarks still being placed), then a Regularisation slider
    moved: Register refuses the lists (it would end without its TRE), and the preview, which validates the same
    job, failed at every slider move with "correct them, or clear the fixed list"; it runs without a TRE (the
    moving list still follows the result). Lists that pair up keep their TRE in the preview."""
    from slicer_test_helpers import HYPER, add_volume, fiducials, write_model

    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    p = module.SpatialVaryingRegParameterNode()
    p.fixedVolume = add_volume(scene, np.ones((8, 8, 8), np.float32), affine, "fixed")
    p.movingVolume = add_volume(scene, np.ones((8, 8, 8), np.float32), affine, "moving")
    points = np.array([[2.0, 2.0, 2.0], [4.0, 6.0, 8.0], [10.0, 4.0, 6.0], [6.0, 10.0, 4.0]])
    p.fixedFiducials = fiducials(scene, points, "F")
    p.movingFiducials = fiducials(scene, points[:3], "M")
    p.method, p.model = module.METHOD_LABELS["learned"], module.CHECKPOINT_CHOICE
    p.modelCheckpoint = str(write_model(tmp_path / "hyper", config={"hyper": HYPER}, alpha_prime=0.175, lambda_max=1.0))
    logic = module.SpatialVaryingRegLogic()
    with pytest.raises(module.svlogic.RegistrationError, match="the fiducial lists cannot be paired"):
        logic.createJob(p).validate()
    preview = logic.createJob(p, preview=True)
    preview.validate()
    assert preview.fixed_fiducials is None and preview.moving_fiducials is p.movingFiducials
    p.movingFiducials = fiducials(scene, points, "M4")
    preview = logic.createJob(p, preview=True)
    preview.validate()
    assert preview.fixed_fiducials is p.fixedFiducials


def test_console_register_with_codes_refused_before_anything_starts(module, scene, monkeypatch, tmp_path):
    """``logic.register(..., alphaPrime=A, lambdaMax=L)``: outside the model's ranges, on a plain model
    without refinement, or with the pairwise method: a plain message, nothing started or added."""
    from slicer_test_helpers import HYPER, add_volume, write_model

    monkeypatch.setattr(module.svlogic, "default_temp_root", lambda: str(tmp_path / "temp"))
    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = add_volume(scene, np.random.default_rng(0).random((16, 16, 16)), affine, "fixed")
    moving = add_volume(scene, np.random.default_rng(1).random((16, 16, 16)), affine, "moving")
    hyper = write_model(tmp_path / "hyper", name="hyper-tiny", config={"hyper": HYPER}, alpha_prime=0.175,
                        lambda_max=1.0)
    plain = write_model(tmp_path / "plain", alpha_prime=0.1, lambda_max=2.0)
    nodes_before = scene.GetNumberOfNodes()
    logic = module.SpatialVaryingRegLogic()
    for kwargs, message in (
            (dict(model=str(hyper), alphaPrime=0.9), r"alpha_prime 0.9 is outside the range model hyper-tiny was "
                                                     r"trained on \[0.05, 0.5\]; choose a value inside it."),
            (dict(model=str(hyper), lambdaMax=0.25), r"lambda_max 0.25 is outside the range"),
            (dict(model=str(plain), lambdaMax=3.0, refineSteps=0), "model tiny is not a hyper model"),
            (dict(method="pairwise", lambdaMax=3.0), "for pairwise registration set them in the parameters")):
        with pytest.raises(module.svlogic.RegistrationError, match=message):
            logic.register(fixed, moving, **{"method": "learned", **kwargs}, ensureDependencies=False)
    assert scene.GetNumberOfNodes() == nodes_before and moving.GetParentTransformNode() is None
    assert not (tmp_path / "temp").exists()


@pytest.mark.parametrize("name", ["tiny", "brain-hyper-unet-spr", "brain-hyper-unet-spr-low"])
def test_in_slicer_self_test_of_a_hyper_model(module, scene, monkeypatch, tmp_path, name):
    """The self-test's HyperSPR part (run in Slicer when a hyper model is shipped) with the model offered as the
    first shipped hyper model: a tiny hyper checkpoint, and each real shipped one — it must pass for a model
    whose λ is 1 at every code (brain-hyper-unet-spr) as for one whose λ follows the codes."""
    from slicer_test_helpers import tiny_hyper_checkpoint

    if name == "tiny":
        info = module.models.read_model(tiny_hyper_checkpoint(tmp_path / "models"))
    else:
        info = {m.name: m for m in module.models.shipped_models()}[name]
    monkeypatch.setattr(module.models, "shipped_models", lambda engine=None: [info])
    monkeypatch.setattr(module.svlogic, "default_temp_root", lambda: str(tmp_path / "temp"))
    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    scene.Clear(0)
    module.SpatialVaryingRegTest("test_HyperModelRegularisation").test_HyperModelRegularisation()
    assert list((tmp_path / "temp").iterdir()) == []


def _pair_with_engine_outputs(module, scene, monkeypatch, tmp_path):
    """A logic, a parameter node with an 8³ fixed and moving volume in ``scene``, and engine outputs for them."""
    from slicer_test_helpers import add_volume, write_engine_outputs

    monkeypatch.setattr(module.slicer, "mrmlScene", scene)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    outputs = write_engine_outputs(tmp_path / "output", affine, (8, 8, 8))
    p = module.SpatialVaryingRegParameterNode()
    p.fixedVolume = add_volume(scene, np.ones((8, 8, 8), np.float32), affine, "fixed")
    p.movingVolume = add_volume(scene, np.ones((8, 8, 8), np.float32), affine, "moving")
    return module.SpatialVaryingRegLogic(), p, outputs


def test_an_earlier_inverse_updated_again_loses_its_earlier_run_mark(module, scene, monkeypatch, tmp_path):
    """Register with the inverse, again without it (the inverse, kept selected under Outputs, is marked as the
    earlier run's), then with it: the marked node got the new inverse but kept "(earlier run, not updated)" in its
    name. The node a run updates is named as its run's again; a node it leaves alone keeps the mark."""
    logic, p, outputs = _pair_with_engine_outputs(module, scene, monkeypatch, tmp_path)
    names = []
    for inverse in (True, False, True):
        p.createInverseTransform = inverse
        job = logic.createJob(p)
        job.validate()
        logic.storeOutputs(p, job.load_outputs(outputs))
        names.append(p.outputInverseTransform.GetName())
    stale = module.svlogic.STALE_SUFFIX
    assert names == ["moving to fixed (SVReg 1) inverse transform",
                     "moving to fixed (SVReg 1) inverse transform" + stale,
                     "moving to fixed (SVReg 1) inverse transform"]
    assert scene.GetNodesByClass("vtkMRMLGridTransformNode").GetNumberOfItems() == 2


def test_a_result_updated_in_place_keeps_its_run_number(module, scene, monkeypatch, tmp_path):
    """A second Register (or each slider preview) into the nodes of "moving to fixed (SVReg 1)" said "(SVReg 2)",
    "(SVReg 3)"... in the status line, which named no node, and a node it added (the warped volume turned on) was
    "(SVReg 2) warped" beside "(SVReg 1) transform". The updated result keeps its number; new nodes get the next."""
    logic, p, outputs = _pair_with_engine_outputs(module, scene, monkeypatch, tmp_path)
    for warped in (False, True, True):
        p.createWarpedVolume = warped
        job = logic.createJob(p)
        job.validate()
        logic.storeOutputs(p, job.load_outputs(outputs))
        assert p.statusText.startswith("moving to fixed (SVReg 1): done in")
        assert p.outputTransform.GetName() == "moving to fixed (SVReg 1) transform"
        assert p.outputTransform.GetAttribute(module.svlogic.RUN_ATTRIBUTE) == "1"
    assert p.outputWarped.GetName() == "moving to fixed (SVReg 1) warped"
    p.outputTransform = p.outputLambda = p.outputJacobian = p.outputWarped = None  # Outputs cleared: new nodes
    job = logic.createJob(p)
    job.validate()
    assert job.load_outputs(outputs).run_name == "moving to fixed (SVReg 2)"
