"""Segmentation nodes as masks and label maps (MRML only, no Qt).

The engine reads label maps (NIfTI, one integer per voxel). A ``vtkMRMLSegmentationNode`` given as a
mask or label map is exported with Slicer's segmentation logic onto the grid of the volume it belongs
to (fixed or moving): segment ``n`` of the segmentation (0-based order) becomes label ``n + 1``; as a
mask, every segment counts (label > 0). When the other image's label map names some of the same structures (its
segments, or a label map volume's colour table), the segments take its labels for them instead
(:func:`label_values`), so that Dice compares the same structures whatever the segments' order. Warped labels come
back as a Segmentation node when the moving labels were one: each label becomes a segment with the name and colour
of the moving segment exported as that label.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import geometry


def is_segmentation(node) -> bool:
    """Whether ``node`` is a ``vtkMRMLSegmentationNode``."""
    return node is not None and node.IsA("vtkMRMLSegmentationNode")


def segment_ids(segmentation_node) -> list[str]:
    """IDs of the node's segments, in order (segment ``n`` is exported as label ``n + 1``)."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _name_key(name: str) -> str:
    """A structure's name as names are compared: without case and surrounding blanks."""
    return name.strip().casefold()


def label_names(node) -> dict[str, int]:
    """The label value of each structure name of the label map ``node`` (see :func:`_name_key`): a segmentation's
    segments (segment ``n`` -> ``n + 1``, as exported), or the named entries of a label map volume's colour table
    (a label value is its entry's index) for the labels the volume holds (a default table names labels nobody
    painted), the first one of a name."""
    names: dict[str, int] = {}
    if is_segmentation(node):
        segmentation = node.GetSegmentation()
        for n, segment_id in enumerate(segment_ids(node)):
            names.setdefault(_name_key(segmentation.GetSegment(segment_id).GetName()), n + 1)
        return names
    display = node.GetDisplayNode()
    colors = display.GetColorNode() if display is not None else None
    if colors is None or not colors.IsA("vtkMRMLColorTableNode"):
        return names
    import vtk.util.numpy_support as ns

    values = ns.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).ravel()
    counted = values.dtype.kind in "iu" and values.size and values.min() >= 0 and values.max() < 2**20
    held = np.flatnonzero(np.bincount(values)) if counted else np.unique(values)
    for value in (int(v) for v in held if 0 < v < colors.GetNumberOfColors()):  # 0: the background
        name = _name_key(colors.GetColorName(value) or "")
        if name and name != "(none)":
            names.setdefault(name, value)
    return names


def label_values(segmentation_node, other=None) -> dict[str, int]:
    """The label each segment of ``segmentation_node`` is exported as (segment ID -> label value).

    Segment ``n`` -> ``n + 1``. When ``other`` (the other image's label map: a segmentation or a label map volume)
    names at least one of the segments (:func:`label_names`), a segment named like one of ``other``'s structures
    takes its label instead, and the other segments, in their order, the labels above every one of ``other``'s.
    """
    ids = segment_ids(segmentation_node)
    default = {segment_id: n + 1 for n, segment_id in enumerate(ids)}
    wanted = label_names(other) if other is not None else {}
    segmentation = segmentation_node.GetSegmentation()
    keys = [_name_key(segmentation.GetSegment(segment_id).GetName()) for segment_id in ids]
    if not any(key in wanted for key in keys):
        return default
    highest = len(segment_ids(other)) if is_segmentation(other) else \
        int(max(other.GetImageData().GetScalarRange()[1], 0))
    following = max(highest, *wanted.values()) + 1
    labels: dict[str, int] = {}
    for segment_id, key in zip(ids, keys):
        label = wanted.get(key)
        if label is None or label in labels.values():  # no namesake, or one taken by an earlier segment
            label, following = following, following + 1
        labels[segment_id] = label
    return labels


def _relabel(labelmap_node, values: list[int]) -> None:
    """Replace the labels ``1..n`` of ``labelmap_node`` (a staging node) by ``values[0..n-1]``."""
    import vtk.util.numpy_support as ns

    image = labelmap_node.GetImageData()
    table = np.array([0, *values], dtype=np.int32)
    relabelled = table[ns.vtk_to_numpy(image.GetPointData().GetScalars())]
    image.GetPointData().SetScalars(ns.numpy_to_vtk(relabelled.astype(np.int16 if table.max() < 2**15 else np.int32),
                                                    deep=True))


