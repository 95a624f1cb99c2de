"""SpatialVaryingReg: diffeomorphic registration with a learned, spatially varying regularizer (SPR).

The module keeps the GUI thin: the work is done by ``SpatialVaryingRegLib`` (Qt-free, tested with
Slicer's MRML library) and by the engine ``svreg_core``, which always runs in a child ``PythonSlicer``
process so that Slicer stays responsive and torch is never imported into Slicer itself.

Python console::

    logic = slicer.util.getModuleLogic("SpatialVaryingReg")  # or SpatialVaryingReg.SpatialVaryingRegLogic()
    result = logic.register(fixedNode, movingNode, preset="brain-mri")
    result.transform, result.lambdaMap, result.jacobian, result.warped
    result = logic.register(fixedNode, movingNode, method="learned", model="brain-unet-spr", refineSteps=20)
    # a HyperSPR model at a chosen regularisation, network only:
    result = logic.register(fixedNode, movingNode, method="learned", model=M, alphaPrime=0.2, lambdaMax=5.0,
                            refineSteps=0, outputs=result.outputNodes())
"""
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Union

import qt
import slicer
import vtk
from slicer import (  # noqa: F401 (annotations)
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SpatialVaryingRegLib import dependencies, display, estimate, geometry, landmarks, models, preview, runner, tuning
from SpatialVaryingRegLib import logic as svlogic

#: Label of the preset choice that uses ``customPresetFile``.
CUSTOM_PRESET = "custom file"
#: Label of the similarity choice that keeps the preset's similarity.
FROM_PRESET = "from preset"
#: Labels of the registration methods (``svlogic.METHODS``) in the *Method* choice.
METHOD_LABELS = {"pairwise": "Pairwise optimisation (no training)", "learned": "Learned model"}
#: Labels of the tuning objectives (``tuning.OBJECTIVES``, ``svreg tune --objective``) in the *Objective* choice.
TUNING_OBJECTIVE_LABELS = {"dice": "Mean Dice of the label maps (maximise)",
                           "tre": "Landmark error of the fiducials (minimise)"}
#: Entry of the model list that uses ``modelCheckpoint``.
CHECKPOINT_CHOICE = "Checkpoint file\u2026"


#
# SpatialVaryingReg
#


class SpatialVaryingReg(ScriptedLoadableModule):
    """Module description (title, category, help)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SpatialVaryingReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpatialVaryingReg maintainers (SpatialVaryingReg project)"]
        self.parent.helpText = _("""
Deformable (diffeomorphic) registration of a moving volume onto a fixed volume with a spatially varying
regularizer: the smoothness weight &lambda;(x) is optimised with the deformation, so the deformation can
be sharp at anatomical boundaries and smooth elsewhere. Pick the two volumes, a preset and press
<b>Register</b>. <i>Method</i>: pairwise optimisation of this pair (no training needed), or a learned
model (shipped with the extension, or a checkpoint from training) refined by a few optimisation steps.
A HyperSPR model shows <i>Regularisation</i> sliders: releasing one re-runs the network alone and updates
the results in place.
Results: a displacement-field transform with the moving volume placed under it, the &lambda; map,
the Jacobian determinant (folding check), optionally the warped volume and labels.
The engine runs in a separate process (GPU when available); PyTorch comes from the PyTorch extension.
""")
        self.parent.acknowledgementText = _("""
Method: the spatially varying regularization (SPR) model with a Beta hyperprior on &lambda;(x), by
pairwise instance optimisation or by a network trained with the same loss. Built on 3D Slicer's MRML,
SimpleITK, nibabel, PyTorch, safetensors and Optuna.
""")


#
# Parameter node
#


@parameterNodeWrapper
class SpatialVaryingRegParameterNode:
    """Every setting of the module; saved with the scene.

    Registration inputs (masks and label maps: volumes or segmentations; fiducial lists for the TRE),
    the method (a learned ``model`` is a shipped model's name or :data:`CHECKPOINT_CHOICE`, then
    ``modelCheckpoint`` is used), the preset and its overrides ("from preset" / -1 / empty = keep the
    preset's value), output options, the output nodes (updated in place by the next run; empty =
    create new ones; a run stores its nodes here), and the tuning panel's settings.
    ``hyperAlphaPrime``/``hyperLambdaMax``: the regularisation codes of a HyperSPR model (the
    *Regularisation* sliders; -1 = the model's default), reset when another model is chosen.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]
    fixedLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    movingLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    fixedFiducials: vtkMRMLMarkupsFiducialNode
    movingFiducials: vtkMRMLMarkupsFiducialNode
    fixedRoi: vtkMRMLMarkupsROINode

    method: Annotated[str, Choice(list(METHOD_LABELS.values()))] = METHOD_LABELS["pairwise"]
    model: str = models.DEFAULT_MODEL
    modelCheckpoint: str = ""
    refineSteps: Annotated[int, WithinRange(0, svlogic.REFINE_STEPS_MAX)] = svlogic.DEFAULT_REFINE_STEPS
    hyperAlphaPrime: float = -1.0
    hyperLambdaMax: float = -1.0

    preset: Annotated[str, Choice([*svlogic.PRESET_NAMES, CUSTOM_PRESET])] = "brain-mri"
    customPresetFile: str = ""
    similarity: Annotated[str, Choice([FROM_PRESET, *svlogic.SIMILARITIES])] = FROM_PRESET
    useSpr: bool = True
    useAffine: bool = True
    usePoseSearch: bool = True
    alphaPrime: Annotated[float, WithinRange(-1.0, 100.0)] = -1.0
    lambdaMax: Annotated[float, WithinRange(-1.0, 1000.0)] = -1.0
    levelSpacings: str = ""
    iterations: str = ""
    labelsToScore: str = ""
    labelInterpolation: Annotated[str, Choice(["linear", "nearest"])] = "linear"
    useCpu: bool = False
    createWarpedVolume: bool = True
    createInverseTransform: bool = False
    keepTemporaryFiles: bool = False

    outputTransform: vtkMRMLGridTransformNode
    outputInverseTransform: vtkMRMLGridTransformNode
    outputLambda: vtkMRMLScalarVolumeNode
    outputJacobian: vtkMRMLScalarVolumeNode
    outputWarped: vtkMRMLScalarVolumeNode
    outputWarpedLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    statusText: str = ""

    tuningValidationSet: str = ""
    tuningStudyFile: str = ""
    tuningStudyName: str = "slicer"
    tuningTrials: Annotated[int, WithinRange(1, 100000)] = 30
    tuningMaxFolding: Annotated[float, WithinRange(-1.0, 100.0)] = -1.0
    tuningSeed: Annotated[int, WithinRange(0, 2147483647)] = 0  # of the trial sampler (registration has none)
    tuningObjective: Annotated[str, Choice(list(TUNING_OBJECTIVE_LABELS.values()))] = TUNING_OBJECTIVE_LABELS["dice"]


#: Regularisation codes of a HyperSPR model: engine name -> (parameter-node field, slider, value label).
HYPER_CODES = {"alpha_prime": ("hyperAlphaPrime", "hyperAlphaPrimeSlider", "hyperAlphaPrimeValueLabel"),
               "lambda_max": ("hyperLambdaMax", "hyperLambdaMaxSlider", "hyperLambdaMaxValueLabel")}


def _selectedModel(p: SpatialVaryingRegParameterNode) -> str:
    """The learned model the parameter node selects: a shipped model's name or the checkpoint path."""
    return p.modelCheckpoint if p.model == CHECKPOINT_CHOICE else p.model


def _studyName(p: SpatialVaryingRegParameterNode) -> str:
    """The tuning study's name (``svreg tune --study-name``): ``slicer`` when the field is left empty."""
    return p.tuningStudyName or "slicer"


def _isHyperModel(p: SpatialVaryingRegParameterNode) -> bool:
    """Whether the selected learned model is a HyperSPR model (its codes are the *Regularisation* sliders'); a
    model that cannot be read is not (Register explains the problem)."""
    try:
        info = models.model_info(_selectedModel(p))
    except models.ModelError:
        return False
    return info is not None and info.is_hyper


def _numbers(text: str, kind=float) -> list | None:
    """``"4 2"`` / ``"4, 2"`` -> ``[4.0, 2.0]``; empty -> ``None``; raises ValueError with a plain message."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise ValueError(f"'{text}' is not a list of numbers (e.g. '4 2').") from None


#
# Widget
#


class SpatialVaryingRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, preset, Register/Cancel, progress and log, tuning."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: svlogic.RegistrationJob | None = None
        self._tuning: runner.ChildProcess | None = None
        self._tuningValueName = tuning.OBJECTIVES["dice"]  # what the running or shown study scores
        self._tuningStudy: tuple[Path, str] | None = None  # (study file, name) of the tuning started here
        self._lastStudyRead = 0.0
        self._torchStatus: dependencies.TorchStatus | None = None  # None: not checked in this session
        self._environmentChild: runner.ChildProcess | None = None  # torch check or install in progress
        self._environmentInstalling = False
        self._afterEnvironment: list = []  # what to do once torch is ready (e.g. start the registration), in order
        self._environmentForTuning = False  # whether the tuning packages are needed too
        # {"thread", "result", "error", "path", "select": False once the scene is closed} while "Apply best" runs
        self._applyBest: dict | None = None
        self._timers: list = []
        # Regularisation sliders of a HyperSPR model: debounced network-only runs on one long-lived engine
        # (restarted when the inputs or settings change), the latest request wins
        self._preview = preview.PreviewScheduler(self._startPreviewJob, self._onPreviewFinished)
        self._previewEngine = svlogic.PreviewEngine()
        self._codesModel: str | None = None  # the model the sliders were set up for (None: not yet)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpatialVaryingReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpatialVaryingRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.customPresetBrowseButton.connect("clicked()", self.onBrowsePreset)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.modelCheckpointBrowseButton.connect("clicked()", self.onBrowseCheckpoint)
        self.ui.installEngineButton.connect("clicked()", self.onInstallDependencies)
        self.ui.tuningFolderBrowseButton.connect("clicked()", self.onBrowseValidationFolder)
        self.ui.tuningListBrowseButton.connect("clicked()", self.onBrowseValidationList)
        self.ui.tuningAddPairButton.connect("clicked()", self.onAddPairToValidationSet)
        self.ui.tuningStartButton.connect("clicked()", self.onStartTuning)
        self.ui.tuningStopButton.connect("clicked()", self.onStopTuning)
        self.ui.tuningApplyBestButton.connect("clicked()", self.onApplyBest)
        self.ui.tuningRefreshButton.connect("clicked()", self.refreshStudyTable)
        self._connectCodeSliders()

        self._timer = self._newTimer(100, self._onRegistrationTimer)
        self._tuningTimer = self._newTimer(300, self._onTuningTimer)
        self._environmentTimer = self._newTimer(200, self._onEnvironmentTimer)
        self._applyBestTimer = self._newTimer(200, self._onApplyBestTimer)
        self._previewTimer = self._newTimer(50, self._onPreviewTimer)
        # inputs: grey-level volumes only (no label maps), never this module's own result maps
        for selector in (self.ui.fixedVolumeSelector, self.ui.movingVolumeSelector):
            selector.showChildNodeTypes = False
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._onNodeAdded)
        self._hideModuleOutputs()

        self.ui.progressBar.setVisible(False)
        self.ui.tuningTable.setColumnCount(5)
        self._setTuningValueName(tuning.OBJECTIVES["dice"])
        self.ui.tuningTable.horizontalHeader().setStretchLastSection(True)
        self.initializeParameterNode()
        self._updateEngineStatus()
        self._updateTuningButtons()

    def _newTimer(self, intervalMs: int, callback):
        timer = qt.QTimer()
        timer.setInterval(intervalMs)
        timer.connect("timeout()", callback)
        self._timers.append(timer)
        return timer

    def cleanup(self) -> None:
        """The module is closed or reloaded: stop every timer and child process, drop the observers."""
        for timer in self._timers:
            timer.stop()
        if self._job is not None and self._job.running:
            self._job.cancel()
        self._stopPreviews()
        if self._environmentChild is not None and self._environmentChild.running:
            self._environmentChild.cancel()
        if self._tuning is not None and self._tuning.running:
            tuning.stop_tuning(self._tuning, grace=5.0, wait=True)
        self.removeObservers()

    def onReload(self) -> None:
        """Developer *Reload*: also reload the helper package (Slicer reloads only the module file)."""
        for name in [n for n in sys.modules if n == "SpatialVaryingRegLib" or n.startswith("SpatialVaryingRegLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def _hideModuleOutputs(self) -> None:
        """Hide this module's result volumes (λ, Jacobian, warped) from every input selector."""
        hidden = svlogic.module_output_ids(slicer.mrmlScene)
        for selector in (self.ui.fixedVolumeSelector, self.ui.movingVolumeSelector, self.ui.fixedMaskSelector,
                         self.ui.movingMaskSelector, self.ui.fixedLabelsSelector, self.ui.movingLabelsSelector):
            selector.sortFilterProxyModel().hiddenNodeIDs = hidden

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAdded(self, caller, event, node) -> None:
        if node is not None and node.IsA("vtkMRMLVolumeNode"):
            qt.QTimer.singleShot(0, self._hideModuleOutputs)  # attributes are set after the node is added

    def enter(self) -> None:
        self._fillModelComboBox()  # models may have been added since
        self.initializeParameterNode()
        self._updateEngineStatus()
        self.refreshStudyTable()

    def exit(self) -> None:
        self._retirePreviewEngine()  # frees its memory; the next slider move starts a new one
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()  # its input nodes are about to disappear
            self._finishRegistration()
        self._afterEnvironment.clear()  # a Register waiting for the PyTorch check was for this scene's volumes
        if self._applyBest is not None:  # "Apply best" still writing: its file is selected in no other scene's settings
            self._applyBest["select"] = False
        self._stopPreviews()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.logic.selectDefaultInputs(self._parameterNode)

    def setParameterNode(self, inputParameterNode: SpatialVaryingRegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        self._codesModel = None  # a loaded scene keeps its regularisation codes
        if self._parameterNode:
            running = self._job is not None or self._preview.busy
            if not running and self._parameterNode.statusText.startswith(
                    (_("Registering..."), _("Preview (network only)..."))):
                self._parameterNode.statusText = ""  # a scene saved while a run went on: none runs now
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None and self._job.running
        self.ui.customPresetPathLineEdit.enabled = bool(p) and p.preset == CUSTOM_PRESET
        self.ui.customPresetBrowseButton.enabled = bool(p) and p.preset == CUSTOM_PRESET
        learned = bool(p) and p.method == METHOD_LABELS["learned"]
        self.ui.modelComboBox.enabled = learned
        self.ui.refineStepsSpinBox.enabled = learned
        # a learned model predicts and refines with the similarity and the regulariser it was trained with
        self.ui.similarityComboBox.enabled = self.ui.useSprCheckBox.enabled = not learned
        # its refinement runs Refine steps at each level spacing; without refinement there is no pyramid
        self.ui.iterationsLineEdit.enabled = not learned
        self.ui.levelSpacingsLineEdit.enabled = not learned or (bool(p) and p.refineSteps > 0)
        self.ui.modelCheckpointLineEdit.enabled = learned and p.model == CHECKPOINT_CHOICE
        self.ui.modelCheckpointBrowseButton.enabled = learned and p.model == CHECKPOINT_CHOICE
        if p:
            self._showModelInComboBox()
        self._updateCodeSliders(enabled=learned and not running)
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the registration; the scene is left as it was.")
            self.ui.applyButton.enabled = True
        elif self._startRegistration in self._afterEnvironment:  # waiting for the PyTorch check or installation
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Do not start the registration when the PyTorch check or installation "
                                            "ends.")
            self.ui.applyButton.enabled = True
        elif p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume:
            self.ui.applyButton.text = _("Register")
            self.ui.applyButton.toolTip = _("Register the moving volume onto the fixed volume.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Register")
            self.ui.applyButton.toolTip = _("Select two different volumes: fixed and moving.")
            self.ui.applyButton.enabled = False

    # ---- learned models (the list is not bound to the parameter node: its entries come from the engine)

    def _fillModelComboBox(self) -> None:
        """List the engine's shipped models (their model.json files only are read) and 'Checkpoint file…'.

        A model named in the parameter node but not found (e.g. a scene saved with another version) is
        listed as "not installed", so the scene's setting is shown and Register explains the problem.
        """
        combo = self.ui.modelComboBox
        current = self._parameterNode.model if self._parameterNode else models.DEFAULT_MODEL
        shipped = models.shipped_models()
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in shipped:
            combo.addItem(info.name, info.name)
            combo.setItemData(combo.count - 1, info.summary(), qt.Qt.ToolTipRole)
        if current and current != CHECKPOINT_CHOICE and current not in [m.name for m in shipped]:
            combo.addItem(_("{name} (not installed)").format(name=current), current)
        combo.addItem(CHECKPOINT_CHOICE, CHECKPOINT_CHOICE)
        combo.setItemData(combo.count - 1, _("A model trained with 'svreg train': choose its folder's model.json "
                                             "or model.safetensors below."), qt.Qt.ToolTipRole)
        combo.currentIndex = combo.findData(current)
        combo.blockSignals(wasBlocked)

    def _showModelInComboBox(self) -> None:
        """Select the parameter node's model in the list (re-listing when it is not there)."""
        combo = self.ui.modelComboBox
        index = combo.findData(self._parameterNode.model)
        if index < 0:
            self._fillModelComboBox()
        elif index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onBrowseCheckpoint(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Checkpoint of a trained model"),
                                              self._parameterNode.modelCheckpoint,
                                              _("Checkpoint (model.json model.safetensors)"))
        if path:
            self._parameterNode.modelCheckpoint = path

    # ---- regularisation of a HyperSPR model (sliders on a log scale, not bound: see _updateCodeSliders)

    def _selectedModelInfo(self) -> models.ModelInfo | None:
        """The selected learned model's description (``None``: pairwise, or a model that cannot be read)."""
        p = self._parameterNode
        if not p or p.method != METHOD_LABELS["learned"]:
            return None
        try:
            return models.model_info(_selectedModel(p))
        except models.ModelError:
            return None  # Register explains the problem

    def _updateCodeSliders(self, enabled: bool) -> None:
        """Show the sliders for a hyper model only, at the parameter node's codes (the model's defaults for
        -1); choosing another model resets the codes to its defaults."""
        p = self._parameterNode
        key = _selectedModel(p) if p else None
        if p and self._codesModel is not None and key != self._codesModel:
            self._codesModel = key  # first: the reset below modifies the parameter node, which calls back here
            self._preview.cancel()
            p.hyperAlphaPrime = p.hyperLambdaMax = -1.0
        self._codesModel = key
        info = self._selectedModelInfo()
        hyper = info is not None and info.is_hyper
        self.ui.hyperCodesLabel.visible = self.ui.hyperCodesWidget.visible = hyper
        if not hyper:
            return
        for index, (code, (field, sliderName, labelName)) in enumerate(HYPER_CODES.items()):
            low, high = info.code_ranges.range_of(code)
            default, stored = info.default_codes[index], getattr(p, field)
            slider, label = getattr(self.ui, sliderName), getattr(self.ui, labelName)
            wasBlocked = slider.blockSignals(True)
            slider.minimum, slider.maximum = 0, preview.SLIDER_STEPS
            slider.value = preview.slider_position(default if stored < 0 else stored, low, high)
            slider.blockSignals(wasBlocked)
            slider.enabled = enabled and low < high
            label.toolTip = _("{code} from {low:g} to {high:g} (log scale), the model's default {default:g}."
                              ).format(code=code, low=low, high=high, default=default)
            label.text = (f"{default:.3g}" + _(" (default)")) if stored < 0 else f"{stored:.3g}"

    def _connectCodeSliders(self) -> None:
        for code, (_field, sliderName, _label) in HYPER_CODES.items():
            slider = getattr(self.ui, sliderName)
            slider.connect("valueChanged(int)", lambda position, code=code: self.onCodeSliderMoved(code, position))
            slider.connect("sliderReleased()", lambda code=code: self.onCodeSliderReleased(code))

    def _codeAt(self, code: str, position: int) -> tuple[float, bool] | None:
        """``(value, is the default)`` of a code slider at ``position`` for the selected hyper model."""
        info = self._selectedModelInfo()
        if info is None or not info.is_hyper:
            return None
        default = info.default_codes[list(HYPER_CODES).index(code)]
        value = preview.slider_code(position, *info.code_ranges.range_of(code), default=default)
        return value, value == default

    def onCodeSliderMoved(self, code: str, position: int) -> None:
        """Dragging shows the value; a change without dragging (keys, wheel, a click beside the handle) is
        taken at once (the scheduler debounces a burst of them)."""
        at = self._codeAt(code, position)
        if at is None:
            return
        getattr(self.ui, HYPER_CODES[code][2]).text = f"{at[0]:.3g}" + (_(" (default)") if at[1] else "")
        if not getattr(self.ui, HYPER_CODES[code][1]).isSliderDown():
            self.onCodeSliderReleased(code)

    def onCodeSliderReleased(self, code: str) -> None:
        """Store the slider's code in the parameter node and ask for a network-only re-run."""
        at = self._codeAt(code, getattr(self.ui, HYPER_CODES[code][1]).value)
        if at is None or not self._parameterNode:
            return
        setattr(self._parameterNode, HYPER_CODES[code][0], -1.0 if at[1] else at[0])
        self.requestPreview()

    def requestPreview(self) -> None:
        """Re-run the network at the parameter node's codes once the sliders are quiet (when both volumes are
        chosen and no full registration runs), on the preview engine; a preview it is computing finishes first
        (its result dropped), and only the latest request waits for it."""
        p = self._parameterNode
        if not p or not p.fixedVolume or not p.movingVolume or p.fixedVolume == p.movingVolume:
            return
        if self._job is not None and self._job.running:
            return
        if self._torchStatus is not None and self._torchStatus.ok:
            self._schedulePreview()
        else:
            self._withEnvironment(self._schedulePreview)

    def _schedulePreview(self) -> None:
        p = self._parameterNode
        self._preview.request((p.hyperAlphaPrime, p.hyperLambdaMax))
        self._previewTimer.start()

    def _startPreviewJob(self, codes) -> svlogic.RegistrationJob:
        """The scheduler's run: the registration job of the parameter node without refinement, sent to the
        preview engine (started first, or restarted when the inputs or settings changed)."""
        job = self.logic.createJob(self._parameterNode, preview=True, on_event=self._onEngineEvent,
                                   on_log=self._appendLog)
        self._previewEngine.start_job(job)
        self._showProgressStart()
        self._parameterNode.statusText = _("Preview (network only)...")
        return job

    def _onPreviewTimer(self) -> None:
        try:
            busy = self._preview.poll()
        except Exception as exc:  # noqa: BLE001 - a preview that cannot start: say why, keep polling the rest
            busy = self._preview.busy
            self._previewFailed(svlogic.one_line(exc))
        busy = self._previewEngine.poll() or busy  # reaps a stopped engine
        if not busy:
            self._previewTimer.stop()
            if self._job is None:
                self.ui.progressBar.setVisible(False)

    def _onPreviewFinished(self, job: svlogic.RegistrationJob) -> None:
        if job.outputs is not None:
            self.logic.storeOutputs(self._parameterNode, job.outputs)  # the next preview updates these nodes
            self._appendLog(job.outputs.status_text)
        elif job.cancelled:  # the status line said "Preview (network only)...": it would stay, e.g. after exit()
            stopped = _("Preview stopped (superseded or cancelled).")
            # only its own line: Register stops a running preview, which ends after "Registering..." is shown
            if self._parameterNode and self._parameterNode.statusText == _("Preview (network only)..."):
                self._parameterNode.statusText = stopped
            self._appendLog(stopped)
        else:
            self._previewFailed(job.error or _("the preview failed."))

    def _previewFailed(self, message: str) -> None:
        if self._parameterNode:
            self._parameterNode.statusText = _("Preview failed: {message}").format(message=message)
        self._appendLog(message)
        slicer.util.errorDisplay(_("Preview failed: {message}").format(message=message))

    def _stopPreviews(self) -> None:
        """Drop a waiting preview, end the preview engine's process tree and the running preview (blocking:
        the module or scene is closing)."""
        self._preview.cancel()
        self._previewEngine.stop()
        if self._preview.job is not None:
            self._preview.job.cancel()

    def _retirePreviewEngine(self) -> None:
        """Drop a waiting preview and stop the preview engine without blocking (the preview timer reaps it;
        a preview it was computing ends as cancelled)."""
        self._preview.cancel()
        self._previewEngine.stop(wait=False)
        if self._previewEngine.poll() or self._preview.busy:
            self._previewTimer.start()

    def _updateEngineStatus(self) -> None:
        """Show what is known about torch (from the last child-process check), the GPU and the packages."""
        missing = self.logic.missingPackages()
        status = self._torchStatus
        if self._environmentChild is not None:
            text = (_("Installing PyTorch in a separate process (see the log)...") if self._environmentInstalling
                    else _("Checking PyTorch in a separate process..."))
        elif status is not None and not status.ok:
            text = status.advice()
        elif status is None and not dependencies.torch_installed():
            text = _("PyTorch is not installed: press 'Install' (it runs in a separate process).")
        elif missing:
            text = _("Missing Python packages: {packages}. Press 'Install'.").format(packages=", ".join(missing))
        elif status is None:
            text = _("PyTorch is checked (version, NumPy compatibility, GPU) when you press Register.")
        else:
            text = _("Engine ready: PyTorch {version}, {devices}.").format(version=status.torch,
                                                                         devices=status.devices_text())
        self.ui.engineStatusLabel.text = text
        self.ui.installEngineButton.visible = self._environmentChild is None and (
            bool(missing) or (status is None and not dependencies.torch_installed())
            or (status is not None and status.installable))
        # "Use CPU" only means something with a GPU: listed once a check has found one
        self.ui.useCpuCheckBox.visible = status is not None and bool(status.devices)
        if status is not None and status.devices:
            self.ui.useCpuCheckBox.toolTip = _("Run on the CPU instead of {devices}.").format(
                devices=status.devices_text())

    def _appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    # ---- registration

    def onInstallDependencies(self) -> None:
        self._withEnvironment(None)

    def _withEnvironment(self, then, tuning: bool = False) -> None:
        """Check torch in a child process (install it after asking), then the other packages, then call
        ``then()``; never blocks the GUI thread on the child (a timer polls it). What is asked for while a check
        or an installation runs (e.g. Register pressed after Install) is done once it has ended, each once."""
        if then is not None and then not in self._afterEnvironment:
            self._afterEnvironment.append(then)
        self._environmentForTuning = self._environmentForTuning or tuning
        if self._environmentChild is not None:
            return  # a check or an installation is already running: what was asked for follows it
        if self._torchStatus is not None and self._torchStatus.ok:
            self._environmentReady()
            return
        self._environmentInstalling = False
        self._environmentChild = dependencies.start_torch_check(on_log=self._appendLog)
        self._environmentTimer.start()
        self._updateEngineStatus()

    def _onEnvironmentTimer(self) -> None:
        child = self._environmentChild
        try:
            if child is not None and child.poll():
                return
        except Exception as exc:  # noqa: BLE001 - never leave the timer firing
            self._torchStatus = dependencies.TorchStatus("unknown", message=svlogic.one_line(exc))
        else:
            self._torchStatus = dependencies.torch_status(child) if child is not None else self._torchStatus
        self._environmentTimer.stop()
        installed, self._environmentChild = self._environmentInstalling, None
        self._environmentInstalling = False
        self._updateEngineStatus()
        status = self._torchStatus
        if status is not None and status.ok:
            self._environmentReady()
            return
        if status is not None and status.installable and not installed and slicer.util.confirmOkCancelDisplay(
                status.advice() + "\n\n" + _("Install PyTorch now?"), windowTitle="SpatialVaryingReg"):
            self._environmentInstalling = True
            self._environmentChild = dependencies.start_torch_install(status, on_log=self._appendLog)
            self._environmentTimer.start()
            self._updateEngineStatus()
            return
        self._afterEnvironment, self._environmentForTuning = [], False
        self._checkCanApply()
        slicer.util.errorDisplay(status.advice() if status is not None else _("PyTorch could not be checked."))

    def _environmentReady(self) -> None:
        actions, self._afterEnvironment = self._afterEnvironment, []
        tuning, self._environmentForTuning = self._environmentForTuning, False
        self._checkCanApply()  # no longer waiting
        with slicer.util.tryWithErrorDisplay(_("Failed to install the engine's Python packages.")):
            ready = self.logic.ensureRequirements(ask=True, tuning=tuning)
        if not ready:
            return
        self._updateEngineStatus()
        for action in actions:  # each shows its own errors (not as a failed installation)
            action()

    def onApplyButton(self) -> None:
        if self._job is not None and self._job.running:
            self._appendLog(_("Cancelling..."))
            self._job.cancel()
            self._finishRegistration()
            return
        if self._startRegistration in self._afterEnvironment:  # "Cancel" while it waits for PyTorch
            self._afterEnvironment.remove(self._startRegistration)
            self._appendLog(_("Registration cancelled: it will not start when PyTorch is ready."))
            self._checkCanApply()
            return
        self._retirePreviewEngine()  # a full registration supersedes the previews, one waiting for PyTorch too
        if self._schedulePreview in self._afterEnvironment:
            self._afterEnvironment.remove(self._schedulePreview)
        self._withEnvironment(self._startRegistration)
        self._checkCanApply()  # "Cancel" while it waits

    def _startRegistration(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Registration could not start.")):
            self.ui.logTextEdit.clear()
            self._showProgressStart()
            self._parameterNode.statusText = _("Registering...")
            try:  # any failure before the engine runs (bad numbers, inputs, folders) leaves no "Registering..."
                self._job = self.logic.createJob(self._parameterNode, on_event=self._onEngineEvent,
                                                 on_log=self._appendLog)
                self._job.validate()  # plain messages before the estimate reads the volumes
                noDevice = self._torchStatus is not None and not self._torchStatus.devices
                onCpu = self._job.settings.device == "cpu" or noDevice
                if onCpu and self._parameterNode.fixedVolume is not None:
                    guess = self.logic.cpuEstimateText(self._parameterNode, self._job.settings, self._job.crop_box())
                    self._parameterNode.statusText = _("Registering... {estimate}.").format(estimate=guess)
                    self._appendLog(_("Compute time: {estimate}.").format(estimate=guess))
                self._job.start()
            except BaseException:
                self._job = None
                self.ui.progressBar.setVisible(False)
                self._parameterNode.statusText = ""
                raise
            self._timer.start()
            self._checkCanApply()

    def _showProgressStart(self) -> None:
        """The progress bar at 0 % without the stage of an earlier run (the engine names its first stage once it has
        started, seconds later)."""
        self.ui.progressBar.setFormat(_("starting %p%"))
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)

    def _onEngineEvent(self, event: dict) -> None:
        if event.get("event") == "progress":
            self.ui.progressBar.setValue(int(round(100 * float(event.get("fraction", 0.0)))))
            self.ui.progressBar.setFormat(f"{event.get('stage', '')} %p%")
            self._appendLog(svlogic.describe_event(event))
        elif event.get("event") == "error":
            self._appendLog(_("Error: {message}").format(message=event.get("message", "")))

    def _onRegistrationTimer(self) -> None:
        """Poll the engine; any failure (also one while loading the outputs) ends the run and is shown."""
        try:
            if self._job is not None and self._job.poll():
                return
        except Exception as exc:  # noqa: BLE001 - the job has ended: show the real message, stop polling
            if self._job is not None and self._job.error is None and self._job.outputs is None:
                self._job.error = svlogic.one_line(exc)
        self._finishRegistration()

    def _finishRegistration(self) -> None:
        self._timer.stop()
        job, self._job = self._job, None
        self.ui.progressBar.setVisible(False)
        if job is not None and job.outputs is not None:
            self.logic.storeOutputs(self._parameterNode, job.outputs)
            self._appendLog(job.outputs.status_text)
            if job.outputs.output_dir:
                self._appendLog(_("Engine outputs (report.png, transform.h5...) kept in {path}").format(
                    path=job.outputs.output_dir))
        elif job is not None:
            message = job.error or _("the registration failed.")
            if self._parameterNode:
                self._parameterNode.statusText = (_("Cancelled.") if job.cancelled
                                                  else _("Failed: {message}").format(message=message))
            self._appendLog(message)
            if not job.cancelled:
                slicer.util.errorDisplay(_("Registration failed: {message}").format(message=message))
        self._checkCanApply()

    def onBrowsePreset(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Preset file"), self._parameterNode.customPresetFile,
                                              _("Preset (*.json)"))
        if path:
            self._parameterNode.customPresetFile = path

    # ---- tuning

    def _studyFile(self) -> Path | None:
        p = self._parameterNode
        if p is None:
            return None
        if p.tuningStudyFile:
            return Path(p.tuningStudyFile)
        if p.tuningValidationSet:
            source = Path(p.tuningValidationSet)
            return (source if source.is_dir() else source.parent) / "svreg-tune.db"
        return None

    def _chosenStudy(self) -> tuple[Path, str] | None:
        """``(study file, name)`` of the study the panel shows (the table, the best trial, Apply best)."""
        db = self._studyFile()
        return None if db is None else (db, _studyName(self._parameterNode))

    def _updateTuningButtons(self) -> None:
        running = self._tuning is not None and self._tuning.running
        self.ui.tuningStartButton.enabled = not running
        self.ui.tuningStopButton.enabled = running
        self.ui.tuningAddPairButton.enabled = not running

    def onBrowseValidationFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(self.parent, _("Validation folder (one sub-folder per pair)"),
                                                   self._parameterNode.tuningValidationSet)
        if path:
            self._parameterNode.tuningValidationSet = path
            self.refreshStudyTable()

    def onBrowseValidationList(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Pair list"), self._parameterNode.tuningValidationSet,
                                              _("Pair lists (*.csv *.tsv *.json)"))
        if path:
            self._parameterNode.tuningValidationSet = path
            self.refreshStudyTable()

    def onAddPairToValidationSet(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not add the pair."), waitCursor=True):
            folder = Path(p.tuningValidationSet) if p.tuningValidationSet else None
            if folder is None or not folder.is_dir():
                chosen = qt.QFileDialog.getExistingDirectory(self.parent, _("Folder of the validation set"))
                if not chosen:
                    return
                folder = Path(chosen)
                p.tuningValidationSet = str(folder)
            name = f"{p.movingVolume.GetName()}_to_{p.fixedVolume.GetName()}" if p.movingVolume and p.fixedVolume \
                else "pair"
            existing = tuning.pair_folder(folder, name)
            replace = existing.exists() and slicer.util.confirmYesNoDisplay(
                _("The validation set already holds a pair named '{name}' (another subject's volumes may have the "
                  "same names). Replace it with this one?\n\nNo: add this pair next to it under a new name.").format(
                    name=existing.name), windowTitle="SpatialVaryingReg")
            target = tuning.export_pair(folder, name, p.fixedVolume, p.movingVolume, p.fixedLabels, p.movingLabels,
                                        p.fixedFiducials, p.movingFiducials, replace=replace)
            self.ui.tuningLogTextEdit.appendPlainText(_("Added pair {path}").format(path=target))

    def onStartTuning(self) -> None:
        self._withEnvironment(self._startTuning, tuning=True)

    def _startTuning(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Tuning could not start.")):
            request = self.logic.tuneRequest(self._parameterNode, self._studyFile())
            self._setTuningValueName(tuning.OBJECTIVES[request.objective])
            self.ui.tuningLogTextEdit.appendPlainText(
                _("Tuning {n} trials on {source}; study '{name}' in {db} (re-running resumes it).").format(
                    n=request.n_trials, source=request.validation, name=request.study_name, db=request.storage))
            self._tuningStudy = (request.storage, request.study_name)
            self._tuning = tuning.start_tuning(request, on_event=self._onTuningEvent,
                                               on_log=self.ui.tuningLogTextEdit.appendPlainText)
            self._tuningTimer.start()
            self._updateTuningButtons()

    def onStopTuning(self) -> None:
        if self._tuning is not None and self._tuning.running:
            self.ui.tuningLogTextEdit.appendPlainText(_("Stopping (finished trials are kept; Start resumes)..."))
            tuning.stop_tuning(self._tuning)

    def _onTuningEvent(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "trial":
            value = event.get("value")
            self.ui.tuningLogTextEdit.appendPlainText(
                f"trial {event.get('trial')}: {event.get('state')} "
                f"{'' if value is None else f'{value:.4f}'} ({tuning.format_params(event.get('params') or {})})")
        elif kind == "error":
            self.ui.tuningLogTextEdit.appendPlainText(_("Error: {message}").format(message=event.get("message")))
        elif kind in ("start", "end"):
            self.ui.tuningLogTextEdit.appendPlainText(f"{kind}: {event.get('message') or ''}".strip())
        best = event.get("best_value")
        if best is not None and self._tuningStudy == self._chosenStudy():  # the table's study (Apply best writes it)
            self._showBest(self._tuningValueName, best, event.get("best_trial"), event.get("best_params"))
        if "finished" in event and event.get("n_trials"):
            self.ui.tuningProgressBar.setMaximum(int(event["n_trials"]))
            self.ui.tuningProgressBar.setValue(int(event["finished"]))

    def _onTuningTimer(self) -> None:
        running = self._tuning is not None and self._tuning.poll()
        if time.monotonic() - self._lastStudyRead > 2.0 or not running:
            self.refreshStudyTable()
        if not running:
            self._tuningTimer.stop()
            if self._tuning is not None and self._tuning.result is not None:
                result = self._tuning.result
                if result.status == runner.FAILED:
                    failure = _("Tuning failed: {message}").format(message=result.message)
                    self.ui.tuningLogTextEdit.appendPlainText(failure)
                    slicer.util.errorDisplay(failure)
                else:
                    self.ui.tuningLogTextEdit.appendPlainText(_("Tuning {status}.").format(status=result.status))
            self._updateTuningButtons()

    def refreshStudyTable(self) -> None:
        """Show the chosen study's trials from its ``summary.json`` (:func:`tuning.read_study`; works with no tuning
        process running too)."""
        self._lastStudyRead = time.monotonic()
        study = self._chosenStudy()
        snapshot = tuning.read_study(*study) if study else None
        table = self.ui.tuningTable
        table.setRowCount(0 if snapshot is None else len(snapshot.trials))
        if snapshot is None or snapshot.best is None:
            self.ui.tuningBestLabel.text = ""  # not the best trial of a study shown before (another one chosen)
        if snapshot is None:
            return
        self._setTuningValueName(snapshot.value_name)
        for row, trial in enumerate(snapshot.trials):
            cells = [str(trial.number), trial.state, "" if trial.value is None else f"{trial.value:.4f}",
                     "" if trial.folding is None else f"{trial.folding:.3f}", tuning.format_params(trial.params)]
            for col, text in enumerate(cells):
                table.setItem(row, col, qt.QTableWidgetItem(text))
        best = snapshot.best
        if best is not None:
            self._showBest(snapshot.value_name, best.value, best.number, best.params)

    def _setTuningValueName(self, valueName: str) -> None:
        """Head the trials table's value column with what the study scores (mean Dice, mean TRE (mm))."""
        self._tuningValueName = valueName
        self.ui.tuningTable.setHorizontalHeaderLabels([_("Trial"), _("State"), valueName[:1].upper() + valueName[1:],
                                                       _("Folding %"), _("Parameters")])

    def _showBest(self, valueName: str, value: float, trial, params) -> None:
        self.ui.tuningBestLabel.text = _("Best {name} {value:.4f} (trial {trial}): {params}").format(
            name=valueName, value=value, trial=trial, params=tuning.format_params(params or {}))

    def onApplyBest(self) -> None:
        """Write the best trial as a preset in a worker thread (the engine starts in a child process that
        imports torch: seconds to minutes); a timer picks up the result. The GUI thread never waits."""
        if self._applyBest is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not apply the best parameters.")):
            study = self._chosenStudy()
            if study is None or not study[0].is_file():
                raise ValueError(_("No study file yet: start tuning first."))
            db, name = study
            path = self.logic.bestPresetPath(db, name)
            task = {"result": None, "error": None, "path": path, "select": True}

            def work():
                try:
                    task["result"] = tuning.apply_best(db, name, path)
                except Exception as exc:  # noqa: BLE001 - reported by the timer in the GUI thread
                    task["error"] = svlogic.one_line(exc)

            task["thread"] = threading.Thread(target=work, name="SpatialVaryingReg apply best", daemon=True)
            self._applyBest = task
            self.ui.tuningApplyBestButton.enabled = False
            self.ui.tuningLogTextEdit.appendPlainText(_("Writing the best parameters..."))
            task["thread"].start()
            self._applyBestTimer.start()

    def _onApplyBestTimer(self) -> None:
        task = self._applyBest
        if task is not None and task["thread"].is_alive():
            return
        self._applyBestTimer.stop()
        self._applyBest = None
        self.ui.tuningApplyBestButton.enabled = True
        if task is None:
            return
        if task["error"] is not None:
            self.ui.tuningLogTextEdit.appendPlainText(_("Apply best failed: {message}").format(message=task["error"]))
            slicer.util.errorDisplay(_("Could not apply the best parameters: {message}").format(message=task["error"]))
            return
        if not task["select"]:
            self.ui.tuningLogTextEdit.appendPlainText(
                _("Best parameters written to {path}; not selected: the scene was closed meanwhile.").format(
                    path=task["path"]))
            return
        selected = self.logic.useBest(self._parameterNode, task["path"])
        self.ui.tuningLogTextEdit.appendPlainText(
            _("Best parameters written to {path}; {selected}.").format(path=task["path"], selected=selected))


#
# Logic
#


class SpatialVaryingRegLogic(ScriptedLoadableModuleLogic):
    """GUI-free logic: the Register button and the Python console go through :meth:`createJob`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SpatialVaryingRegParameterNode(super().getParameterNode())

    @staticmethod
    def resourceFile(name: str) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", name)

    def missingPackages(self, tuning: bool = False) -> list[str]:
        """Requirements (other than torch) not installed yet; nothing is imported or installed."""
        files = ["requirements.txt"] + (["requirements-tuning.txt"] if tuning else [])
        missing = []
        for name in files:
            missing += dependencies.missing_requirements(dependencies.read_requirements(self.resourceFile(name)))
        return missing

    def ensureEnvironment(self, ask: bool = True, tuning: bool = False) -> bool:
        """Python console: check torch in a ``PythonSlicer`` child (blocking), install it after asking,
        then the engine's other packages. ``False`` when something is missing or the user declined;
        the reason is logged. The GUI does the same without blocking (``SpatialVaryingRegWidget``).
        """
        status = dependencies.check_torch()
        if not status.ok and status.installable and not dependencies._testing(slicer) and (
                not ask or slicer.util.confirmOkCancelDisplay(status.advice() + "\n\nInstall PyTorch now?",
                                                             windowTitle="SpatialVaryingReg")):
            status = dependencies.install_torch(status, on_log=logging.info)
        if not status.ok:
            logging.error(status.advice())
            return False
        return self.ensureRequirements(ask=ask, tuning=tuning)

    def ensureRequirements(self, ask: bool = True, tuning: bool = False) -> bool:
        """The engine's packages other than torch (requirements files), installed after asking."""
        files = ["requirements.txt"] + (["requirements-tuning.txt"] if tuning else [])
        return all(dependencies.ensure_requirements(self.resourceFile(f), ask=ask) for f in files)

    def selectDefaultInputs(self, p: "SpatialVaryingRegParameterNode | None") -> None:
        """Preselect two different grey-level volumes (never label maps or this module's results)."""
        if p is None or (p.fixedVolume and p.movingVolume):
            return
        fixed, moving = svlogic.default_input_volumes(slicer.mrmlScene)
        if not p.fixedVolume and fixed is not None and fixed is not p.movingVolume:
            p.fixedVolume = fixed
        if not p.movingVolume and moving is not None and moving is not p.fixedVolume:
            p.movingVolume = moving

    # ---- registration

    def settingsFromParameterNode(self, p: SpatialVaryingRegParameterNode) -> svlogic.RegistrationSettings:
        """Translate the parameter node into engine settings (overrides only where the user changed them). A learned
        model brings its similarity and regulariser, and its refinement runs *Refine steps* at each level spacing: the
        (disabled) Advanced similarity, regulariser and iterations are not passed, nor level spacings without
        refinement."""
        method = next(key for key, label in METHOD_LABELS.items() if label == p.method)
        overrides: dict[str, Any] = {"affine": bool(p.useAffine), "pose_search": bool(p.usePoseSearch)}
        if method == "pairwise":
            overrides["spr"] = bool(p.useSpr)
            if p.similarity != FROM_PRESET:
                overrides["similarity"] = p.similarity
        if p.alphaPrime >= 0:
            overrides["alpha_prime"] = float(p.alphaPrime)
        if p.lambdaMax >= 0:
            overrides["lambda_max"] = float(p.lambdaMax)
        if method == "learned":  # the refinement runs Refine steps per level; the network alone has no pyramid
            spacings = _numbers(p.levelSpacings) if p.refineSteps > 0 else None
            iterations = [int(p.refineSteps)] * len(spacings) if spacings else None
        else:
            spacings, iterations = _numbers(p.levelSpacings), _numbers(p.iterations, int)
        if (spacings is None) != (iterations is None) or (spacings and len(spacings) != len(iterations)):
            raise svlogic.RegistrationError(_("give level spacings and iterations together, one number per level "
                                              "(e.g. '4 2' and '80 60'), or leave both empty."))
        if spacings:
            overrides["level_spacings"], overrides["iterations"] = spacings, iterations
        preset = p.preset
        if preset == CUSTOM_PRESET:
            if not p.customPresetFile:
                raise svlogic.RegistrationError(_("choose a preset file, or pick a named preset."))
            preset = p.customPresetFile
        codes = tuple(float(v) if method == "learned" and v >= 0 else None
                      for v in (p.hyperAlphaPrime, p.hyperLambdaMax))
        if method == "learned" and p.refineSteps > 0 and codes == (None, None) and not _isHyperModel(p):
            # a plain model's refinement is regularised by the codes: the preset's refinement codes (brain-mri's)
            # would otherwise win over the Advanced α′ and λ max written into the preset document
            codes = tuple(float(v) if v >= 0 else None for v in (p.alphaPrime, p.lambdaMax))
        return svlogic.RegistrationSettings(
            preset=preset, overrides=overrides, method=method, model=_selectedModel(p),
            refine_steps=int(p.refineSteps), codes=codes, device="cpu" if p.useCpu else "auto",
            labels=_numbers(p.labelsToScore, int), label_interpolation=p.labelInterpolation,
            create_warped=bool(p.createWarpedVolume), create_inverse=bool(p.createInverseTransform),
            keep_temporary_files=bool(p.keepTemporaryFiles))

    def createJob(self, p: SpatialVaryingRegParameterNode, preview: bool = False,
                  **kwargs) -> svlogic.RegistrationJob:
        """A not-yet-started job for the parameter node's inputs and settings; the output nodes selected in
        the parameter node are updated in place. ``preview``: the network alone (no refinement steps), what
        the *Regularisation* sliders of a HyperSPR model run; the masks restrict its affine stage's similarity, so
        without that stage they are left out of it (the network alone does not use them). Fiducial lists that cannot
        pair up, which *Register* refuses, give a preview without a TRE rather than a failed one."""
        settings = self.settingsFromParameterNode(p)
        fixedMask, movingMask, fixedFiducials = p.fixedMask, p.movingMask, p.fixedFiducials
        if preview:
            settings.refine_steps = 0
            if not settings.affine_stage():
                fixedMask = movingMask = None
            if fixedFiducials is not None and p.movingFiducials is not None and \
                    landmarks.pair_count_problem(fixedFiducials, p.movingFiducials):
                fixedFiducials = None  # a few seconds' preview: no TRE, and no error at each slider move
        reuse = svlogic.OutputNodes(transform=p.outputTransform, lambda_map=p.outputLambda,
                                    jacobian=p.outputJacobian, warped=p.outputWarped,
                                    warped_labels=p.outputWarpedLabels, inverse=p.outputInverseTransform)
        if svlogic.holds_other_pair(p.outputTransform, p.fixedVolume, p.movingVolume):
            # the stored outputs are another pair's (its moving volume still sits under that transform): new nodes
            reuse = svlogic.OutputNodes()
        return svlogic.RegistrationJob(p.fixedVolume, p.movingVolume, fixed_mask=fixedMask, moving_mask=movingMask,
                                       fixed_labels=p.fixedLabels, moving_labels=p.movingLabels,
                                       fixed_fiducials=fixedFiducials, moving_fiducials=p.movingFiducials,
                                       fixed_roi=p.fixedRoi, reuse=reuse, settings=settings, scene=slicer.mrmlScene,
                                       **kwargs)

    @staticmethod
    def cpuEstimateText(p: SpatialVaryingRegParameterNode, settings: svlogic.RegistrationSettings,
                        box: tuple[float, ...] | None = None) -> str:
        """The compute-time estimate on the CPU for the parameter node's fixed volume (in the crop ``box`` when
        given: two opposite RAS corners, :meth:`RegistrationJob.crop_box`) and the pyramid of the preset (a preset
        file's own, with the overrides) the engine gets."""
        learned = settings.method == "learned"
        document = settings.preset_document()
        seconds = estimate.cpu_seconds(p.fixedVolume, document["base"], document["parameters"],
                                       refine_steps=int(settings.refine_steps) if learned else None, box=box)
        return estimate.text(seconds)

    @staticmethod
    def storeOutputs(p: SpatialVaryingRegParameterNode, outputs: svlogic.RegistrationOutputs) -> None:
        if p is None:
            return
        p.outputTransform = outputs.transform
        p.outputLambda = outputs.lambda_map
        p.outputJacobian = outputs.jacobian
        p.outputWarped = outputs.warped
        p.outputWarpedLabels = outputs.warped_labels
        if outputs.inverse is not None:
            p.outputInverseTransform = outputs.inverse
        p.statusText = outputs.status_text

    def register(self, fixedVolume, movingVolume, fixedMask=None, movingMask=None, fixedLabels=None,
                 movingLabels=None, preset: str = "brain-mri", parameters: dict | None = None, useCpu: bool = False,
                 device: str | None = None, labels: list[int] | None = None, labelInterpolation: str = "linear",
                 createWarpedVolume: bool = True, keepTemporaryFiles: bool = False, showResults: bool = True,
                 ensureDependencies: bool = True, timeout: float | None = None, log=None, method: str = "pairwise",
                 model: str = models.DEFAULT_MODEL, refineSteps: int = svlogic.DEFAULT_REFINE_STEPS,
                 fixedFiducials=None, movingFiducials=None, createInverseTransform: bool = False,
                 outputs: svlogic.OutputNodes | None = None, fixedRoi=None, alphaPrime: float | None = None,
                 lambdaMax: float | None = None) -> "SpatialVaryingRegResult":
        """Register ``movingVolume`` onto ``fixedVolume``, blocking until done; return the output nodes.

        :param method: ``"pairwise"`` (optimise this pair; no training needed) or ``"learned"`` (a trained
            network predicts the deformation and λ map, then ``refineSteps`` pairwise steps of the same loss).
        :param model: with ``method="learned"``: a shipped model's name (``SpatialVaryingRegLib.models.
            shipped_models()``) or a checkpoint: a folder holding model.json and model.safetensors, or either file.
        :param refineSteps: with ``method="learned"``: 0 to 500 optimisation steps from the network's prediction
            (0 = the network alone, fastest).
        :param alphaPrime, lambdaMax: with ``method="learned"``: the regularisation codes to register at (``None``:
            the model's own, ``model.json``). A HyperSPR model predicts for them; they must lie inside the ranges
            it was trained over (``SpatialVaryingRegLib.models.model_info(model).code_ranges``), else a plain
            message before anything starts. A plain model only uses them for its refinement (``refineSteps > 0``).
            Without them a refinement regularises with the preset's refinement codes (its ``refine_codes``:
            ``brain-mri``'s α′ 0.0303, λ_max 2.93), not with ``parameters``' alpha_prime and lambda_max, which
            pairwise registration takes instead.
        :param preset: ``brain-mri``, ``cardiac-mri``, ``ct``, ``lung-ct`` or a preset JSON file path.
        :param parameters: registration parameters overriding the preset, e.g.
            ``{"alpha_prime": 0.1, "level_spacings": [4, 2], "iterations": [80, 60], "affine": False}``.
        :param useCpu: run on the CPU even when CUDA is available (``device`` overrides: auto/cpu/cuda).
        :param fixedMask, movingMask, fixedLabels, movingLabels: volumes or Segmentation nodes (a segmentation
            is exported onto its volume's grid, segment n as label n + 1, except that segments named like structures
            of the other label map, segments or a label map volume's colour-table names, take their labels; warped
            labels then come back as a Segmentation node).
        :param fixedFiducials, movingFiducials: markups point lists; the moving list is placed under the result
            transform, and with both (same number of points, paired by order) the TRE is reported.
        :param createInverseTransform: also create the inverse transform (``result.inverse``).
        :param fixedRoi: a markups ROI: only the fixed volume's voxels inside its box (world RAS bounds) are
            registered, and the results cover the box (big CT: less time and memory).
        :param outputs: ``SpatialVaryingRegLib.logic.OutputNodes`` to update in place instead of new nodes (e.g.
            ``previousResult.outputNodes()``).
        :param log: optional callable receiving log lines (default: Python logging).
        :raises RuntimeError: (``RegistrationError``) with a plain message on failure.
        :return: :class:`SpatialVaryingRegResult` with ``transform``, ``warped``, ``lambdaMap``, ``jacobian``,
            ``warpedLabels``, ``report`` (metrics dict) and ``statusText``.
        """
        if ensureDependencies and not self.ensureEnvironment(ask=True):
            raise svlogic.RegistrationError(
                "the engine's Python packages are not ready (see the log); press Install in the module panel "
                "(or accept the installation offer) and try again.")
        settings = svlogic.RegistrationSettings(
            preset=str(preset), overrides=dict(parameters or {}), method=method, model=str(model),
            refine_steps=refineSteps, codes=(alphaPrime, lambdaMax),
            device=device or ("cpu" if useCpu else "auto"),
            labels=labels, label_interpolation=labelInterpolation, create_warped=createWarpedVolume,
            create_inverse=createInverseTransform, keep_temporary_files=keepTemporaryFiles, show_results=showResults)
        job = svlogic.RegistrationJob(fixedVolume, movingVolume, fixed_mask=fixedMask, moving_mask=movingMask,
                                      fixed_labels=fixedLabels, moving_labels=movingLabels,
                                      fixed_fiducials=fixedFiducials, moving_fiducials=movingFiducials,
                                      fixed_roi=fixedRoi, reuse=outputs, settings=settings, scene=slicer.mrmlScene,
                                      on_log=log or logging.info)
        app = getattr(slicer, "app", None)
        outputs = job.run(timeout=timeout, idle=app.processEvents if app is not None else None)
        logging.info(outputs.status_text)
        return SpatialVaryingRegResult(outputs)

    # ---- tuning

    def tuneRequest(self, p: SpatialVaryingRegParameterNode, studyFile: Path | None) -> tuning.TuneRequest:
        if not p.tuningValidationSet or not Path(p.tuningValidationSet).exists():
            raise ValueError(_("choose the validation set: a folder with one sub-folder per pair (fixed, moving, "
                               "fixed_labels, moving_labels .nii.gz; for the landmark objective fixed_landmarks, "
                               "moving_landmarks .csv) or a .csv pair list."))
        settings = self.settingsFromParameterNode(p)
        o = settings.overrides
        learned = settings.method == "learned"
        studyName = _studyName(p)
        # the trials register as Register would (similarity, uniform regulariser, pose search, ... of Advanced):
        # svreg tune has flags for the pyramid and the affine stage only, so the rest goes as a preset file
        # next to the study, without the values the study searches
        document = settings.preset_document()
        for searched in ("alpha_prime", "lambda_max"):
            document["parameters"].pop(searched, None)
        preset = Path(studyFile).with_name(f"{Path(studyFile).stem}-{studyName}-preset.json")
        preset.parent.mkdir(parents=True, exist_ok=True)
        preset.write_text(json.dumps(document, indent=2), encoding="utf-8")
        return tuning.TuneRequest(
            validation=Path(p.tuningValidationSet), storage=Path(studyFile), study_name=studyName,
            n_trials=int(p.tuningTrials), preset=str(preset), device=settings.device,
            seed=int(p.tuningSeed), level_spacings=o.get("level_spacings"), iterations=o.get("iterations"),
            affine=bool(p.useAffine), max_folding=p.tuningMaxFolding if p.tuningMaxFolding >= 0 else None,
            labels=settings.labels, objective=self.tuningObjective(p),
            model=models.resolve_model(settings.model) if learned else None,
            refine=int(settings.refine_steps) if learned else 0)

    @staticmethod
    def tuningObjective(p: SpatialVaryingRegParameterNode) -> str:
        """The ``svreg tune --objective`` the panel's *Objective* choice selects (``dice`` or ``tre``)."""
        return next(key for key, label in TUNING_OBJECTIVE_LABELS.items() if label == p.tuningObjective)

    @staticmethod
    def bestPresetPath(studyFile: Path, studyName: str) -> Path:
        """Where "Apply best" writes the study's best trial as a preset file."""
        return Path(studyFile).parent / f"{studyName}-best-preset.json"

    @staticmethod
    def useCustomPreset(p: SpatialVaryingRegParameterNode, path: Path) -> None:
        p.customPresetFile = str(path)
        p.preset = CUSTOM_PRESET

    @classmethod
    def useBest(cls, p: SpatialVaryingRegParameterNode, path: Path) -> str:
        """Select what "Apply best" wrote: a preset file (the 'custom file' preset), or the best trial of a learned
        model's code search: that model, with the refine steps and the codes the search scored (its *Regularisation*
        codes: a hyper model predicts for them, any model's refinement regularises with them), even when another
        model was chosen since. Returns what was selected, for the log."""
        tuned = tuning.best_codes(path)
        if tuned is None:
            cls.useCustomPreset(p, path)
            return _("the preset is now 'custom file'")
        p.method = METHOD_LABELS["learned"]
        if tuned.model in [m.name for m in models.shipped_models()]:
            p.model = tuned.model
        else:  # a checkpoint folder
            p.modelCheckpoint, p.model = tuned.model, CHECKPOINT_CHOICE
        p.refineSteps = tuned.refine
        # last: choosing another model resets the codes to its defaults
        p.hyperAlphaPrime, p.hyperLambdaMax = tuned.alpha_prime, tuned.lambda_max
        return _("the learned model is {model} with {refine} refine steps at alpha_prime {a:.4g}, lambda_max {l:.4g}"
                 ).format(model=tuned.model, refine=tuned.refine, a=tuned.alpha_prime, l=tuned.lambda_max)

    def applyBestParameters(self, p: SpatialVaryingRegParameterNode, studyFile: Path) -> Path:
        """Python console (blocking): write the study's best trial as a preset file (or a learned model's
        codes file) and select it (:meth:`useBest`)."""
        name = _studyName(p)
        path = self.bestPresetPath(studyFile, name)
        tuning.apply_best(Path(studyFile), name, path)
        self.useBest(p, path)
        return path


class SpatialVaryingRegResult:
    """What :meth:`SpatialVaryingRegLogic.register` returns (camelCase names for the console)."""

    def __init__(self, outputs: svlogic.RegistrationOutputs) -> None:
        self.outputs = outputs
        self.transform = outputs.transform
        self.warped = outputs.warped
        self.lambdaMap = outputs.lambda_map
        self.jacobian = outputs.jacobian
        self.warpedLabels = outputs.warped_labels
        self.inverse = outputs.inverse
        self.tre = outputs.tre
        self.report = outputs.report
        self.statusText = outputs.status_text

    def nodes(self) -> list:
        return self.outputs.nodes()

    def outputNodes(self) -> svlogic.OutputNodes:
        """These nodes as ``outputs=`` of the next ``register`` call (updated in place)."""
        return self.outputs.reuse()

    def __repr__(self) -> str:
        return f"<SpatialVaryingRegResult {self.statusText}>"


#
# Test
#


class SpatialVaryingRegTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test: a synthetic pair registered on the CPU in well under a minute.

    Run: ``Slicer --no-main-window --testing --python-code "import slicer.util; ..."`` (see the README),
    or Reload and Test in the module's developer section.
    """

    #: Fast parameters: two coarse levels, few iterations, no affine stage; MSE because the synthetic
    #: pair has identical intensities and little texture (LNCC is meant for real MRI).
    FAST = {"level_spacings": [8.0, 4.0], "iterations": [20, 20], "affine": False, "similarity": "mse"}

    #: Bound on the engine's own registration time (report timing) for the synthetic pair, seconds.
    ENGINE_SECONDS = 60.0
    #: Bound on the wall-clock time of one register() call, seconds: generous because a cold start
    #: (first torch import from a cold disk cache, first compilation of the engine's .pyc files) can
    #: take minutes on a build machine; the engine's own time is bounded by ENGINE_SECONDS.
    WALL_SECONDS = 600.0

    def setUp(self):
        slicer.mrmlScene.Clear()

    def engineUnavailableReason(self) -> str:
        """Why the engine cannot run here ('' when it can): torch checked in a child process, then the
        engine's packages (metadata only). A self-test never installs anything."""
        status = dependencies.check_torch()
        if not status.ok:
            return status.advice()
        missing = SpatialVaryingRegLogic().missingPackages()
        return f"missing Python packages: {', '.join(missing)}" if missing else ""

    def runTest(self):
        reason = self.engineUnavailableReason()
        if reason:
            self.delayDisplay(f"SpatialVaryingReg self-test skipped: {reason}")
            self.skipTest(reason)
        self.setUp()
        self.test_RegisterSyntheticPair()
        self.setUp()
        self.test_BadInputsGivePlainMessages()
        self.setUp()
        self.test_LearnedModel()
        self.setUp()
        self.test_HyperModelRegularisation()

    def _syntheticPair(self):
        import numpy as np

        ijkToRas = np.diag([2.0, 2.0, 2.0, 1.0])
        ijkToRas[:3, 3] = -31.0
        shape = (32, 32, 32)
        x = geometry.grid_points(shape, ijkToRas)
        u = np.stack([3.0 * np.sin(x[..., 1] / 12.0), 2.0 * np.cos(x[..., 2] / 15.0),
                      2.0 * np.sin(x[..., 0] / 11.0)], -1)

        def image(p):
            r1 = (p ** 2).sum(-1)
            r2 = ((p - np.array([12.0, -8.0, 6.0])) ** 2).sum(-1)
            return (np.exp(-r1 / (2 * 11.0 ** 2)) + 0.6 * np.exp(-r2 / (2 * 6.0 ** 2))).astype(np.float32)

        fixedArray, movingArray = image(x + u), image(x)

        def volume(array, name, labelmap=False):
            kji = np.ascontiguousarray(array.transpose(2, 1, 0))
            return slicer.util.addVolumeFromArray(kji, ijkToRas, name=name,
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode" if labelmap else None)

        fixed, moving = volume(fixedArray, "fixed"), volume(movingArray, "moving")
        fixedLabels = volume((fixedArray > 0.5).astype(np.int16), "fixed labels", labelmap=True)
        movingLabels = volume((movingArray > 0.5).astype(np.int16), "moving labels", labelmap=True)
        return fixed, moving, fixedLabels, movingLabels, ijkToRas

    def test_RegisterSyntheticPair(self):
        import numpy as np

        self.delayDisplay("Registering a synthetic 32^3 pair on the CPU")
        fixed, moving, fixedLabels, movingLabels, ijkToRas = self._syntheticPair()
        logic = SpatialVaryingRegLogic()
        t0 = time.monotonic()
        result = logic.register(fixed, moving, fixedLabels=fixedLabels, movingLabels=movingLabels,
                                parameters=self.FAST, useCpu=True, ensureDependencies=False)
        self.assertLess(time.monotonic() - t0, self.WALL_SECONDS)
        self.assertLess(float(result.report["timing"]["total_s"]), self.ENGINE_SECONDS)

        transform = result.transform
        self.assertTrue(transform.IsA("vtkMRMLGridTransformNode"))
        self.assertTrue(transform.GetTransformFromParent().IsA("vtkOrientedGridTransform"))
        self.assertEqual(moving.GetTransformNodeID(), transform.GetID())
        self.assertEqual(transform.GetNodeReferenceID(transform.GetFixedNodeReferenceRole()), fixed.GetID())
        self.assertEqual(transform.GetNodeReferenceID(transform.GetMovingNodeReferenceRole()), moving.GetID())
        for node in (result.lambdaMap, result.jacobian, result.warped):
            self.assertTrue(np.allclose(geometry.ijk_to_ras(node), ijkToRas, atol=1e-4), node.GetName())
            self.assertEqual(node.GetImageData().GetDimensions(), fixed.GetImageData().GetDimensions())
        self.assertFalse(result.jacobian.GetDisplayNode().GetAutoWindowLevel())
        self.assertAlmostEqual(result.jacobian.GetDisplayNode().GetLevel(), 1.0)
        self.assertAlmostEqual(result.jacobian.GetDisplayNode().GetWindow(), 2.0)
        lam = slicer.util.arrayFromVolume(result.lambdaMap)
        self.assertTrue(float(lam.min()) > 0.0 and float(lam.max()) <= 1.0 + 1e-6)
        self.assertAlmostEqual(result.lambdaMap.GetDisplayNode().GetWindow(), display.lambda_window(lam)[0], places=5)
        self.assertFalse(result.lambdaMap.GetDisplayNode().GetAutoWindowLevel())
        metrics = result.report["metrics"]
        self.assertLess(metrics["folding_percent"], 1.0)
        before = self._dice(slicer.util.arrayFromVolume(fixedLabels), slicer.util.arrayFromVolume(movingLabels))
        self.assertGreater(metrics["dice_mean"], before)
        self.assertIn("Dice", result.statusText)
        self.delayDisplay(f"Test passed: {result.statusText}")

    def test_LearnedModel(self):
        """The first shipped model (network + 5 refinement steps) on the synthetic pair, when one is shipped."""
        import numpy as np

        shipped = models.shipped_models()
        if not shipped:
            self.delayDisplay("Learned model: skipped (no model is shipped with this engine)")
            return
        fixed, moving, _fixedLabels, _movingLabels, ijkToRas = self._syntheticPair()
        result = SpatialVaryingRegLogic().register(fixed, moving, method="learned", model=shipped[0].name,
                                                   refineSteps=5, parameters={"affine": False}, useCpu=True,
                                                   ensureDependencies=False)
        self.assertEqual(result.report.get("method"), "learned")
        self.assertIn(shipped[0].name, result.statusText)
        self.assertEqual(moving.GetTransformNodeID(), result.transform.GetID())
        self.assertTrue(np.allclose(geometry.ijk_to_ras(result.lambdaMap), ijkToRas, atol=1e-4))
        lam = slicer.util.arrayFromVolume(result.lambdaMap)
        self.assertTrue(float(lam.min()) > 0.0 and float(lam.max()) <= 1.0 + 1e-6)
        self.assertLess(result.report["metrics"]["folding_percent"], 1.0)
        self.delayDisplay(f"Test passed: {result.statusText}")

    def test_HyperModelRegularisation(self):
        """The first shipped HyperSPR model, network only, at its default codes then at the top of its ranges
        into the same nodes (what the Regularisation sliders do); skipped when no hyper model is shipped."""
        import numpy as np

        hyper = [m for m in models.shipped_models() if m.is_hyper]
        if not hyper:
            self.delayDisplay("HyperSPR model: skipped (no hyper model is shipped with this engine)")
            return
        info = hyper[0]
        fixed, moving, _fixedLabels, _movingLabels, _ijkToRas = self._syntheticPair()
        logic = SpatialVaryingRegLogic()
        common = dict(method="learned", model=str(info.folder), refineSteps=0, parameters={"affine": False},
                      useCpu=True, ensureDependencies=False)
        first = logic.register(fixed, moving, **common)
        self.assertTrue(first.report["codes"]["conditioned"])
        self.assertEqual((first.report["codes"]["alpha_prime"], first.report["codes"]["lambda_max"]),
                         info.default_codes)
        jacobianBefore = slicer.util.arrayFromVolume(first.jacobian).copy()
        top = (info.code_ranges.alpha_prime[1], info.code_ranges.lambda_max[1])
        second = logic.register(fixed, moving, alphaPrime=top[0], lambdaMax=top[1], outputs=first.outputNodes(),
                                **common)
        self.assertEqual((second.report["codes"]["alpha_prime"], second.report["codes"]["lambda_max"]), top)
        self.assertEqual([n.GetID() for n in second.nodes()], [n.GetID() for n in first.nodes()])
        # the deformation follows the codes for every hyper model; λ does only where it is not saturated at 1
        # (brain-hyper-unet-spr predicts λ = 1 at every code, brain-hyper-unet-spr-low does not; README)
        if top != info.default_codes:
            self.assertFalse(np.array_equal(slicer.util.arrayFromVolume(second.jacobian), jacobianBefore))
        # the sliders: requests to one long-lived preview engine, into the same nodes, the same maps
        lambdaTop = slicer.util.arrayFromVolume(second.lambdaMap).copy()
        jacobianTop = slicer.util.arrayFromVolume(second.jacobian).copy()
        engine = svlogic.PreviewEngine()
        try:
            pids = []
            for codes in (info.default_codes, top):
                settings = svlogic.RegistrationSettings(overrides={"affine": False}, method="learned",
                                                        model=str(info.folder), refine_steps=0, codes=codes,
                                                        device="cpu")
                job = svlogic.RegistrationJob(fixed, moving, reuse=second.outputNodes(), settings=settings)
                preview = engine.start_job(job).run(timeout=600)
                pids.append(engine.pid)
            self.assertEqual(pids[0], pids[1])
            self.assertEqual(preview.lambda_map.GetID(), second.lambdaMap.GetID())
            self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(second.lambdaMap), lambdaTop))
            self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(second.jacobian), jacobianTop))
        finally:
            engine.stop()
        outside = info.code_ranges.lambda_max[1] * 2.0
        with self.assertRaises(svlogic.RegistrationError) as ctx:
            logic.register(fixed, moving, lambdaMax=outside, **common)
        self.assertIn("outside the range", str(ctx.exception))
        self.delayDisplay(f"Test passed: {second.statusText}")

    @staticmethod
    def _dice(a, b) -> float:
        a, b = a > 0, b > 0
        return float(2.0 * (a & b).sum() / max(1, a.sum() + b.sum()))

    def test_BadInputsGivePlainMessages(self):
        import numpy as np

        fixed, moving, fixedLabels, movingLabels, _ijkToRas = self._syntheticPair()
        otherGrid = slicer.util.addVolumeFromArray(np.zeros((10, 10, 10), np.int16), np.diag([3.0, 3.0, 3.0, 1.0]),
                                                   name="labels elsewhere", nodeClassName="vtkMRMLLabelMapVolumeNode")
        logic = SpatialVaryingRegLogic()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(svlogic.RegistrationError) as ctx:
            logic.register(fixed, fixed, ensureDependencies=False)
        self.assertIn("same node", str(ctx.exception))
        with self.assertRaises(svlogic.RegistrationError) as ctx:
            logic.register(fixed, moving, fixedLabels=otherGrid, ensureDependencies=False)
        self.assertIn("not on the grid", str(ctx.exception))
        missing = os.path.join(tempfile.gettempdir(), "SpatialVaryingReg-no-such-checkpoint", "model.json")
        with self.assertRaises(svlogic.RegistrationError) as ctx:
            logic.register(fixed, moving, method="learned", model=missing, ensureDependencies=False)
        self.assertIn("does not exist", str(ctx.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIsNone(moving.GetParentTransformNode())
        self.delayDisplay("Test passed: plain messages, scene unchanged")
