"""The module on Slicer 5.12.3's own ``parameterNodeWrapper``, ``i18n`` and ``ScriptedLoadableModule``.

The pinned copies in ``../shared/third_party/slicer`` are loaded in place (skipped with a reason when
absent) on top of slicer-core's real MRML; only Qt/CTK widgets are stand-ins (``qt_standins``). Proves:
the parameter node class is accepted by the real wrapper and stored in a real scripted-module node;
every ``SlicerParameterName`` of the .ui binds through the real GUI connectors, both ways; the
widget's enable/disable logic; ``cleanup`` stops the timers; *Reload* drops the helper package.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import qt_standins
from slicer_test_helpers import add_volume, array_ijk, process_alive, process_group_alive

REPO = Path(__file__).resolve().parents[2]
MODULE_PY = REPO / "SpatialVaryingReg" / "SpatialVaryingReg.py"
UI = REPO / "SpatialVaryingReg" / "Resources" / "UI" / "SpatialVaryingReg.ui"
SLICER_PY = REPO.parent / "shared" / "third_party" / "slicer" / "Base" / "Python" / "slicer"


def _load(name: str, path: Path, monkeypatch, package: bool = False):
    spec = importlib.util.spec_from_file_location(
        name, path / "__init__.py" if package else path,
        submodule_search_locations=[str(path)] if package else None)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def real(slicer_module, scene, monkeypatch):
    """``(module, qt, ctk)``: SpatialVaryingReg.py loaded on Slicer's real Python support code."""
    if not (SLICER_PY / "parameterNodeWrapper" / "wrapper.py").is_file():
        pytest.skip(f"Slicer's pinned Python sources are not here ({SLICER_PY}); see ../shared/third_party/README.md")
    qt, ctk = qt_standins.qt_module(), qt_standins.ctk_module()
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    for name in ("qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLWidget"):
        monkeypatch.setattr(slicer_module, name, qt_standins.MRML_WIDGETS.get(name) or type(name, (qt.QWidget,), {}),
                            raising=False)
    for sub in ("i18n", "parameterNodeWrapper", "ScriptedLoadableModule"):
        for key in [k for k in sys.modules if k == f"slicer.{sub}" or k.startswith(f"slicer.{sub}.")]:
            monkeypatch.delitem(sys.modules, key)
    i18n = _load("slicer.i18n", SLICER_PY / "i18n.py", monkeypatch)
    monkeypatch.setattr(slicer_module, "i18n", i18n, raising=False)
    pnw = _load("slicer.parameterNodeWrapper", SLICER_PY / "parameterNodeWrapper", monkeypatch, package=True)
    monkeypatch.setattr(slicer_module, "parameterNodeWrapper", pnw, raising=False)
    slm = _load("slicer.ScriptedLoadableModule", SLICER_PY / "ScriptedLoadableModule.py", monkeypatch)
    monkeypatch.setattr(slicer_module, "ScriptedLoadableModule", slm, raising=False)
    monkeypatch.setattr(slicer_module, "mrmlScene", scene)
    module = _load("SpatialVaryingReg", MODULE_PY, monkeypatch)
    return module, qt, ctk


def _widget(module, ui, parameter_node):
    """The module widget without ScriptedLoadableModuleWidget.__init__ (that needs slicer.app)."""
    widget = module.SpatialVaryingRegWidget.__new__(module.SpatialVaryingRegWidget)
    module.VTKObservationMixin.__init__(widget)
    widget.ui, widget._parameterNode, widget._job = ui, parameter_node, None
    widget._preview = module.preview.PreviewScheduler(widget._startPreviewJob, widget._onPreviewFinished)
    widget._previewEngine = module.svlogic.PreviewEngine()
    widget._codesModel = None
    widget._afterEnvironment = []  # nothing waits for the PyTorch check
    return widget


def _ui_with_a_trials_table(qt, ctk):
    """``(ui, rows)``: the module's UI whose trials table records the row counts it is given in ``rows``."""
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    rows: list[int] = []
    ui.tuningTable.setRowCount = rows.append
    ui.tuningTable.setItem = ui.tuningTable.setHorizontalHeaderLabels = lambda *args: None
    qt.QTableWidgetItem = str
    return ui, rows


def _preview_widget(real, scene, tmp_path, shape: tuple[int, int, int], origin: float = 0.0):
    """``(module, widget, parameter node, log)``: the widget's own preview code on the real scheduler, ready to
    preview a tiny hyper checkpoint (CPU, no affine stage, no warped volume) on two blob volumes of ``shape``
    2 mm voxels; ``log`` collects its log lines."""
    from slicer_test_helpers import blob_image, tiny_hyper_checkpoint

    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    log: list[str] = []
    ui.logTextEdit.appendPlainText = log.append
    ui.progressBar.setFormat = ui.progressBar.setValue = lambda value: None
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, None)
    widget.logic, widget._previewTimer = logic, qt.QTimer()
    widget._timers, widget._environmentChild, widget._tuning = [widget._previewTimer], None, None
    widget._torchStatus = module.dependencies.TorchStatus("ok")
    widget.setParameterNode(p)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = origin
    x = module.geometry.grid_points(shape, affine)
    p.fixedVolume = add_volume(scene, blob_image(x + np.array([3.0, -2.0, 2.0])), affine, "fixed")
    p.movingVolume = add_volume(scene, blob_image(x), affine, "moving")
    p.method, p.model = module.METHOD_LABELS["learned"], module.CHECKPOINT_CHOICE
    p.modelCheckpoint = str(tiny_hyper_checkpoint(tmp_path))
    p.useCpu, p.useAffine, p.createWarpedVolume = True, False, False
    return module, widget, p, log


