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


def export_labelmap(segmentation_node, reference_volume, path: str | Path, *, what: str,
                    ijk_to_world: np.ndarray) -> Path:
    """Write the segmentation as a label map NIfTI on ``reference_volume``'s grid (geometry ``ijk_to_world``).

    A temporary label map node is added to the scene for Slicer's exporter (it needs one) and removed
    before returning; the scene is otherwise unchanged.
    """
    import slicer
    import vtk

    ids = segment_ids(segmentation_node)
    if not ids:
        raise geometry.GeometryError(f"the {what} '{segmentation_node.GetName()}' has no segments.")
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentation_node.GetName()} (export)")
    try:
        names = vtk.vtkStringArray()
        for segment_id in ids:
            names.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, names, labelmap, reference_volume):
            raise geometry.GeometryError(f"the {what} '{segmentation_node.GetName()}' could not be converted "
                                         "to a label map (does it have a binary labelmap representation?).")
        return geometry.export_volume(labelmap, path, what=what, ijk_to_world=ijk_to_world)
    finally:
        scene.RemoveNode(labelmap)


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
