"""The registration workflow on MRML nodes, without any GUI: export -> child process -> output nodes.

:class:`RegistrationJob` is what both the module's Register button and the Python console use:

1. the input volumes (and optional masks and label maps) are written as NIfTI into a new temporary
   folder, in world coordinates (a linear parent transform is folded in);
2. ``svreg_core.cli register`` runs in a child process (:mod:`.runner`), reporting JSON progress:
   the pairwise optimiser, or a learned model (shipped or a checkpoint, :mod:`.models`) whose
   prediction is refined by a few pairwise steps (a HyperSPR model predicts at the regularisation
   codes chosen, :attr:`RegistrationSettings.codes`);
3. on success the outputs become MRML nodes: a grid transform (FromParent, RAS mm, fixed/moving
   references) with the moving volume placed under it, the λ map and the Jacobian determinant on
   the fixed grid with their colour maps, optionally the hardened warped volume, the warped labels
   (a Segmentation node when the moving labels were one, :mod:`.segmentations`) and the inverse
   transform; a moving fiducial list is placed under the transform and, with a corresponding fixed
   list, the target registration error is reported (:mod:`.landmarks`). Output nodes given in
   :class:`OutputNodes` are updated in place instead of new ones being created. The temporary
   folder is removed (unless asked to keep it).

The *Regularisation* sliders of a HyperSPR model run :class:`RegistrationJob` s on a
:class:`PreviewEngine`: one long-lived ``svreg_core.cli preview`` child per set of inputs and settings,
which reads the volumes and runs the affine stage once and then answers each slider move with the
network's prediction at the new codes; its outputs become the same nodes, loaded the same way.

A failed or cancelled run leaves the scene as it was. Nothing here imports Qt or torch.
"""
from __future__ import annotations

import json
import math
import numbers
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import display, geometry, landmarks, models, runner, segmentations

#: Node attributes written on every output node.
RUN_ATTRIBUTE = "SpatialVaryingReg.Run"
ROLE_ATTRIBUTE = "SpatialVaryingReg.Role"
REPORT_ATTRIBUTE = "SpatialVaryingReg.Report"
#: Added to the name of an earlier run's output node that a re-run did not update (its option was off, or the node
#: was of another kind), so it is not taken for the new result's (e.g. an inverse of the old transform).
STALE_SUFFIX = " (earlier run, not updated)"
#: Node reference role, on a result transform, of the linear transform the moving volume sat under when it was
#: registered (e.g. a manual initial alignment): the result replaces it as the volume's parent, and a later
#: registration of that volume starts from it again (:func:`moving_base_node`).
INITIAL_ALIGNMENT_ROLE = "SpatialVaryingReg.InitialAlignment"

#: Preset names of the engine (``svreg_core.optim.parameters.PRESETS``), listed here so that the
#: Slicer process does not import the engine (and torch) to fill a combo box.
PRESET_NAMES = ("brain-mri", "cardiac-mri", "ct", "lung-ct")
SIMILARITIES = ("lncc", "mse", "mind")
DEVICES = ("auto", "cpu", "cuda")
#: Registration methods: ``pairwise`` optimisation per pair (no training) or a ``learned`` model.
METHODS = ("pairwise", "learned")
#: Pairwise-optimisation steps (same SPR loss) run from a learned model's prediction by default. A
#: network applied to a scan unlike its training data can be off; 20 steps adapt the result to this
#: pair for a fraction of a pairwise run's cost (that runs 60-80 steps per level), and 0 gives the
#: network alone (fastest).
DEFAULT_REFINE_STEPS = 20
REFINE_STEPS_MAX = 500


class RegistrationError(RuntimeError):
    """A registration could not run or failed; ``str(error)`` is one plain line for the user."""


class RegistrationCancelled(RegistrationError):
    """The user cancelled the registration."""


@dataclass
class RegistrationSettings:
    """What to run and what to create.

    Attributes:
        preset: a preset name (:data:`PRESET_NAMES`) or the path of a preset JSON file
            (``{"base": ..., "parameters": {...}}``, e.g. written by ``svreg tune --apply-best``).
        overrides: registration parameters replacing the preset's (``alpha_prime``, ``lambda_max``,
            ``similarity``, ``spr``, ``affine``, ``level_spacings``, ``iterations``...).
        method: ``"pairwise"`` (optimise this pair, no training) or ``"learned"`` (a trained network).
        model: with ``method="learned"``: a shipped model's name or a checkpoint (a folder holding
            ``model.json`` and ``model.safetensors``, or either file).
        refine_steps: with ``method="learned"``: pairwise steps from the network's prediction (0 = none).
        codes: with ``method="learned"``: the regularisation ``(α′, λ_max)`` to register at, each ``None``
            for the model's own (the refinement's: the preset's). A HyperSPR model predicts for them and
            refines with them (they must lie inside the ranges it was trained over,
            :attr:`.models.ModelInfo.code_ranges`); a plain model only refines with them (they need
            ``refine_steps > 0``). Pairwise registration takes ``overrides`` instead.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.
        labels: label values to score (default: all labels present in both label maps).
        label_interpolation: ``"linear"`` (one-hot trilinear + argmax) or ``"nearest"``.
        create_warped: also load the hardened warped moving volume.
        create_inverse: also load the inverse transform (moving -> fixed resampling, on the moving grid).
        keep_temporary_files: keep the exchange folder (inputs, engine outputs, report.png).
        show_results: on the scene's first result, show fixed + λ map in the slice views.
        temp_root: where the exchange folder is created (default: Slicer's temporary folder).
    """

    preset: str = "brain-mri"
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str = "pairwise"
    model: str = models.DEFAULT_MODEL
    refine_steps: int = DEFAULT_REFINE_STEPS
    codes: tuple[float | None, float | None] = (None, None)
    device: str = "auto"
    labels: list[int] | None = None
    label_interpolation: str = "linear"
    create_warped: bool = True
    create_inverse: bool = False
    keep_temporary_files: bool = False
    show_results: bool = True
    temp_root: str | None = None

    def preset_document(self) -> dict[str, Any]:
        """The preset file content handed to the engine: the chosen preset plus the overrides."""
        preset = str(self.preset)
        if preset in PRESET_NAMES:
            doc: dict[str, Any] = {"base": preset, "parameters": {}}
        else:
            path = Path(preset)
            if not path.is_file():
                raise RegistrationError(f"preset '{preset}' is neither one of {', '.join(PRESET_NAMES)} "
                                        "nor an existing preset file.")
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RegistrationError(f"the preset file {path} cannot be read as JSON ({exc}).") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
                raise RegistrationError(f"the preset file {path} must hold an object with a 'parameters' object.")
            doc = {"base": doc.get("base", "brain-mri"), "parameters": dict(doc.get("parameters", {}))}
        doc["parameters"].update({k: v for k, v in self.overrides.items() if v is not None})
        return doc

    def affine_stage(self) -> bool:
        """Whether the engine runs its affine stage: the ``affine`` parameter of :meth:`preset_document` (on in
        every named preset). With a learned model, the masks restrict that stage's similarity and the refine
        steps'; the network itself does not use them."""
        return bool(self.preset_document()["parameters"].get("affine", True))