def _widget_with_unusable_settings(real, scene, monkeypatch):
    """``(module, qt, widget, logic, parameter node)``: the widget with its own state (ScriptedLoadableModuleWidget's
    ``__init__``, which needs slicer.app, skipped), two volumes chosen and level spacings typed as "4;2" (not
    numbers: the registration cannot start)."""
    module, qt, ctk = real
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "__init__", lambda self, parent=None: None)
    widget = module.SpatialVaryingRegWidget()
    widget.ui = ui = qt_standins.ui_from_file(UI, qt, ctk)
    ui.logTextEdit.appendPlainText = ui.logTextEdit.clear = lambda *text: None
    ui.progressBar.setFormat = ui.progressBar.setValue = lambda value: None
    widget.logic = logic = module.SpatialVaryingRegLogic()
    widget._environmentTimer, widget._previewTimer = qt.QTimer(), qt.QTimer()
    p = logic.getParameterNode()
    widget.setParameterNode(p)
    p.fixedVolume = add_volume(scene, np.zeros((16, 16, 16), np.float32), np.eye(4), "fixed")
    p.movingVolume = add_volume(scene, np.zeros((16, 16, 16), np.float32), np.eye(4), "moving")
    p.levelSpacings = "4;2"
    return module, qt, widget, logic, p


def test_parameter_node_is_a_real_wrapped_scripted_module_node(real, scene):
    module, _qt, _ctk = real
    p = module.SpatialVaryingRegLogic().getParameterNode()
    assert p.parameterNode.IsA("vtkMRMLScriptedModuleNode") and p.parameterNode.GetScene() is scene
    assert p.preset == "brain-mri" and p.method == module.METHOD_LABELS["pairwise"] and p.refineSteps == 20
    p.preset = "ct"
    assert p.parameterNode.GetParameter("preset") == "ct"  # saved with the scene
    with pytest.raises(ValueError):
        p.preset = "no such preset"  # the Choice validator of the real wrapper
    with pytest.raises(ValueError):
        p.refineSteps = 501


def test_every_ui_binding_connects_through_the_real_gui_connectors(real, scene):
    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    bound = {w.property("SlicerParameterName"): w for w in vars(ui).values() if w.property("SlicerParameterName")}
    p = module.SpatialVaryingRegLogic().getParameterNode()
    tag = p.connectGui(ui)  # raises when a widget cannot represent its field
    connectors = p._parameterGUIs[tag]
    assert set(connectors) == set(bound) and len(bound) >= 30

    # parameter node -> widgets
    p.preset = "lung-ct"
    assert bound["preset"].currentText == "lung-ct"
    p.refineSteps, p.useCpu, p.levelSpacings = 7, True, "4 2"
    assert (bound["refineSteps"].value, bound["useCpu"].checked, bound["levelSpacings"].text) == (7, True, "4 2")
    # widgets -> parameter node
    bound["method"].currentIndex = 1
    assert p.method == module.METHOD_LABELS["learned"]
    bound["alphaPrime"].value = 0.25
    bound["iterations"].text = "80 60"
    assert p.alphaPrime == 0.25 and p.iterations == "80 60"
    volume = add_volume(scene, np.zeros((4, 4, 4), np.float32), np.eye(4), "t1")
    bound["fixedVolume"].setCurrentNode(volume)
    assert p.fixedVolume is volume
    assert list(bound["fixedVolume"].nodeTypes) == ["vtkMRMLScalarVolumeNode"]
    assert list(bound["fixedLabels"].nodeTypes) == ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    bound["movingLabels"].setCurrentNode(segmentation)  # a segmentation as label map, through the real connector
    assert p.movingLabels is segmentation
    p.fixedLabels = add_volume(scene, np.zeros((4, 4, 4), np.int16), np.eye(4), "labels", labelmap=True)
    assert bound["fixedLabels"].currentNode() is p.fixedLabels
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    bound["fixedFiducials"].setCurrentNode(points)
    assert p.fixedFiducials is points and list(bound["outputWarpedLabels"].nodeTypes) == \
        ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
    p.disconnectGui(tag)
    bound["alphaPrime"].value = 0.5
    assert p.alphaPrime == 0.25