def modified_time(segmentation_node) -> int:
    """When the segmentation's content last changed: segments added, removed or renamed, or painted. Painting (the
    Segment Editor) writes into a segment's source representation and leaves the segmentation's own modification
    time as it was, so the representations' times are included."""
    segmentation = segmentation_node.GetSegmentation()
    source = segmentation.GetSourceRepresentationName()
    times = [segmentation.GetMTime()]
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        representation = segment.GetRepresentation(source)
        times += [segment.GetMTime()] + ([representation.GetMTime()] if representation is not None else [])
    return max(times)


def export_labelmap(segmentation_node, reference_volume, path: str | Path, *, what: str,
                    ijk_to_world: np.ndarray, mask: bool = False, labels: dict[str, int] | None = None) -> Path:
    """Write the segmentation as a label map NIfTI on ``reference_volume``'s grid (geometry ``ijk_to_world``);
    as a ``mask`` it must have a voxel inside (:func:`~.geometry.check_mask`). ``labels``: the label of each
    segment ID (:func:`label_values`; default: segment ``n`` as ``n + 1``).

    The segmentation must lie in the volume's own space (:func:`check_parent`; the volume may additionally sit
    under this module's result transform): it is exported onto a stand-in of the volume's grid placed under the
    segmentation's own parent, so Slicer's exporter resamples through no transform (it would resample through
    the transforms between the two parents: after a registration, through the previous result). The stand-in,
    the staging label map and every other node the export makes (display node, colour table) are removed before
    returning: the scene is otherwise unchanged.
    """
    import slicer
    import vtk

    ids = segment_ids(segmentation_node)
    if not ids:
        raise geometry.GeometryError(f"the {what} '{segmentation_node.GetName()}' has no segments.")
    scene = segmentation_node.GetScene()
    name = segmentation_node.GetName()
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} (export grid)")
        reference.SetAndObserveImageData(reference_volume.GetImageData())  # shared, not copied
        ijk_to_ras = vtk.vtkMatrix4x4()
        reference_volume.GetIJKToRASMatrix(ijk_to_ras)
        reference.SetIJKToRASMatrix(ijk_to_ras)
        reference.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} (export)")
        names = vtk.vtkStringArray()
        for segment_id in ids:
            names.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, names, labelmap, reference):
            raise geometry.GeometryError(f"the {what} '{name}' could not be converted "
                                         "to a label map (does it have a binary labelmap representation?).")
        if labels is not None and [labels[i] for i in ids] != list(range(1, len(ids) + 1)):
            _relabel(labelmap, [labels[i] for i in ids])
        if mask:
            geometry.check_mask(labelmap, what, name=name)
        return geometry.export_volume(labelmap, path, what=what, ijk_to_world=ijk_to_world)
    finally:  # every node made here (stand-in, label map, its display node, the exporter's colour table) goes
        made = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in made:
            if node.GetID() not in before:
                scene.RemoveNode(node)


def check_parent(segmentation_node, reference_base: np.ndarray | None, base: np.ndarray | None, what: str,
                 reference_what: str) -> None:
    """Raise unless the segmentation sits under the same (linear) transforms as its volume (``base``:
    the segmentation's to-world matrix, ``reference_base``: the volume's; ``None`` = identity)."""
    a = np.eye(4) if reference_base is None else reference_base
    b = np.eye(4) if base is None else base
    if not np.allclose(a, b, atol=1e-4):
        raise geometry.GeometryError(
            f"the {what} '{segmentation_node.GetName()}' is not under the same transform as the {reference_what}; "
            "place both under the same transform (Data module) or harden it.")


def fill_from_labelmap(segmentation_node, labelmap_node, like=None, labels: dict[str, int] | None = None) -> None:
    """Replace the segments of ``segmentation_node`` by the labels of ``labelmap_node``, each named and coloured
    like the segment of ``like`` (a segmentation, when given) exported as that label (``labels``, see
    :func:`label_values`; default: segment ``n`` as ``n + 1``)."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node,
                                                                                      segmentation_node):
        raise geometry.GeometryError("the warped labels could not be converted to a segmentation.")
    if like is None:
        return
    source = like.GetSegmentation()
    by_label = {label: segment_id for segment_id, label in (labels or label_values(like)).items()}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        original = source.GetSegment(by_label[segment.GetLabelValue()]) \
            if segment.GetLabelValue() in by_label else None
        if original is not None:
            segment.SetName(original.GetName())
            segment.SetColor(original.GetColor())
