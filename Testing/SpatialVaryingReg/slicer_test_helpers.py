"""Shared helpers of the Slicer-extension tests (imported by the test modules; see conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

#: Code ranges of the HyperSPR test models (as in Testing/svreg_core/test_registration_hyper.py).
HYPER = {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 10.0]}


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


def tiny_hyper_checkpoint(folder: Path, hyper: dict | None = HYPER, name: str = "hyper-test"):
    """A real checkpoint saved by the engine (torch): a tiny U-Net whose output the codes visibly change
    (as in Testing/svreg_core/test_registration_hyper.py)."""
    torch = pytest.importorskip("torch")
    from svreg_core.models import ModelInfo, build_model, save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model("unet-spr", {"encoder_features": [4, 4], "decoder_features": [4, 4, 4],
                                       "lambda_features": [4], **({"hyper": hyper} if hyper else {})})
        with torch.no_grad():
            net.velocity_head.weight.normal_(0.0, 0.2)
            if hyper:
                net.film.mlp[-1].weight.normal_(0.0, 1.0)
    info = ModelInfo(architecture=net.architecture, config=net.config, network_spacing_mm=4.0,
                     size_multiple=net.size_multiple, normalization="robust_normalize", similarity="mse",
                     lncc_window=5, prior="beta", alpha_prime=0.175, lambda_max=1.0, spr=True, integration_steps=5,
                     svreg_version="test", training={"data": "none (test net)"}, name=name)
    return save_checkpoint(folder / name, net, info)
