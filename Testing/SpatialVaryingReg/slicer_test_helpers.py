"""Shared helpers of the Slicer-extension tests (imported by the test modules; see conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoint import HYPER_RANGES, tiny_checkpoint

HYPER = HYPER_RANGES  # code ranges of the HyperSPR test models


def add_volume(scene, data_ijk: np.ndarray, ijk_to_ras: np.ndarray, name: str, labelmap: bool = False):
    """Add a volume node from an ``(I, J, K)`` array and its IJK->RAS matrix."""
    import vtk
    import vtk.util.numpy_support as ns

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    data = np.asarray(data_ijk)
    image = vtk.vtkImageData()
    image.SetDimensions(*data.shape)
    flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel()
    image.GetPointData().SetScalars(ns.numpy_to_vtk(flat, deep=True))
    node.SetAndObserveImageData(image)
    from SpatialVaryingRegLib import geometry

    node.SetIJKToRASMatrix(geometry.array_to_matrix(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def fiducials(scene, points, name: str):
    """Add a markups point list with the ``(N, 3)`` RAS mm ``points``."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for p in points:
        node.AddControlPoint(*[float(v) for v in p])
    return node


def blob_image(points: np.ndarray) -> np.ndarray:
    """A smooth test image of world points ``(..., 3)`` (two Gaussian blobs, mm units)."""
    r1 = ((points - np.array([0.0, 0.0, 0.0])) ** 2).sum(-1)
    r2 = ((points - np.array([12.0, -8.0, 6.0])) ** 2).sum(-1)
    return (np.exp(-r1 / (2 * 11.0 ** 2)) + 0.6 * np.exp(-r2 / (2 * 6.0 ** 2))).astype(np.float32)


def oblique_affine(spacing=(1.5, 1.0, 2.5), angle=0.35, origin=(-20.0, -16.0, -24.0)) -> np.ndarray:
    """An oblique (rotated about two axes), anisotropic IJK->RAS matrix."""
    ca, sa = np.cos(angle), np.sin(angle)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)], [0, np.sin(angle / 2), np.cos(angle / 2)]])
    a = np.eye(4)
    a[:3, :3] = rz @ rx @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def write_model(folder: Path, name: str = "tiny", weights: bool = True, **extra) -> Path:
    """A model folder as the engine writes it (only ``model.json`` is read by the module); ``extra``
    adds or replaces ``model.json`` keys (e.g. ``config={"hyper": {...}}``, ``alpha_prime=0.175``)."""
    from SpatialVaryingRegLib import models

    folder.mkdir(parents=True, exist_ok=True)
    doc = {"format": models.CHECKPOINT_FORMAT, "format_version": 1, "name": name, "architecture": "unet-spr",
           "network_spacing_mm": 4.0, "training": {"data": "OASIS, 100 T1 scans"}, **extra}
    (folder / models.DESCRIPTION_FILE).write_text(json.dumps(doc), encoding="utf-8")
    if weights:
        (folder / models.WEIGHTS_FILE).write_bytes(b"not read by the module")
    return folder


def tiny_hyper_checkpoint(folder: Path, hyper: dict | None = HYPER, name: str = "hyper-test") -> Path:
    """A real checkpoint saved by the engine (torch): a tiny 4 mm U-Net whose output the codes visibly
    change (``Testing/tiny_checkpoint.py``)."""
    pytest.importorskip("torch")
    return tiny_checkpoint(folder, name, hyper, spacing_mm=4.0, similarity="mse")