@dataclass
class OutputNodes:
    """Existing nodes to update in place with a registration's results (``None``: create a new node).

    A node of the wrong kind is not reused (e.g. a label map volume for the warped labels of a
    segmentation): a new node is created instead. A node the run does not update keeps its content; an earlier
    run's output then gets :data:`STALE_SUFFIX` added to its name (a node no run has written keeps its name).
    """

    transform: Any = None
    lambda_map: Any = None
    jacobian: Any = None
    warped: Any = None
    warped_labels: Any = None
    inverse: Any = None


@dataclass
class RegistrationOutputs:
    """The nodes and numbers of one finished registration."""

    run_name: str
    transform: Any
    lambda_map: Any
    jacobian: Any
    warped: Any = None
    warped_labels: Any = None
    report: dict[str, Any] = field(default_factory=dict)
    status_text: str = ""
    output_dir: Path | None = None
    inverse: Any = None
    tre: landmarks.TargetRegistrationError | None = None

    def nodes(self) -> list:
        return [n for n in (self.transform, self.warped, self.lambda_map, self.jacobian, self.warped_labels,
                            self.inverse) if n is not None]

    def reuse(self) -> OutputNodes:
        """These nodes, for the next run to update in place."""
        return OutputNodes(transform=self.transform, lambda_map=self.lambda_map, jacobian=self.jacobian,
                           warped=self.warped, warped_labels=self.warped_labels, inverse=self.inverse)


def _fmt(value: Any, digits: int) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def method_text(report: dict[str, Any]) -> str:
    """How the engine registered, from ``report.json``: ``"pairwise optimisation"`` or ``"learned model
    'name' (architecture) at α′ A, λ_max L + N refinement steps"`` (the codes for a hyper model only);
    empty when the report does not say (older engine)."""
    method = report.get("method")
    if method == "pairwise":
        return "pairwise optimisation"
    if method != "learned":
        return ""
    model = report.get("model")
    text = "learned model"
    if isinstance(model, dict):
        text += f" '{model.get('name') or '?'}'" + (f" ({model['architecture']})" if model.get("architecture") else "")
    codes = report.get("codes")
    if isinstance(codes, dict) and codes.get("conditioned"):
        text += f" at α′ {_fmt_code(codes.get('alpha_prime'))}, λ_max {_fmt_code(codes.get('lambda_max'))}"
    steps = report.get("refine_steps")
    return text + (f" + {steps} refinement steps" if isinstance(steps, int) and steps > 0 else "")


