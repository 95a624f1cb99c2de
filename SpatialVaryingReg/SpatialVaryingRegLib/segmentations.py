"""Segmentation nodes as masks and label maps (MRML only, no Qt).

The engine reads label maps (NIfTI, one integer per voxel). A ``vtkMRMLSegmentationNode`` given as a
mask or label map is exported with Slicer's segmentation logic onto the grid of the volume it belongs
to (fixed or moving): segment ``n`` of the segmentation (0-based order) becomes label ``n + 1``; as a
mask, every segment counts (label > 0). Warped labels come back as a Segmentation node when the moving
labels were one: label ``n + 1`` becomes a segment with the name and colour of the moving segment ``n``.
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
                    ijk_to_world: np.ndarray, mask: bool = False) -> Path:
    """Write the segmentation as a label map NIfTI on ``reference_volume``'s grid (geometry ``ijk_to_world``);
    as a ``mask`` it must have a voxel inside (:func:`~.geometry.check_mask`).

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


def fill_from_labelmap(segmentation_node, labelmap_node, like=None) -> None:
    """Replace the segments of ``segmentation_node`` by the labels of ``labelmap_node`` (label ``n + 1``
    named and coloured like segment ``n`` of ``like``, a segmentation, when given)."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node,
                                                                                      segmentation_node):
        raise geometry.GeometryError("the warped labels could not be converted to a segmentation.")
    if like is None:
        return
    source = like.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        label = segment.GetLabelValue()
        if 1 <= label <= source.GetNumberOfSegments():
            original = source.GetNthSegment(label - 1)
            segment.SetName(original.GetName())
            segment.SetColor(original.GetColor())