def test_widget_enable_disable_logic(real, scene):
    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    p = module.SpatialVaryingRegLogic().getParameterNode()
    p.connectGui(ui)
    widget = _widget(module, ui, p)
    affine = np.eye(4)
    a = add_volume(scene, np.zeros((4, 4, 4), np.float32), affine, "a")
    b = add_volume(scene, np.zeros((4, 4, 4), np.float32), affine, "b")

    widget._checkCanApply()
    assert not ui.applyButton.enabled and "two different volumes" in ui.applyButton.toolTip
    p.fixedVolume = p.movingVolume = a
    widget._checkCanApply()
    assert not ui.applyButton.enabled
    p.movingVolume = b
    widget._checkCanApply()
    assert ui.applyButton.enabled and ui.applyButton.text == "Register"
    # the learned-model controls follow the method; the checkpoint path only with "Checkpoint file…"
    assert not ui.modelComboBox.enabled and not ui.refineStepsSpinBox.enabled
    assert ui.similarityComboBox.enabled and ui.useSprCheckBox.enabled
    widget._fillModelComboBox()
    p.similarity, p.useSpr = "mse", False  # chosen for pairwise registration, then the learned method
    p.method = module.METHOD_LABELS["learned"]
    widget._checkCanApply()
    assert ui.modelComboBox.enabled and ui.refineStepsSpinBox.enabled and not ui.modelCheckpointLineEdit.enabled
    # a learned model brings its similarity and regulariser: they were chosen here and silently not used
    assert not ui.similarityComboBox.enabled and not ui.useSprCheckBox.enabled
    overrides = module.SpatialVaryingRegLogic().settingsFromParameterNode(p).overrides
    assert "similarity" not in overrides and "spr" not in overrides
    p.similarity, p.useSpr = module.FROM_PRESET, True
    # its refinement runs Refine steps per level: the pyramid's spacings alone (they needed ignored iterations too)
    p.levelSpacings, p.iterations, p.refineSteps = "4 2", "", 7
    widget._checkCanApply()
    assert ui.levelSpacingsLineEdit.enabled and not ui.iterationsLineEdit.enabled
    overrides = module.SpatialVaryingRegLogic().settingsFromParameterNode(p).overrides
    assert (overrides["level_spacings"], overrides["iterations"]) == ([4.0, 2.0], [7, 7])
    p.refineSteps = 0  # the network alone: no pyramid
    widget._checkCanApply()
    assert not ui.levelSpacingsLineEdit.enabled
    assert "level_spacings" not in module.SpatialVaryingRegLogic().settingsFromParameterNode(p).overrides
    p.levelSpacings, p.refineSteps = "", 20
    p.model = module.CHECKPOINT_CHOICE
    widget._checkCanApply()
    assert ui.modelCheckpointLineEdit.enabled and ui.modelCheckpointBrowseButton.enabled
    assert ui.modelComboBox.itemData(ui.modelComboBox.currentIndex) == module.CHECKPOINT_CHOICE
    # custom preset file only with the "custom file" preset
    assert not ui.customPresetPathLineEdit.enabled
    p.preset = module.CUSTOM_PRESET
    widget._checkCanApply()
    assert ui.customPresetPathLineEdit.enabled and ui.customPresetBrowseButton.enabled


def test_default_inputs_differ_and_outputs_are_hidden_from_the_selectors(real, scene):
    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    affine = np.eye(4)
    a = add_volume(scene, np.zeros((4, 4, 4), np.float32), affine, "a")
    b = add_volume(scene, np.zeros((4, 4, 4), np.float32), affine, "b")
    lam = add_volume(scene, np.zeros((4, 4, 4), np.float32), affine, "b to a (SVReg 1) lambda")
    lam.SetAttribute(module.svlogic.RUN_ATTRIBUTE, "1")
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    p.connectGui(ui)
    widget = _widget(module, ui, p)
    logic.selectDefaultInputs(p)
    assert (p.fixedVolume, p.movingVolume) == (a, b)
    assert ui.fixedVolumeSelector.currentNode() is a and ui.movingVolumeSelector.currentNode() is b
    widget._hideModuleOutputs()
    assert ui.fixedVolumeSelector.sortFilterProxyModel().hiddenNodeIDs == [lam.GetID()]


def test_cleanup_stops_every_timer_and_reload_drops_the_helper_package(real, monkeypatch):
    module, qt, ctk = real
    widget = _widget(module, qt_standins.ui_from_file(UI, qt, ctk), None)
    widget._timers, widget._environmentChild, widget._tuning = [], None, None
    timers = [widget._newTimer(100, lambda: None) for _ in range(4)]
    for timer in timers:
        timer.start()
    widget.cleanup()
    assert not any(t.active for t in timers)

    import SpatialVaryingRegLib.logic  # noqa: F401 - loaded, as in Slicer

    reloaded = []
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "onReload", lambda self: reloaded.append(
        [n for n in sys.modules if n.startswith("SpatialVaryingRegLib")]))
    # keep this test process's copy for the other tests
    saved = {n: m for n, m in sys.modules.items() if n.startswith("SpatialVaryingRegLib")}
    try:
        widget.onReload()
    finally:
        sys.modules.update(saved)
    assert reloaded == [[]]  # the module file is re-executed with a fresh SpatialVaryingRegLib


