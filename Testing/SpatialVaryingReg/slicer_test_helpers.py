"""Shared helpers of the Slicer-extension tests (imported by the test modules; see conftest.py)."""
from __future__ import annotations

import json
import os
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


def load_volume(scene, path: str | Path, name: str, *, labelmap: bool = False):
    """Read a NIfTI file into a new scalar (or label map) volume node of ``scene`` (``geometry.place_volume``)."""
    from SpatialVaryingRegLib import geometry

    return geometry.place_volume(scene, geometry.read_volume(path, labelmap=labelmap), name)


def array_ijk(volume_node) -> np.ndarray:
    """Voxel values as a copy in the engine's ``(I, J, K)`` order."""
    import vtk.util.numpy_support as ns

    image = volume_node.GetImageData()
    dims = image.GetDimensions()
    flat = ns.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.array(flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0))


def create_grid_transform_node(scene, displacement_ras: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str):
    """A new ``vtkMRMLGridTransformNode`` in ``scene`` holding the resampling mapping
    (``geometry.set_grid_transform``)."""
    from SpatialVaryingRegLib import geometry

    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    geometry.set_grid_transform(node, displacement_ras, ijk_to_ras_matrix)
    return node


def grid_transform_arrays(transform_node) -> tuple[np.ndarray, np.ndarray]:
    """``(displacement (I, J, K, 3) RAS mm, ijk_to_ras)`` of a grid transform node (from parent)."""
    import vtk.util.numpy_support as ns

    transform = transform_node.GetTransformFromParent()
    transform.Update()
    image = transform.GetDisplacementGrid()
    dims = image.GetDimensions()
    flat = ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0], 3)
    from SpatialVaryingRegLib import geometry

    direction = geometry.matrix_to_array(transform.GetGridDirectionMatrix())[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.array(flat.transpose(2, 1, 0, 3)), affine


def _proc_stat(pid: str) -> tuple[str, int] | None:
    """``(state, pgid)`` of a Linux process from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[2])


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    if os.path.isdir("/proc"):
        stat = _proc_stat(str(pid))
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process of the POSIX process group ``pgid`` still exists."""
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(entry)
                if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                    return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_engine_outputs(folder: Path, ijk_to_ras: np.ndarray, shape: tuple[int, int, int],
                         warped_labels: np.ndarray | None = None) -> Path:
    """An output folder as ``svreg register`` writes it, without running it: ``report.json``, a zero displacement
    and its inverse (ITK convention: LPS), λ, Jacobian and warped maps of ones on the grid, and the warped labels
    when given; for :meth:`RegistrationJob.load_outputs` tests that need no engine."""
    import nibabel as nib
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"metrics": {"folding_percent": 0.0}, "device": "cpu"}),
                                        encoding="utf-8")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    field = sitk.GetImageFromArray(np.zeros((*shape[::-1], 3), np.float32), isVector=True)
    field.SetSpacing(spacing.tolist())
    field.SetOrigin(lps[:3, 3].tolist())
    field.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    for name in ("displacement", "inverse_displacement"):
        sitk.WriteImage(field, str(folder / f"{name}.nii.gz"))
    for name in ("regularization", "jacobian", "warped"):
        nib.save(nib.Nifti1Image(np.ones(shape, np.float32), ijk_to_ras), folder / f"{name}.nii.gz")
    if warped_labels is not None:
        nib.save(nib.Nifti1Image(warped_labels.astype(np.int16), ijk_to_ras), folder / "warped_labels.nii.gz")
    return folder