def _fmt_code(value: Any) -> str:
    """A regularisation code with 3 significant digits (``"0.175"``, ``"3.35"``, ``"10"``)."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return "n/a"


def status_text(run_name: str, report: dict[str, Any], elapsed_s: float | None = None,
                more: Sequence[str] = ()) -> str:
    """One line for the status label: method, time, device, folding and (with labels) Dice and HD95, then the
    engine's warnings (``report["warnings"]``, e.g. that the images' orientations disagree).

    ``elapsed_s`` is the wall-clock time seen by the user (engine start-up included); the engine's own
    total is used without it. ``more``: further parts of the line (the landmarks' TRE).
    """
    metrics = report.get("metrics", {})
    seconds = elapsed_s if elapsed_s is not None else report.get("timing", {}).get("total_s")
    method = method_text(report)
    parts = [f"{run_name}: {method + ', ' if method else ''}done in {_fmt(seconds, 0)} s "
             f"on {report.get('device', '?')}",
             f"folding (det J <= 0) {_fmt(metrics.get('folding_percent'), 3)} % of voxels"]
    if "dice_mean" in metrics:
        n = len(metrics.get("dice", {}))
        parts.append(f"mean Dice {_fmt(metrics.get('dice_mean'), 3)} over {n} label{'s' if n != 1 else ''}")
        if "hd95_mean" in metrics:
            parts.append(f"HD95 {_fmt(metrics.get('hd95_mean'), 2)} mm")
    parts += more
    warned = "".join(f" Warning: {message}" for message in report.get("warnings", []))
    return ", ".join(parts) + "." + warned


def describe_event(event: dict[str, Any]) -> str:
    """A short log line for a progress event of the engine."""
    stage = event.get("stage", "")
    text = stage
    if event.get("total"):
        text += f" {event.get('step', 0)}/{event['total']}"
    values = event.get("values") or {}
    if values:
        text += " (" + ", ".join(f"{k} {_fmt(v, 4)}" for k, v in values.items()) + ")"
    if event.get("message"):
        text += f": {event['message']}"
    return text


def next_run_number(scene) -> int:
    """1 + the highest run number of this module's transforms already in the scene."""
    highest = 0
    nodes = scene.GetNodesByClass("vtkMRMLTransformNode")
    for i in range(nodes.GetNumberOfItems()):
        value = nodes.GetItemAsObject(i).GetAttribute(RUN_ATTRIBUTE)
        if value and value.isdigit():
            highest = max(highest, int(value))
    return highest + 1


def is_result_transform(node) -> bool:
    """Whether ``node`` is a transform created by this module (a previous result)."""
    return node is not None and node.IsA("vtkMRMLTransformNode") and bool(node.GetAttribute(RUN_ATTRIBUTE))


def holds_other_pair(transform, fixed, moving) -> bool:
    """Whether ``transform`` records (:func:`~.geometry.set_registration_references`) the registration of another
    fixed or moving volume than ``fixed``/``moving``: its outputs must not be overwritten by this pair's."""
    if transform is None:
        return False
    recorded = [transform.GetNodeReferenceID(role) for role in (transform.GetFixedNodeReferenceRole(),
                                                               transform.GetMovingNodeReferenceRole())]
    current = [node.GetID() if node is not None else None for node in (fixed, moving)]
    return any(recorded) and recorded != current


def moving_base_node(node):
    """The transform a moving-side node's registration starts from (``None``: its own coordinates): its parent, e.g.
    a manual initial alignment. A previous result of this module directly above the node is skipped: registering
    again starts where that result started, from the result's own parent, else from the transform the moving volume
    sat under before it (:data:`INITIAL_ALIGNMENT_ROLE`), and the new result replaces the old one as its parent."""
    parent = node.GetParentTransformNode()
    if is_result_transform(parent):
        parent = parent.GetParentTransformNode() or parent.GetNodeReference(INITIAL_ALIGNMENT_ROLE)
    return parent


def moving_base_to_world(node) -> np.ndarray | None:
    """To-world matrix of a moving-side node's coordinates as the registration sees them (:func:`moving_base_node`;
    ``None``: identity)."""
    parent = moving_base_node(node)
    return None if parent is None else geometry.transform_to_world(parent, node)


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    if isinstance(exc, MemoryError):
        return ("not enough memory to load the result; crop the volumes to the region of interest or use a "
                "coarser fixed volume.")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def module_output_ids(scene) -> list[str]:
    """IDs of the volumes this module created (λ maps, Jacobians, warped volumes and labels): they are
    results, not registration inputs, so the input selectors hide them."""
    ids = []
    nodes = scene.GetNodesByClass("vtkMRMLVolumeNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(RUN_ATTRIBUTE):
            ids.append(node.GetID())
    return ids


def default_input_volumes(scene) -> tuple[Any, Any]:
    """``(fixed, moving)`` to preselect: the two most recently added grey-level volumes that are not label
    maps nor results of this module (``None`` where the scene has too few)."""
    outputs = set(module_output_ids(scene))
    candidates = []
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetID() in outputs or node.GetHideFromEditors():
            continue
        candidates.append(node)
    if not candidates:
        return None, None
    if len(candidates) == 1:
        return candidates[0], None
    return candidates[-2], candidates[-1]


def _same_grid(a, a_to_world, b, b_to_world) -> bool:
    da, db = a.GetImageData().GetDimensions(), b.GetImageData().GetDimensions()
    return tuple(da) == tuple(db) and np.allclose(a_to_world, b_to_world, atol=1e-3)


def default_temp_root() -> str:
    """Slicer's temporary folder inside Slicer, the system's otherwise."""
    try:
        import slicer

        app = getattr(slicer, "app", None)
        if app is not None:
            return str(app.temporaryPath)
    except ImportError:
        pass
    return tempfile.gettempdir()


class RegistrationJob:
    """One registration of ``moving`` onto ``fixed`` through the engine's child process.

    Use ``start()`` then ``poll()`` (GUI timer) or ``run()`` (blocking). ``outputs`` holds the result
    nodes after success; ``error`` the plain message after a failure or cancel.
    """

    def __init__(self, fixed, moving, *, fixed_mask=None, moving_mask=None, fixed_labels=None, moving_labels=None,
                 fixed_fiducials=None, moving_fiducials=None, fixed_roi=None, reuse: OutputNodes | None = None,
                 settings: RegistrationSettings | None = None, scene=None, python: str | None = None,
                 env: dict[str, str] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_log: Callable[[str], None] | None = None) -> None:
        self.fixed, self.moving = fixed, moving
        self.fixed_mask, self.moving_mask = fixed_mask, moving_mask
        self.fixed_labels, self.moving_labels = fixed_labels, moving_labels
        self.fixed_fiducials, self.moving_fiducials = fixed_fiducials, moving_fiducials
        self.fixed_roi = fixed_roi
        self.reuse = reuse or OutputNodes()
        self.settings = settings or RegistrationSettings()
        self.scene = scene if scene is not None else (fixed.GetScene() if fixed is not None else None)
        self.python, self.env = python, env
        self.on_event, self.on_log = on_event, on_log
        self.workdir: Path | None = None  # removed when the job ends (unless kept)
        self.output_dir: Path | None = None  # where the engine writes this job's outputs
        self.child: runner.ChildProcess | runner.PreviewCall | None = None
        self.outputs: RegistrationOutputs | None = None
        self.error: str | None = None
        self.cancelled = False
        self.started_at = 0.0

    # ---- checks and inputs

    def validate(self) -> None:
        """Raise :class:`RegistrationError` for unusable inputs, naming the node and what to do."""
        try:
            geometry.check_volume(self.fixed, "fixed volume")
            geometry.check_volume(self.moving, "moving volume")
        except geometry.GeometryError as exc:
            raise RegistrationError(str(exc)) from None
        if self.fixed is self.moving or self.fixed.GetID() == self.moving.GetID():
            raise RegistrationError("the fixed and the moving volume are the same node; choose two different volumes.")
        if self.scene is None:
            raise RegistrationError("the fixed volume is not in a scene.")
        self.crop_box()  # an ROI without size stops here
        result = self.fixed.GetParentTransformNode()
        if is_result_transform(result):  # hardening, the advice for other non-linear transforms, would resample it
            raise RegistrationError(f"the fixed volume '{self.fixed.GetName()}' is under '{result.GetName()}', a "
                                    "result of this module (from registering it as a moving volume); take it out "
                                    "from under that transform (Data module) to register onto the volume as it is.")
        try:
            self._fixed_ijk_to_world = geometry.world_ijk_to_ras(self.fixed)
            self._moving_base_node = moving_base_node(self.moving)
            base = moving_base_to_world(self.moving)
        except geometry.GeometryError as exc:
            raise RegistrationError(str(exc)) from None
        self._moving_base = base
        self._moving_ijk_to_world = geometry.ijk_to_ras(self.moving) if base is None else \
            base @ geometry.ijk_to_ras(self.moving)
        self._geometry: dict[str, np.ndarray] = {}
        for node, ref, ref_geometry, what, ref_what, moving_side in (
                (self.fixed_mask, self.fixed, self._fixed_ijk_to_world, "fixed mask", "fixed volume", False),
                (self.fixed_labels, self.fixed, self._fixed_ijk_to_world, "fixed label map", "fixed volume", False),
                (self.moving_mask, self.moving, self._moving_ijk_to_world, "moving mask", "moving volume", True),
                (self.moving_labels, self.moving, self._moving_ijk_to_world, "moving label map", "moving volume",
                 True)):
            if node is None:
                continue
            if segmentations.is_segmentation(node):
                self._check_segmentation(node, ref, what, ref_what, moving_side)
                continue
            try:
                geometry.check_volume(node, what)
                if moving_side:
                    node_base = moving_base_to_world(node)
                    node_geometry = geometry.ijk_to_ras(node) if node_base is None else \
                        node_base @ geometry.ijk_to_ras(node)
                else:
                    node_geometry = geometry.world_ijk_to_ras(node)
            except geometry.GeometryError as exc:
                raise RegistrationError(str(exc)) from None
            if not _same_grid(node, node_geometry, ref, ref_geometry):
                if _same_grid(node, geometry.ijk_to_ras(node), ref, geometry.ijk_to_ras(ref)):  # same voxels
                    raise RegistrationError(f"the {what} '{node.GetName()}' is not under the same transform as the "
                                            f"{ref_what} '{ref.GetName()}'; place both under the same transform "
                                            "(Data module) or harden it.")
                raise RegistrationError(
                    f"the {what} '{node.GetName()}' is not on the grid of the {ref_what} '{ref.GetName()}'; "
                    "resample it onto that volume first (Resample Scalar/Vector/DWI Volume module, "
                    "nearest neighbour for labels).")
            self._geometry[node.GetID()] = node_geometry
        # a structure gets one label on both sides: a segmentation's segments take the labels the other side's label
        # map gives the same names (the moving segmentation's when both are segmentations)
        self._label_values: dict[str, dict[str, int]] = {}
        if segmentations.is_segmentation(self.moving_labels):
            self._label_values[self.moving_labels.GetID()] = segmentations.label_values(self.moving_labels,
                                                                                        self.fixed_labels)
        elif segmentations.is_segmentation(self.fixed_labels) and self.moving_labels is not None:
            self._label_values[self.fixed_labels.GetID()] = segmentations.label_values(self.fixed_labels,
                                                                                       self.moving_labels)
        if self.fixed_labels is not None and self.moving_labels is None:  # the engine refuses it: it would do nothing
            raise RegistrationError("a fixed label map alone does nothing: Dice needs a label map (or segmentation) of "
                                    "the moving volume too (a moving one alone is warped onto the fixed volume).")
        if self.settings.labels and (self.fixed_labels is None or self.moving_labels is None):
            raise RegistrationError("the labels to score need a label map of both volumes (Dice).")
        self._check_fiducials()
        self._check_outputs()
        if self.settings.device not in DEVICES:
            raise RegistrationError(f"unknown device '{self.settings.device}'; use auto, cpu or cuda.")
        self._model_argument = self._check_model()
        masks = [what for what, node in (("fixed mask", self.fixed_mask), ("moving mask", self.moving_mask))
                 if node is not None]
        if self._model_argument and masks and not self.settings.refine_steps and not self.settings.affine_stage():
            # svreg register refuses them: the network alone would ignore them
            them = " and ".join(masks)
            raise RegistrationError(f"the {them} restrict{'s' if len(masks) == 1 else ''} the similarity of the "
                                    "affine stage and of the refine steps, and both are off: tick Affine "
                                    f"pre-alignment, set Refine steps above 0, or clear the {them}.")

    def _check_segmentation(self, node, ref, what: str, ref_what: str, moving_side: bool) -> None:
        """A segmentation is exported onto its volume's grid: it needs segments and the volume's transforms."""
        if not segmentations.segment_ids(node):
            raise RegistrationError(f"the {what} '{node.GetName()}' has no segments.")
        try:
            if moving_side:
                segmentations.check_parent(node, self._moving_base, moving_base_to_world(node), what, ref_what)
            else:
                segmentations.check_parent(node, geometry.parent_to_world(ref), geometry.parent_to_world(node),
                                           what, ref_what)
        except geometry.GeometryError as exc:
            raise RegistrationError(str(exc)) from None

    def _check_fiducials(self) -> None:
        """The moving list must sit where the moving volume does (it is placed under the result); with a fixed list
        too, both must pair up point by point (the TRE), known before the run rather than after it."""
        if self.moving_fiducials is None:
            return
        problem = self.fixed_fiducials is not None and \
            landmarks.pair_count_problem(self.fixed_fiducials, self.moving_fiducials)
        if problem:
            raise RegistrationError(f"the fiducial lists cannot be paired for the target registration error: {problem}"
                                    "; correct them, or clear the fixed list to register without a TRE.")
        try:
            base = moving_base_to_world(self.moving_fiducials)
        except geometry.GeometryError as exc:
            raise RegistrationError(str(exc)) from None
        if not np.allclose(np.eye(4) if base is None else base,
                           np.eye(4) if self._moving_base is None else self._moving_base, atol=1e-4):
            raise RegistrationError(f"the moving fiducials '{self.moving_fiducials.GetName()}' are not under the "
                                    "same transform as the moving volume; place both under the same transform.")

    def _check_outputs(self) -> None:
        """The nodes to update in place (:attr:`reuse`) must be none of the inputs, and each serve one output: the
        run would write a map into the user's volume or label map (or rename it as an earlier run's output), or one
        output over another."""
        inputs = (("fixed volume", self.fixed), ("moving volume", self.moving), ("fixed mask", self.fixed_mask),
                  ("moving mask", self.moving_mask), ("fixed label map", self.fixed_labels),
                  ("moving label map", self.moving_labels))
        chosen: dict[str, str] = {}
        for role, node in (("transform", self.reuse.transform), ("inverse transform", self.reuse.inverse),
                           ("lambda map", self.reuse.lambda_map), ("Jacobian", self.reuse.jacobian),
                           ("warped volume", self.reuse.warped), ("warped labels", self.reuse.warped_labels)):
            if node is None or node.GetScene() is not self.scene:
                continue  # a node removed from the scene is not updated: a new one is made
            for what, source in inputs:
                if source is not None and source.GetID() == node.GetID():
                    raise RegistrationError(f"the output node for the {role} is the {what} '{node.GetName()}', which "
                                            "the run would overwrite; choose another node for the "
                                            f"{role} (Outputs), or none for a new one.")
            if node.GetID() in chosen:
                raise RegistrationError(f"the node '{node.GetName()}' is chosen as the output for both the "
                                        f"{chosen[node.GetID()]} and the {role}; choose another node for one of them "
                                        "(Outputs), or none for a new one.")
            chosen[node.GetID()] = role

    def _check_model(self) -> str | None:
        """The engine's ``--model`` argument (``None`` for the pairwise method), checked before any start,
        with the regularisation codes (:attr:`RegistrationSettings.codes`) the model must accept."""
        method, steps, codes = self.settings.method, self.settings.refine_steps, self.settings.codes
        if method not in METHODS:
            raise RegistrationError(f"unknown method '{method}'; use {' or '.join(METHODS)}.")
        if not isinstance(codes, (tuple, list)) or len(codes) != 2:
            raise RegistrationError(f"codes must be a pair (alpha_prime, lambda_max), each a number or None; "
                                    f"got {codes!r}.")
        chosen = any(c is not None for c in codes)
        if method == "pairwise":
            if chosen:
                raise RegistrationError("the codes (alpha_prime, lambda_max) choose a learned model's "
                                        "regularisation; for pairwise registration set them in the parameters.")
            return None
        overrides = self.settings.overrides
        ignored = [what for what, on in (("the similarity", overrides.get("similarity") is not None),
                                         ("a uniform regulariser (spr off)", overrides.get("spr") is False)) if on]
        if ignored:  # svreg register refuses --similarity and --no-spr with --model; in a preset file it ignores them
            raise RegistrationError(f"{' and '.join(ignored)} cannot be chosen for a learned model: it predicts, and "
                                    "its refine steps refine, with those it was trained with; register with the "
                                    "pairwise method to choose them.")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 <= steps <= REFINE_STEPS_MAX:
            raise RegistrationError(f"refine steps must be a whole number from 0 to {REFINE_STEPS_MAX} "
                                    f"(got {steps!r}).")
        try:
            models.check_code_numbers(*codes)
            argument = models.resolve_model(self.settings.model)
            info = models.model_info(self.settings.model) if chosen else None
            if info is not None:
                info.check_codes(*codes, refine_steps=steps)
        except models.ModelError as exc:
            raise RegistrationError(str(exc)) from None
        return argument

    def export_inputs(self, workdir: Path) -> runner.RegisterRequest:
        """Write the inputs into ``workdir/inputs`` and return the engine request (after :meth:`validate`);
        the engine will write into ``workdir/output``."""
        inputs = Path(workdir) / "inputs"
        inputs.mkdir()

        def export(node, name: str, what: str, mask: bool = False) -> Path | None:
            return None if node is None else self.export_node(node, inputs / f"{name}.nii.gz", what, mask=mask)

        preset_file = inputs / "parameters.json"
        preset_file.write_text(json.dumps(self.settings.preset_document(), indent=2), encoding="utf-8")
        return runner.RegisterRequest(
            fixed=export(self.fixed, "fixed", "fixed volume"),
            moving=export(self.moving, "moving", "moving volume"),
            output=Path(workdir) / "output",
            fixed_mask=export(self.fixed_mask, "fixed_mask", "fixed mask", mask=True),
            moving_mask=export(self.moving_mask, "moving_mask", "moving mask", mask=True),
            fixed_labels=export(self.fixed_labels, "fixed_labels", "fixed label map"),
            moving_labels=export(self.moving_labels, "moving_labels", "moving label map"),
            labels=self.settings.labels or None,
            preset=str(preset_file),
            device=self.settings.device,
            label_interpolation=self.settings.label_interpolation,
            model=self._model_argument,
            refine=int(self.settings.refine_steps) if self._model_argument else None,
            alpha_prime=self.settings.codes[0] if self._model_argument else None,
            lambda_max=self.settings.codes[1] if self._model_argument else None,
            crop_fixed=self.crop_box(),
            outputs=self.engine_outputs(),
            # the work folder is read back at once and deleted: compressing it would only cost time (a kept
            # folder is for the user, and gets the engine's usual compression)
            gzip_level=None if self.settings.keep_temporary_files else 0,
        )

    def export_node(self, node, path: Path, what: str, mask: bool = False) -> Path:
        """Write one of this job's volumes, label maps, masks or segmentations (after :meth:`validate`) as NIfTI
        where the registration sees it: the moving side without a previous result of this module. A ``mask``
        without any voxel inside is refused (:class:`~.geometry.GeometryError`): the engine would register
        nothing and report success."""
        if segmentations.is_segmentation(node):
            moving_side = node is self.moving_mask or node is self.moving_labels
            reference = self.moving if moving_side else self.fixed
            return segmentations.export_labelmap(
                node, reference, path, what=what,
                ijk_to_world=self._moving_ijk_to_world if moving_side else self._fixed_ijk_to_world, mask=mask,
                labels=None if mask else self._label_values.get(node.GetID()))
        if node is self.fixed:
            ijk_to_world = self._fixed_ijk_to_world
        elif node is self.moving:
            ijk_to_world = self._moving_ijk_to_world
        else:
            ijk_to_world = self._geometry[node.GetID()]
        if mask:
            geometry.check_mask(node, what)
        return geometry.export_volume(node, path, what=what, ijk_to_world=ijk_to_world)

    def engine_outputs(self) -> list[str]:
        """The engine outputs :meth:`load_outputs` reads, so that the engine spends no time on what is not
        loaded (the ITK transform file, an unwanted inverse, the figure); a work folder that is kept
        also gets the ITK transform and the report figure."""
        keep = self.settings.keep_temporary_files
        wanted = ["displacement", "regularization", "jacobian"]
        for name, on in (("warped", self.settings.create_warped), ("inverse", self.settings.create_inverse),
                         ("labels", self.moving_labels is not None), ("transform", keep), ("figure", keep)):
            if on:
                wanted.append(name)
        return wanted

    def crop_box(self) -> tuple[float, ...] | None:
        """Two opposite corners (world RAS mm) of :attr:`fixed_roi`'s box, or ``None`` without an ROI."""
        if self.fixed_roi is None:
            return None
        bounds = [0.0] * 6
        self.fixed_roi.GetRASBounds(bounds)  # world (parent transforms applied): xmin, xmax, ymin, ...
        if not all(np.isfinite(bounds)) or any(bounds[2 * a + 1] <= bounds[2 * a] for a in range(3)):
            raise RegistrationError(f"the ROI '{self.fixed_roi.GetName()}' has no size; place it over the part "
                                    "of the fixed volume to register, or clear the ROI choice.")
        return (*bounds[0::2], *bounds[1::2])

    # ---- running

    def start(self) -> RegistrationJob:
        """Check the inputs, write them to a new temporary folder and start the engine."""
        self.validate()
        engine = runner.engine_path()
        if engine is None:
            import importlib.util

            if importlib.util.find_spec("svreg_core") is None:
                raise RegistrationError("the registration engine (svreg_core) was not found next to the module; "
                                        "reinstall the SpatialVaryingReg extension.")
        root = Path(self.settings.temp_root or default_temp_root()).resolve()  # the child runs in its own folder
        root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="SpatialVaryingReg-", dir=root))
        self.output_dir = self.workdir / "output"
        try:
            request = self.export_inputs(self.workdir)
            env = self.env if self.env is not None else runner.child_environment(engine)
            self.started_at = time.monotonic()
            self.child = runner.start_registration(request, python=self.python, env=env, cwd=self.workdir,
                                                   on_event=self.on_event, on_log=self.on_log)
        except (geometry.GeometryError, OSError) as exc:
            self._cleanup(force=True)
            raise RegistrationError(str(exc)) from None
        except BaseException:
            self._cleanup(force=True)
            raise
        if self.on_log is not None:
            if self._model_argument:
                alpha_prime, lambda_max = self.settings.codes
                at = "".join(f", {name} {value:g}" for name, value in (("alpha_prime", alpha_prime),
                                                                         ("lambda_max", lambda_max))
                             if value is not None)
                self.on_log(f"Learned model {self._model_argument}{at}, then {self.settings.refine_steps} "
                            "refinement steps.")
            self.on_log(f"Started the engine: {' '.join(self.child.command)}")
        return self

    def preview_key(self) -> tuple:
        """What a :class:`PreviewEngine` serving this job depends on (after :meth:`validate`): the input nodes
        with their voxels' modification times and world geometry, the model, the preset with its overrides
        (the affine stage), the device, the crop box and the label settings. Equal keys: the same engine
        gives this job's result."""
        def node_key(node, ijk_to_world) -> tuple | None:
            if node is None:
                return None
            if segmentations.is_segmentation(node):
                content = segmentations.modified_time(node)
                ijk_to_world = geometry.parent_to_world(node)
            else:
                content = node.GetImageData().GetMTime()
            matrix = None if ijk_to_world is None else tuple(np.round(np.asarray(ijk_to_world), 6).ravel())
            return node.GetID(), content, matrix

        return (node_key(self.fixed, self._fixed_ijk_to_world), node_key(self.moving, self._moving_ijk_to_world),
                *(node_key(node, self._geometry.get(node.GetID()) if node is not None else None)
                  for node in (self.fixed_mask, self.moving_mask, self.fixed_labels, self.moving_labels)),
                self._model_argument, json.dumps(self.settings.preset_document(), sort_keys=True),
                self.settings.device, self.crop_box(), tuple(self.settings.labels or ()),
                self.settings.label_interpolation)

    def send_to(self, engine: runner.PreviewProcess, output: Path) -> RegistrationJob:
        """Run this job as one request to a running preview engine started for its inputs (see
        :class:`PreviewEngine`): the network alone at the job's codes, the outputs of
        :meth:`engine_outputs` written into the new folder ``output`` (removed once loaded)."""
        self.workdir = self.output_dir = Path(output)
        fields: dict[str, Any] = {"output": str(output), "outputs": self.engine_outputs()}
        for name, value in zip(("alpha_prime", "lambda_max"), self.settings.codes):
            if value is not None:
                fields[name] = float(value)
        self.started_at = time.monotonic()
        self.child = engine.submit(fields, on_event=self.on_event)
        if self.on_log is not None:
            at = ", ".join(f"{name} {value:g}" for name, value in fields.items() if name in ("alpha_prime",
                                                                                            "lambda_max"))
            self.on_log(f"Preview at {at or 'the model defaults'} (network only), engine process "
                        f"{engine.process.pid}.")
        return self

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    def poll(self) -> bool:
        """Handle new output; when the engine has finished, create the output nodes. ``True`` while running."""
        if self.child is None or self.outputs is not None or self.error is not None:
            return False
        if self.child.poll():
            return True
        self._complete(self.child.result)
        return False

    def request_stop(self) -> None:
        """Ask the engine's process tree to stop without waiting (GUI thread): :meth:`poll` ends the job as
        cancelled once it has gone (the temporary folder is removed then; the scene is left untouched)."""
        if self.child is None or self.outputs is not None or self.error is not None:
            return
        self.cancelled = True
        self.child.request_stop()

    def cancel(self, reason: str | None = None) -> None:
        """Kill the engine's process tree, remove the temporary folder; the scene is left untouched. ``reason``:
        the job's error message (default: cancelled by the user)."""
        if self.child is None or self.outputs is not None or self.error is not None:
            return
        self.cancelled = True
        self.child.cancel(reason=reason)
        self._complete(self.child.result)

    def run(self, timeout: float | None = None, idle: Callable[[], None] | None = None) -> RegistrationOutputs:
        """Start (if needed) and block until done; raise :class:`RegistrationError` on failure. Interrupted (e.g.
        KeyboardInterrupt, an exception of ``idle``), the engine's process tree is ended and the temporary folder
        removed before the exception goes on."""
        if self.child is None:
            self.start()
        t0 = time.monotonic()
        timed_out = False
        try:
            while self.poll():
                if idle is not None:
                    idle()
                if timeout is not None and time.monotonic() - t0 > timeout:
                    timed_out = True
                    self.cancel(reason=runner.time_limit_message(timeout))
                    break
                time.sleep(0.05)
        except BaseException:
            self.cancel(reason="the registration was interrupted.")
            raise
        if self.outputs is None:  # a time limit is a failure to report, not the user's cancel
            cls = RegistrationCancelled if self.cancelled and not timed_out else RegistrationError
            raise cls(self.error or "the registration did not finish.")
        return self.outputs

    # ---- results

    def _complete(self, result: runner.RunResult) -> None:
        """Load the outputs or record the failure; the job ends here whatever happens (``error`` or
        ``outputs`` is set, so ``poll`` returns ``False`` from now on) and the folder is kept or removed
        as the settings say."""
        try:
            if result.status == runner.SUCCEEDED:
                self.outputs = self.load_outputs(self.output_dir)
            else:
                self.cancelled = self.cancelled or result.status == runner.CANCELLED  # e.g. its engine stopped
                self.error = result.message or "the registration failed."
        except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError, a big field MemoryError...
            self.error = f"the engine finished but its outputs could not be loaded: {one_line(exc)}"
        finally:
            if self.outputs is None and self.error is None:  # a BaseException (e.g. KeyboardInterrupt) went by
                self.error = "the registration was interrupted."
            self._cleanup()

    def _cleanup(self, force: bool = False) -> None:
        if self.workdir is None:
            return
        keep = self.settings.keep_temporary_files and not force and not self.cancelled
        if keep:
            if self.outputs is not None:
                self.outputs.output_dir = self.output_dir
            if self.on_log is not None:
                self.on_log(f"Temporary files kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def load_outputs(self, outdir: Path) -> RegistrationOutputs:
        """Create (or update, :class:`OutputNodes`) the output nodes from the engine's output folder.

        A fixed or moving volume removed from the scene meanwhile stops it (:class:`RegistrationError`). Every
        file is read before any node is touched, so a file that cannot be read leaves the scene
        as it was; nodes created before a later failure are removed again.
        """
        scene = self.scene
        for node, what in ((self.fixed, "fixed volume"), (self.moving, "moving volume")):
            if node.GetScene() is not scene:  # deleted by the user while the engine ran
                raise RegistrationError(f"the {what} '{node.GetName()}' was removed from the scene during the "
                                        "registration; nothing was loaded.")
        outdir = Path(outdir)
        report = json.loads((outdir / "report.json").read_text(encoding="utf-8"))
        first_result = next_run_number(scene) == 1
        # a result updated in place keeps its number: the status line and any node added to it name its nodes' run
        updated, kept = self.reuse.transform, ""
        if updated is not None and updated.IsA("vtkMRMLGridTransformNode") and updated.GetScene() is scene:
            kept = updated.GetAttribute(RUN_ATTRIBUTE) or ""
        number = int(kept) if kept.isdigit() else next_run_number(scene)
        run_name = f"{self.moving.GetName()} to {self.fixed.GetName()} (SVReg {number})"

        displacement, grid = geometry.read_displacement_file(outdir / "displacement.nii.gz")
        if self._moving_base is not None:
            # the engine registered the volume as seen in the world; the node placed under the result
            # needs the mapping into its own coordinates
            displacement = geometry.compose_with_linear(displacement, grid, np.linalg.inv(self._moving_base))
        inverse_field = (geometry.read_displacement_file(outdir / "inverse_displacement.nii.gz")
                         if self.settings.create_inverse else None)
        lambda_data = geometry.read_volume(outdir / "regularization.nii.gz")
        jacobian_data = geometry.read_volume(outdir / "jacobian.nii.gz")
        warped_data = geometry.read_volume(outdir / "warped.nii.gz") if self.settings.create_warped else None
        labels_file = outdir / "warped_labels.nii.gz"
        labels_data = geometry.read_volume(labels_file, labelmap=True) \
            if self.moving_labels is not None and labels_file.is_file() else None

        reuse = self.reuse
        created = []

        def target(node, kind: str):
            return node if node is not None and node.IsA(kind) and node.GetScene() is scene else None

        def new_or(node, kind: str, name: str):
            node = target(node, kind)
            if node is None:
                node = scene.AddNewNodeByClass(kind, name)
                created.append(node)
            return node

        fixed_before = moving_before = None
        if self.fixed_fiducials is not None and self.moving_fiducials is not None and \
                not landmarks.pair_count_problem(self.fixed_fiducials, self.moving_fiducials):
            fixed_before = landmarks.world_points(self.fixed_fiducials)
            # not through a previous result the list may sit under (registering again starts from the images)
            moving_before = landmarks.points_through(self.moving_fiducials, self._moving_base)
        try:
            transform = new_or(reuse.transform, "vtkMRMLGridTransformNode", f"{run_name} transform")
            geometry.set_grid_transform(transform, displacement, grid)
            geometry.set_registration_references(transform, self.fixed, self.moving)
            inverse = None
            if inverse_field is not None:
                inverse = new_or(reuse.inverse, "vtkMRMLGridTransformNode", f"{run_name} inverse transform")
                geometry.set_grid_transform(inverse, *inverse_field)
                geometry.set_registration_references(inverse, self.moving, self.fixed)
            lambda_map = self._place(lambda_data, f"{run_name} lambda", target(reuse.lambda_map,
                                                                                  "vtkMRMLScalarVolumeNode"), created)
            lambda_shown = display.apply_lambda_display(lambda_map)
            jacobian = self._place(jacobian_data, f"{run_name} Jacobian", target(reuse.jacobian,
                                                                                 "vtkMRMLScalarVolumeNode"), created)
            display.apply_jacobian_display(jacobian)
            warped = None
            if warped_data is not None:
                warped = self._place(warped_data, f"{run_name} warped",
                                     target(reuse.warped, "vtkMRMLScalarVolumeNode"), created)
                source = self.moving.GetDisplayNode()
                if source is not None and warped.GetDisplayNode() is not None and source.GetColorNodeID():
                    warped.GetDisplayNode().SetAndObserveColorNodeID(source.GetColorNodeID())
            warped_labels = None
            if labels_data is not None:
                name = f"{run_name} warped labels"
                if segmentations.is_segmentation(self.moving_labels):
                    warped_labels = new_or(reuse.warped_labels, "vtkMRMLSegmentationNode", name)
                    staged = geometry.place_volume(scene, labels_data, f"{name} (import)")
                    try:
                        segmentations.fill_from_labelmap(warped_labels, staged, like=self.moving_labels,
                                                         labels=self._label_values.get(self.moving_labels.GetID()))
                    finally:  # with its display node, which removing the volume leaves behind
                        for staging in (staged.GetDisplayNode(), staged):
                            if staging is not None:
                                scene.RemoveNode(staging)
                    warped_labels.CreateDefaultDisplayNodes()
                else:
                    warped_labels = self._place(labels_data, name, target(reuse.warped_labels,
                                                                          "vtkMRMLLabelMapVolumeNode"), created)
                    display.apply_label_display(warped_labels, like=self.moving_labels)
        except BaseException:
            for node in created:
                scene.RemoveNode(node)
            raise

        for old, new in ((reuse.transform, transform), (reuse.lambda_map, lambda_map), (reuse.jacobian, jacobian),
                         (reuse.warped, warped), (reuse.warped_labels, warped_labels), (reuse.inverse, inverse)):
            if old is None or old.GetScene() is not scene:
                continue
            stale = old.GetName().endswith(STALE_SUFFIX)
            if old is new and stale:  # an earlier run's leftover (e.g. its inverse) holds this run's result again
                old.SetName(old.GetName()[:-len(STALE_SUFFIX)])
            elif old is not new and not stale and old.GetAttribute(RUN_ATTRIBUTE):  # a user's own node is no run's
                old.SetName(old.GetName() + STALE_SUFFIX)
        for node, role in ((transform, "transform"), (lambda_map, "lambda"), (jacobian, "jacobian"),
                           (warped, "warped"), (warped_labels, "warped labels"), (inverse, "inverse transform")):
            if node is not None:
                node.SetAttribute(RUN_ATTRIBUTE, str(number))
                node.SetAttribute(ROLE_ATTRIBUTE, role)
        transform.SetAttribute(REPORT_ATTRIBUTE, json.dumps({k: report.get(k) for k in
                                                             ("method", "model", "codes", "metrics", "timing",
                                                              "device", "parameters")}))
        transform.SetNodeReferenceID(INITIAL_ALIGNMENT_ROLE, None if self._moving_base_node is None
                                     else self._moving_base_node.GetID())
        self.moving.SetAndObserveTransformNodeID(transform.GetID())
        if self.moving_fiducials is not None:
            self.moving_fiducials.SetAndObserveTransformNodeID(transform.GetID())
        tre = None
        if moving_before is not None:
            tre = landmarks.target_registration_error(fixed_before, moving_before,
                                                      landmarks.world_points(self.moving_fiducials))
        if self.settings.show_results and first_result:
            display.show_in_slice_views(scene, background=self.fixed, foreground=lambda_map)
        if self.on_log is not None:  # the colours' meaning: the window is one of a few fixed ones
            self.on_log(f"λ map colours: dark purple λ <= {lambda_shown[0]:g} to yellow λ = {lambda_shown[1]:g}.")
        elapsed = time.monotonic() - self.started_at if self.started_at else None
        text = status_text(run_name, report, elapsed, [tre.text()] if tre is not None else [])
        if tre is None and self.fixed_fiducials is not None and self.moving_fiducials is not None:
            text += f" TRE not computed: {landmarks.pair_count_problem(self.fixed_fiducials, self.moving_fiducials)}."
        return RegistrationOutputs(run_name, transform, lambda_map, jacobian, warped, warped_labels, report,
                                   text, inverse=inverse, tre=tre)

    def _place(self, data, name: str, node, created: list):
        """A read volume into ``node`` (updated in place) or into a new node (recorded in ``created``)."""
        placed = geometry.place_volume(self.scene, data, name, node)
        if node is None:
            created.append(placed)
        return placed


class PreviewEngine:
    """The preview's long-lived engine: one ``svreg_core.cli preview`` child (:class:`runner.PreviewProcess`)
    for one set of inputs and settings (:meth:`RegistrationJob.preview_key`).

    :meth:`start_job` sends a preview job to the running engine when it serves the job's inputs and settings,
    else stops it and starts a new one (the volumes are exported and read, the model loaded and the affine
    stage run once per engine). Nothing here blocks on the child except :meth:`stop` with ``wait``; a stopped
    child is reaped by :meth:`poll`.
    """

    def __init__(self) -> None:
        self.process: runner.PreviewProcess | None = None
        self.key: tuple | None = None
        self.workdir: Path | None = None
        self._keep = False
        self._requests = 0
        self._stopping: list[tuple[runner.PreviewProcess, Path | None]] = []

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def pid(self) -> int | None:
        """The running engine's process id (``None``: none runs)."""
        return self.process.process.pid if self.running else None

    def serves(self, job: RegistrationJob) -> bool:
        """Whether the running engine gives ``job``'s result (``job`` validated)."""
        if self.process is not None:
            self.process.poll()  # notices an engine that has ended meanwhile (crashed, killed)
        return self.running and self.key == job.preview_key()

    def start_job(self, job: RegistrationJob) -> RegistrationJob:
        """Start the (not yet started) preview ``job`` on this engine, (re)starting the engine when it does
        not serve the job's inputs and settings; :class:`RegistrationError` before anything starts when the
        inputs are unusable."""
        job.validate()
        if job._model_argument is None:
            raise RegistrationError("the preview needs a learned model (choose the learned method).")
        if not self.serves(job):
            self.stop(wait=False)
            self._launch(job)
        self._requests += 1
        return job.send_to(self.process, self.workdir / f"preview-{self._requests}")

    def _launch(self, job: RegistrationJob) -> None:
        key = job.preview_key()  # before the export: reading the nodes must not change it
        engine = runner.engine_path()
        root = Path(job.settings.temp_root or default_temp_root()).resolve()  # the child runs in its own folder
        root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="SpatialVaryingReg-preview-", dir=root))
        self._keep = job.settings.keep_temporary_files
        try:
            request = job.export_inputs(self.workdir)
            env = job.env if job.env is not None else runner.child_environment(engine)
            self.process = runner.start_preview(request, python=job.python, env=env, cwd=self.workdir,
                                                on_log=job.on_log)
        except BaseException as exc:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            if isinstance(exc, (geometry.GeometryError, OSError)):
                raise RegistrationError(str(exc)) from None
            raise
        self.key = key
        if job.on_log is not None:
            job.on_log("Started the preview engine (reads the volumes and runs the affine stage once): "
                       + " ".join(self.process.command))

    def stop(self, wait: bool = True) -> None:
        """End the engine's process tree (SIGTERM, SIGKILL after a grace time) and remove its folder (unless
        kept); a request it was computing ends as cancelled. ``wait=False``: without blocking, :meth:`poll`
        finishes the job."""
        if self.process is not None:
            self.process.request_stop()
            self._stopping.append((self.process, None if self._keep else self.workdir))
        self.process = self.key = self.workdir = None
        while self.poll() and wait:
            time.sleep(0.02)

    def poll(self) -> bool:
        """Reap stopped engines (their folders removed); ``True`` while one is still ending."""
        ending = []
        for process, folder in self._stopping:
            if process.poll():
                ending.append((process, folder))
            elif folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._stopping = ending
        return bool(ending)