def test_parameter_node_outputs_are_reused_and_new_inputs_reach_the_job(real, scene, tmp_path):
    """The output nodes stored by a run are handed to the next job for an in-place update; segmentations,
    fiducial lists and the inverse option reach the job; the CPU estimate is labelled as one."""
    module, qt, ctk = real
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    a = add_volume(scene, np.zeros((64, 64, 40), np.float32), np.eye(4), "a")
    b = add_volume(scene, np.zeros((64, 64, 40), np.float32), np.eye(4), "b")
    p.fixedVolume, p.movingVolume = a, b
    p.movingLabels = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    p.fixedFiducials = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    p.movingFiducials = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
    p.createInverseTransform = True
    job = logic.createJob(p)
    assert job.reuse == module.svlogic.OutputNodes() and job.settings.create_inverse
    assert (job.moving_labels, job.fixed_fiducials, job.moving_fiducials) == \
        (p.movingLabels, p.fixedFiducials, p.movingFiducials)

    nodes = {role: scene.AddNewNodeByClass(cls, role) for role, cls in (
        ("transform", "vtkMRMLGridTransformNode"), ("inverse", "vtkMRMLGridTransformNode"),
        ("lambda_map", "vtkMRMLScalarVolumeNode"), ("jacobian", "vtkMRMLScalarVolumeNode"),
        ("warped", "vtkMRMLScalarVolumeNode"), ("warped_labels", "vtkMRMLSegmentationNode"))}
    logic.storeOutputs(p, module.svlogic.RegistrationOutputs("run", nodes["transform"], nodes["lambda_map"],
                                                             nodes["jacobian"], nodes["warped"],
                                                             nodes["warped_labels"], inverse=nodes["inverse"]))
    assert logic.createJob(p).reuse == module.svlogic.OutputNodes(**nodes)
    # a run records its pair on the transform: another moving volume gets new nodes (updating these would move
    # b, still under that transform, by c's result), the same pair updates them
    module.geometry.set_registration_references(nodes["transform"], a, b)
    assert logic.createJob(p).reuse == module.svlogic.OutputNodes(**nodes)
    p.movingVolume = add_volume(scene, np.zeros((64, 64, 40), np.float32), np.eye(4), "c")
    assert logic.createJob(p).reuse == module.svlogic.OutputNodes()

    text = logic.cpuEstimateText(p, logic.settingsFromParameterNode(p))
    assert text.startswith("about ") and "estimate" in text
    # a preset file's pyramid counts (it was estimated as brain-mri's): one 8 mm level of 10 iterations
    p.fixedVolume = add_volume(scene, np.zeros((200, 200, 200), np.uint8), np.eye(4), "large")
    settings = logic.settingsFromParameterNode(p)
    assert logic.cpuEstimateText(p, settings).startswith("about 30 s")
    preset = tmp_path / "coarse.json"
    preset.write_text(json.dumps({"base": "brain-mri", "parameters": {"level_spacings": [8], "iterations": [10]}}))
    settings.preset = str(preset)
    assert logic.cpuEstimateText(p, settings).startswith("about 10 s")


def test_regularisation_sliders_show_a_hyper_models_ranges_and_one_release_asks_for_one_preview(real, scene, tmp_path):
    """The sliders (standins, connected by the widget's own code) on the real parameter node: shown for a
    hyper model only, at its defaults on a log scale; a drag starts nothing, a release or a key press
    stores the code and asks the real scheduler for one run; another model resets the codes."""
    from slicer_test_helpers import HYPER, write_model

    module, qt, ctk = real
    preview = module.preview
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, None)
    widget.logic, widget._previewTimer = logic, qt.QTimer()
    widget._torchStatus = module.dependencies.TorchStatus("ok")
    clock, started = [0.0], []
    widget._preview = preview.PreviewScheduler(lambda codes: started.append(codes), widget._onPreviewFinished,
                                               clock=lambda: clock[0])
    widget._connectCodeSliders()
    widget.setParameterNode(p)  # binds the .ui and observes the node, as in Slicer
    hyper = write_model(tmp_path / "hyper", name="hyper-tiny", config={"hyper": HYPER}, alpha_prime=0.175,
                        lambda_max=1.0)
    fixed_lambda = write_model(tmp_path / "fixed-lambda", config={"hyper": {**HYPER, "lambda_max": [2.0, 2.0]}},
                               alpha_prime=0.1, lambda_max=2.0)
    plain = write_model(tmp_path / "plain", alpha_prime=0.1, lambda_max=2.0)
    p.fixedVolume = add_volume(scene, np.zeros((4, 4, 4), np.float32), np.eye(4), "a")
    p.movingVolume = add_volume(scene, np.zeros((4, 4, 4), np.float32), np.eye(4), "b")
    alpha, lam = ui.hyperAlphaPrimeSlider, ui.hyperLambdaMaxSlider

    widget._checkCanApply()
    assert not ui.hyperCodesWidget.visible and not ui.hyperCodesLabel.visible  # pairwise
    p.method, p.model, p.modelCheckpoint = module.METHOD_LABELS["learned"], module.CHECKPOINT_CHOICE, str(hyper)
    widget._checkCanApply()
    assert ui.hyperCodesWidget.visible and ui.hyperCodesLabel.visible and alpha.enabled and lam.enabled
    assert (alpha.minimum, alpha.maximum) == (0, preview.SLIDER_STEPS)
    assert lam.value == preview.slider_position(1.0, 0.5, 10.0) == 23
    assert (ui.hyperAlphaPrimeValueLabel.text, ui.hyperLambdaMaxValueLabel.text) == ("0.175 (default)", "1 (default)")
    assert ui.hyperLambdaMaxValueLabel.toolTip == "lambda_max from 0.5 to 10 (log scale), the model's default 1."

    lam.drag(40, 70, 100)  # dragging shows the value under the handle, nothing else
    assert ui.hyperLambdaMaxValueLabel.text == "10" and p.hyperLambdaMax == -1.0 and widget._preview.pending is None
    lam.release()
    assert p.hyperLambdaMax == 10.0 and p.parameterNode.GetParameter("hyperLambdaMax") == "10.0"  # in the scene
    assert widget._preview.pending == (-1.0, 10.0) and widget._previewTimer.active
    alpha.drag(60)
    alpha.release()  # a second release within the quiet time replaces the first request
    code = preview.slider_code(60, 0.05, 0.5)
    assert p.hyperAlphaPrime == code and widget._preview.pending == (code, 10.0)
    clock[0] += 0.1
    widget._onPreviewTimer()
    assert started == []
    clock[0] += preview.DEBOUNCE_S
    widget._onPreviewTimer()  # the start stand-in returns no job: the run is over at once
    assert started == [(code, 10.0)] and not widget._previewTimer.active
    alpha.value = 61  # a key press (the handle is not held): taken at once, debounced like a release
    assert widget._preview.pending == (preview.slider_code(61, 0.05, 0.5), 10.0)
    clock[0] += preview.DEBOUNCE_S
    widget._onPreviewTimer()
    assert len(started) == 2  # one run per release or key press

    # what the preview runs: the parameter node's job at these codes, without refinement, into its outputs
    job = logic.createJob(p, preview=True)
    assert (job.settings.refine_steps, job.settings.codes) == (0, (preview.slider_code(61, 0.05, 0.5), 10.0))
    assert logic.createJob(p).settings.refine_steps == p.refineSteps == 20
    # back at the default's position: stored as "the model's default"
    lam.drag(preview.slider_position(1.0, 0.5, 10.0))
    lam.release()
    assert p.hyperLambdaMax == -1.0 and ui.hyperLambdaMaxValueLabel.text == "1 (default)"

    # a reloaded scene keeps its codes; choosing another model resets them to that model's defaults
    widget.setParameterNode(p)
    assert p.hyperAlphaPrime == preview.slider_code(61, 0.05, 0.5) and alpha.value == 61
    p.modelCheckpoint = str(fixed_lambda)
    widget._checkCanApply()
    assert (p.hyperAlphaPrime, p.hyperLambdaMax) == (-1.0, -1.0) and widget._preview.pending is None
    assert alpha.enabled and not lam.enabled  # a code trained at one value cannot move
    p.modelCheckpoint = str(plain)
    widget._checkCanApply()
    assert not ui.hyperCodesWidget.visible
    p.method = module.METHOD_LABELS["pairwise"]
    widget._checkCanApply()
    assert not ui.hyperCodesWidget.visible


