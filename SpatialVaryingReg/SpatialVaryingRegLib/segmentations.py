"""Segmentation nodes as masks and label maps (MRML only, no Qt).

The engine reads label maps (NIfTI, one integer per voxel). A ``vtkMRMLSegmentationNode`` given as a
mask or label map is exported with Slicer's segmentation logic onto the grid of the volume it belongs
to (fixed or moving): segment ``n`` of the segmentation (0-based order) becomes label ``n + 1``; as a
mask, every segment counts (label > 0). When both label maps are segmentations that share segment names, the
moving segments take the labels of the fixed segments of the same name instead (:func:`label_values`), so that
Dice compares the same structures whatever the segments' order. Warped labels come back as a Segmentation node
when the moving labels were one: each label becomes a segment with the name and colour of the moving segment
exported as that label.
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


def _name_key(segmentation_node, segment_id: str) -> str:
    return segmentation_node.GetSegmentation().GetSegment(segment_id).GetName().strip().casefold()


def label_values(segmentation_node, match=None) -> dict[str, int]:
    """The label each segment of ``segmentation_node`` is exported as (segment ID -> label value).

    Segment ``n`` -> ``n + 1``. With ``match`` (the other image's segmentation) sharing at least one segment name
    (compared without case and surrounding blanks), a segment named like segment ``m`` of ``match`` -> ``m + 1``
    instead, and the other segments the labels after ``match``'s, in their order.
    """
    ids = segment_ids(segmentation_node)
    default = {segment_id: n + 1 for n, segment_id in enumerate(ids)}
    if match is None:
        return default
    wanted: dict[str, int] = {}
    for m, segment_id in enumerate(segment_ids(match)):
        wanted.setdefault(_name_key(match, segment_id), m + 1)
    keys = [_name_key(segmentation_node, segment_id) for segment_id in ids]
    if not any(key in wanted for key in keys):
        return default
    labels: dict[str, int] = {}
    following = len(segment_ids(match)) + 1
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