def test_a_failure_before_the_engine_starts_leaves_no_registering_status(real, scene, monkeypatch):
    """Register with unusable settings (level spacings typed as "4;2") or a volume without image data: the error
    is shown, and the status line and progress bar do not stay at "Registering..." (they did for every error but
    the engine's own refusal)."""
    import contextlib

    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    ui.logTextEdit.appendPlainText = ui.logTextEdit.clear = lambda *text: None
    ui.progressBar.setFormat = ui.progressBar.setValue = lambda value: None
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, None)
    widget.logic, widget._torchStatus = logic, module.dependencies.TorchStatus("ok")
    widget.setParameterNode(p)
    shown: list[str] = []

    @contextlib.contextmanager
    def error_display(message):  # Slicer's dialog: record what it would show
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - what tryWithErrorDisplay catches
            shown.append(f"{message} {exc}")

    monkeypatch.setattr(module.slicer.util, "tryWithErrorDisplay", error_display)
    p.fixedVolume = add_volume(scene, np.zeros((16, 16, 16), np.float32), np.eye(4), "fixed")
    p.movingVolume = add_volume(scene, np.zeros((16, 16, 16), np.float32), np.eye(4), "moving")
    p.useCpu, p.levelSpacings = True, "4;2"
    widget._startRegistration()
    assert len(shown) == 1 and "not a list of numbers" in shown[0]
    assert p.statusText == "" and not ui.progressBar.visible and widget._job is None
    p.levelSpacings, p.fixedVolume = "", scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    widget._startRegistration()
    assert len(shown) == 2 and "holds no image data" in shown[1], shown  # not a NoneType error of the estimate
    assert p.statusText == "" and not ui.progressBar.visible and widget._job is None


def test_slider_previews_run_on_one_engine_and_cleanup_kills_it(real, scene, tmp_path):
    """The widget's own preview code on the real scheduler and a real preview engine (a tiny hyper
    checkpoint): two slider moves are answered by one engine process and update the same nodes; a full
    Register stops it without blocking; cleanup kills its process tree."""
    import time

    module, widget, p, log = _preview_widget(real, scene, tmp_path, (32, 32, 32), origin=-31.0)

    def slider_move(alpha_prime: float, lambda_max: float) -> None:
        p.hyperAlphaPrime, p.hyperLambdaMax = alpha_prime, lambda_max
        widget.requestPreview()
        t0 = time.monotonic()
        while widget._previewTimer.active:
            widget._onPreviewTimer()
            assert time.monotonic() - t0 < 120
            time.sleep(0.02)

    slider_move(0.05, 0.5)
    assert p.outputLambda is not None and "Preview failed" not in p.statusText, log
    pid, lam_node = widget._previewEngine.pid, p.outputLambda
    lam_first = array_ijk(lam_node).copy()
    slider_move(0.5, 10.0)
    assert widget._previewEngine.pid == pid and p.outputLambda is lam_node
    assert not np.allclose(array_ijk(lam_node), lam_first)
    assert "at α′ 0.5, λ_max 10" in p.statusText

    widget._retirePreviewEngine()  # what Register does first: no waiting in the GUI thread
    assert widget._previewEngine.pid is None and widget._previewTimer.active
    while widget._previewTimer.active:
        widget._onPreviewTimer()
        time.sleep(0.02)
    assert not process_group_alive(pid)

    slider_move(0.2, 2.0)
    pid = widget._previewEngine.pid
    assert pid is not None and process_alive(pid)
    widget.cleanup()
    assert not process_group_alive(pid) and widget._previewEngine.pid is None


def test_a_preview_stopped_by_register_leaves_the_registering_status(real, scene, tmp_path):
    """Register pressed while a slider preview runs: Register stops the preview engine without waiting and shows
    "Registering..."; the preview ends (cancelled) after that, and its "Preview stopped" replaced the status line of
    the running registration. It is logged, and the status line is left to the registration."""
    import time

    module, widget, p, log = _preview_widget(real, scene, tmp_path, (16, 16, 16))
    p.hyperAlphaPrime, p.hyperLambdaMax = 0.05, 0.5
    widget.requestPreview()
    t0 = time.monotonic()
    while p.statusText != "Preview (network only)...":  # the preview's engine started, its job running
        widget._onPreviewTimer()
        assert time.monotonic() - t0 < 60 and widget._previewTimer.active, (p.statusText, log)
        time.sleep(0.02)
    widget._retirePreviewEngine()  # what Register does, then its status line:
    p.statusText = "Registering..."
    while widget._previewTimer.active:
        widget._onPreviewTimer()
        assert time.monotonic() - t0 < 120
        time.sleep(0.02)
    assert "Preview stopped (superseded or cancelled)." in log
    assert p.statusText == "Registering..."


def test_register_pressed_while_pytorch_is_being_checked_runs_once_the_check_has_ended(real, scene, monkeypatch,
                                                                                       tmp_path):
    """Register pressed while the PyTorch check that Install (or a slider move) started was still running did
    nothing at all: the click was dropped. It now runs once the check has ended (here: it starts and reports
    that the level spacings are not numbers); a slider preview waiting for the same check is dropped by it."""
    import contextlib
    import json
    import stat
    import sys
    import time

    module, qt, widget, logic, p = _widget_with_unusable_settings(real, scene, monkeypatch)
    shown: list[str] = []

    @contextlib.contextmanager
    def error_display(message, **kwargs):  # Slicer's dialog: record what it would show
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - what tryWithErrorDisplay catches
            shown.append(f"{message} {exc}")

    monkeypatch.setattr(module.slicer.util, "tryWithErrorDisplay", error_display)
    check = tmp_path / "PythonSlicer"  # answers the check at once: PyTorch is there
    event = {"event": "torch", "status": "ok", "torch": "2.5.1", "numpy": np.__version__, "devices": []}
    check.write_text(f"#!{sys.executable}\nprint({json.dumps(json.dumps(event))}, flush=True)\n")
    check.chmod(check.stat().st_mode | stat.S_IEXEC)

    widget._environmentChild = module.dependencies.start_torch_check(python=str(check))  # what Install started
    widget._environmentTimer.start()
    widget._withEnvironment(widget._schedulePreview)  # a slider moved: its preview waits for the check
    widget.onApplyButton()  # then Register
    deadline = time.monotonic() + 30
    while widget._environmentTimer.active:
        widget._onEnvironmentTimer()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert widget._torchStatus.ok
    assert shown == ["Registration could not start. '4;2' is not a list of numbers (e.g. '4 2')."]
    assert widget._preview.pending is None and not widget._previewTimer.active


    # Register pressed during a check, then the scene closed: the registration is not started on the next scene
    widget._torchStatus, shown[:] = None, []
    widget._environmentChild = module.dependencies.start_torch_check(python=str(check))
    widget._environmentTimer.start()
    widget.onApplyButton()
    widget.onSceneStartClose(scene, None)
    widget.setParameterNode(p)  # the next scene's parameter node (here the same settings)
    while widget._environmentTimer.active:
        widget._onEnvironmentTimer()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert widget._torchStatus.ok and shown == []

    # Register pressed during a check offers "Cancel" (it could not be taken back: a second press did nothing);
    # pressed, the registration does not start when the check ends
    widget._torchStatus = None
    widget._environmentChild = module.dependencies.start_torch_check(python=str(check))
    widget._environmentTimer.start()
    widget.onApplyButton()
    assert widget.ui.applyButton.text == "Cancel" and widget.ui.applyButton.enabled
    widget.onApplyButton()
    assert widget.ui.applyButton.text == "Register"
    while widget._environmentTimer.active:
        widget._onEnvironmentTimer()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert widget._torchStatus.ok and shown == [] and widget._job is None


def test_the_best_trial_shown_belongs_to_the_chosen_study(real, scene, tmp_path):
    """Choosing another validation set (or study) kept the previous study's "Best mean Dice … (trial …)" line
    while the table showed the new study, whose best "Apply best" would then write."""
    import json

    module, qt, ctk = real
    ui, rows = _ui_with_a_trials_table(qt, ctk)
    p = module.SpatialVaryingRegLogic().getParameterNode()
    widget = _widget(module, ui, p)
    tuned, untouched = tmp_path / "tuned", tmp_path / "untouched"
    report = module.tuning.report_folder(tuned / "svreg-tune.db", "slicer")
    report.mkdir(parents=True)
    untouched.mkdir()
    trial = {"number": 3, "state": "COMPLETE", "value": 0.8123, "params": {"alpha_prime": 0.1}}
    (report / "summary.json").write_text(json.dumps({"study": "slicer", "trials": [trial], "best": trial}))
    p.tuningValidationSet = str(tuned)
    widget.refreshStudyTable()
    assert rows[-1] == 1 and ui.tuningBestLabel.text == "Best mean Dice 0.8123 (trial 3): alpha_prime=0.1"
    p.tuningValidationSet = str(untouched)
    widget.refreshStudyTable()
    assert rows[-1] == 0 and ui.tuningBestLabel.text == ""


def test_a_registration_that_cannot_start_shows_one_message_not_a_failed_installation(real, scene, monkeypatch):
    """Register with unusable inputs showed two dialogs: the plain reason, then the same reason headed "Failed to
    install the engine's Python packages." (Slicer's tryWithErrorDisplay shows the error and raises it again, and
    the start ran inside the package check's). Now one dialog, with the reason."""
    import contextlib

    module, qt, widget, logic, p = _widget_with_unusable_settings(real, scene, monkeypatch)
    widget._torchStatus = module.dependencies.TorchStatus("ok")
    shown: list[str] = []

    @contextlib.contextmanager
    def error_display(message=None, show=True, waitCursor=False):  # as Slicer's: show the error, raise it again
        try:
            yield
        except Exception as exc:
            shown.append(f"{message}\n\n{exc}")
            raise

    monkeypatch.setattr(module.slicer.util, "tryWithErrorDisplay", error_display)
    with pytest.raises(ValueError, match="not a list of numbers"):
        widget.onApplyButton()  # PythonQt prints what a slot raises to the Python console
    assert shown == ["Registration could not start.\n\n'4;2' is not a list of numbers (e.g. '4 2')."]
    assert widget._job is None and p.statusText == ""


def test_apply_best_ending_after_the_scene_was_closed_selects_nothing(real, scene, monkeypatch, tmp_path):
    """"Apply best" runs the engine in a worker thread (seconds: it imports the engine); the scene closed meanwhile
    (parameter node gone) made its end fail with an AttributeError in a timer, and the file was never reported. Its
    end now says where the file is and that it was not selected; the closed scene's settings are left alone."""
    import threading

    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    log: list[str] = []
    ui.tuningLogTextEdit.appendPlainText = log.append
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, None)
    widget.logic, widget._applyBest, widget._afterEnvironment = logic, None, []
    widget._applyBestTimer = qt.QTimer()
    widget.setParameterNode(p)
    p.tuningValidationSet = str(tmp_path)
    (tmp_path / "svreg-tune.db").write_bytes(b"")  # the study file exists: "Apply best" starts
    release = threading.Event()

    def engine_writes_best(storage, study_name, path, **kwargs):  # what `svreg tune --apply-best` leaves behind
        release.wait(30)
        path.write_text(json.dumps({"base": "brain-mri", "parameters": {"alpha_prime": 0.1}}), encoding="utf-8")
        return {"event": "apply_best", "message": str(path)}

    monkeypatch.setattr(module.tuning, "apply_best", engine_writes_best)
    widget.onApplyBest()
    assert widget._applyBestTimer.active and not ui.tuningApplyBestButton.enabled
    widget.onSceneStartClose(scene, None)
    release.set()
    widget._applyBest["thread"].join(30)
    widget._onApplyBestTimer()
    best = tmp_path / "slicer-best-preset.json"
    assert best.is_file() and log[-1] == f"Best parameters written to {best}; not selected: the scene was closed " \
                                         "meanwhile."
    assert (p.preset, p.customPresetFile) == ("brain-mri", "") and ui.tuningApplyBestButton.enabled


def test_an_empty_study_name_shows_the_study_tuning_runs(real, scene, tmp_path):
    """With the study name field cleared, Start tunes the study 'slicer' (as svreg tune's report folder says), but
    the table read '<folder>/-report/summary.json': it stayed empty while the trials ran and finished."""
    module, qt, ctk = real
    ui, rows = _ui_with_a_trials_table(qt, ctk)
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, p)
    p.tuningValidationSet, p.tuningStudyName = str(tmp_path), ""
    request = logic.tuneRequest(p, widget._studyFile())
    report = Path(request.arguments()[request.arguments().index("--report") + 1])
    report.mkdir(parents=True)
    trial = {"number": 0, "state": "COMPLETE", "value": 0.7, "params": {"alpha_prime": 0.1}}
    (report / "summary.json").write_text(json.dumps({"study": "slicer", "trials": [trial], "best": trial}))
    widget.refreshStudyTable()
    assert rows[-1] == 1 and ui.tuningBestLabel.text == "Best mean Dice 0.7000 (trial 0): alpha_prime=0.1"


def test_a_running_tunings_best_shows_only_with_its_study_chosen(real, scene, monkeypatch, tmp_path):
    """While a tuning ran, choosing another validation set (or closing the scene) showed the other study's table,
    but every trial of the running one wrote its "Best mean Dice ..." line under it again, which "Apply best"
    would not write. The running study's best shows while it is the chosen one; its trials are still logged."""
    import os

    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    log: list[str] = []
    ui.tuningLogTextEdit.appendPlainText = log.append
    ui.tuningTable.setRowCount = ui.tuningTable.setItem = ui.tuningTable.setHorizontalHeaderLabels = \
        lambda *args: None
    ui.tuningProgressBar.setMaximum = ui.tuningProgressBar.setValue = lambda value: None
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, p)
    widget.logic, widget._tuningTimer, widget._tuningStudy = logic, qt.QTimer(), None
    widget._tuningValueName = module.tuning.OBJECTIVES["dice"]
    running, other = tmp_path / "running", tmp_path / "other"
    running.mkdir()
    other.mkdir()
    p.tuningValidationSet = str(running)
    # the widget's start, with a child that ends at once in place of `svreg tune` (its events are sent below)
    monkeypatch.setattr(module.tuning, "start_tuning", lambda request, **kwargs: module.runner.ChildProcess(
        ["-c", "pass"], python=sys.executable, env=dict(os.environ), **kwargs).start())
    widget._startTuning()
    widget._tuning.wait(timeout=30)
    event = {"event": "trial", "trial": 0, "state": "COMPLETE", "value": 0.7, "params": {"alpha_prime": 0.1},
             "best_value": 0.7, "best_trial": 0, "best_params": {"alpha_prime": 0.1}}
    widget._onTuningEvent(event)
    assert ui.tuningBestLabel.text == "Best mean Dice 0.7000 (trial 0): alpha_prime=0.1"
    p.tuningValidationSet = str(other)
    widget.refreshStudyTable()
    widget._onTuningEvent(dict(event, trial=1, best_value=0.75, best_trial=1))
    assert ui.tuningBestLabel.text == "" and log[-1].startswith("trial 1: COMPLETE")
    p.tuningValidationSet = str(running)
    widget._onTuningEvent(dict(event, trial=2, best_value=0.8, best_trial=2))
    assert ui.tuningBestLabel.text == "Best mean Dice 0.8000 (trial 2): alpha_prime=0.1"


def test_a_new_run_does_not_show_the_last_stage_of_the_previous_one(real, scene):
    """The progress bar of a second Register showed "<the first run's last stage> 0%" (e.g. "deformable 2 mm 0%")
    for the seconds the engine takes to start and name its first stage. It says it is starting."""
    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    ui.logTextEdit.appendPlainText = ui.logTextEdit.clear = lambda *text: None
    formats: list[str] = []
    ui.progressBar.setFormat, ui.progressBar.setValue = formats.append, lambda value: None
    logic = module.SpatialVaryingRegLogic()
    p = logic.getParameterNode()
    widget = _widget(module, ui, None)
    widget.logic, widget._torchStatus, widget._timer = logic, module.dependencies.TorchStatus("ok"), qt.QTimer()
    widget.setParameterNode(p)
    widget._onEngineEvent({"event": "progress", "stage": "deformable 2 mm", "fraction": 1.0})  # the first run's end
    assert formats == ["deformable 2 mm %p%"]
    p.fixedVolume = add_volume(scene, np.zeros((16, 16, 16), np.float32), np.eye(4), "fixed")
    p.movingVolume = add_volume(scene, np.zeros((16, 16, 16), np.float32), np.eye(4), "moving")
    p.useCpu = True
    widget._startRegistration()
    try:
        assert widget._job is not None and widget._job.running and formats[-1] == "starting %p%"
    finally:
        widget.onApplyButton()  # Cancel
    assert widget._job is None and p.statusText == "Cancelled."


def test_a_scene_saved_while_a_registration_ran_does_not_say_registering_when_opened(real, scene):
    """The status line is saved with the scene: one saved during a run (or a slider preview) showed "Registering..."
    when opened again, with nothing running and the button reading Register. It is cleared; a result's line stays."""
    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    p = module.SpatialVaryingRegLogic().getParameterNode()
    widget = _widget(module, ui, None)
    for saved, shown in (("Registering... about 30 s on the CPU (an estimate from the volume size; ...).", ""),
                         ("Preview (network only)...", ""),
                         ("moving to fixed (SVReg 1): done in 29 s on cpu, folding ...", None)):
        p.statusText = saved
        widget.setParameterNode(p)
        assert p.statusText == (saved if shown is None else shown)
        widget.setParameterNode(None)


def test_add_pair_asks_before_replacing_a_pair_of_the_same_name(real, scene, monkeypatch, tmp_path):
    """"Add pair" with another subject's volumes of the same names replaced the earlier pair without a word. It asks:
    No adds the pair beside it, Yes replaces it; a new name is not asked about."""
    import contextlib

    module, qt, ctk = real
    ui = qt_standins.ui_from_file(UI, qt, ctk)
    log: list[str] = []
    ui.tuningLogTextEdit.appendPlainText = log.append
    p = module.SpatialVaryingRegLogic().getParameterNode()
    widget = _widget(module, ui, p)
    labels = np.zeros((16, 16, 16), np.int16)
    labels[4:12, 4:12, 4:12] = 1
    p.fixedVolume = add_volume(scene, np.ones((16, 16, 16), np.float32), np.eye(4), "fixed")
    p.movingVolume = add_volume(scene, np.ones((16, 16, 16), np.float32), np.eye(4), "moving")
    p.fixedLabels = add_volume(scene, labels, np.eye(4), "fl", labelmap=True)
    p.movingLabels = add_volume(scene, labels, np.eye(4), "ml", labelmap=True)
    p.tuningValidationSet = str(tmp_path)
    questions: list[str] = []
    answers = iter([False, True])

    def confirm(text, windowTitle=None):
        questions.append(text)
        return next(answers)

    @contextlib.contextmanager
    def error_display(message=None, show=True, waitCursor=False):  # as Slicer's without its wait cursor
        yield

    monkeypatch.setattr(module.slicer.util, "confirmYesNoDisplay", confirm)
    monkeypatch.setattr(module.slicer.util, "tryWithErrorDisplay", error_display)
    for _ in range(3):
        widget.onAddPairToValidationSet()
    assert len(questions) == 2 and "already holds a pair named 'moving_to_fixed'" in questions[0]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["moving_to_fixed", "moving_to_fixed-2"]
    assert log == [f"Added pair {tmp_path / name}" for name in ("moving_to_fixed", "moving_to_fixed-2",
                                                                 "moving_to_fixed")]
