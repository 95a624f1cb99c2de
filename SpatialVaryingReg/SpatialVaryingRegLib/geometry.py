"""Geometry between MRML nodes and the engine's files.

Slicer works in RAS millimetres; the engine's ITK-convention files (``displacement.nii.gz``,
``transform.h5``) hold LPS millimetres. Everything here converts explicitly:

* A volume's geometry is its 4x4 IJK->RAS matrix (voxel index ``(i, j, k)`` to RAS mm). numpy arrays
  of MRML volumes are ``(K, J, I)`` (``slicer.util.arrayFromVolume``); the engine's arrays are
  ``(I, J, K)``.
* The registration result is a *resampling* mapping ``T(x) = x + u(x)``: a point ``x`` of the fixed
  world maps to the point ``T(x)`` of the moving world. In MRML it becomes a
  ``vtkMRMLGridTransformNode`` whose transform **from parent** is a ``vtkOrientedGridTransform`` with
  ``u`` in RAS mm on the fixed grid. A moving volume placed under it is shown at ``x`` with the value
  ``moving(T(x))``: it overlays the fixed volume.

Only MRML/VTK/numpy are used (SimpleITK, bundled with Slicer, for reading the displacement file):
no Qt, so this module runs under ``slicer-core`` in the tests too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: 4x4 diagonal flip between RAS and LPS (its own inverse).
LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryError(ValueError):
    """A volume or transform cannot be used as it is; the message is one plain line for the user."""


# --------------------------------------------------------------------------------------------------
# vtkMatrix4x4 <-> numpy


def matrix_to_array(vtk_matrix) -> np.ndarray:
    """4x4 numpy array of a ``vtkMatrix4x4``."""
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_matrix(array: np.ndarray):
    """``vtkMatrix4x4`` of a 4x4 numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    a = np.asarray(array, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def split_affine(ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(spacing, origin, direction)`` of an IJK->RAS matrix; ``direction`` has unit columns."""
    a = np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise GeometryError("the volume has a zero voxel size; its geometry (IJK to RAS matrix) is invalid.")
    return spacing, a[:3, 3].copy(), a[:3, :3] / spacing


# --------------------------------------------------------------------------------------------------
# volumes


def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's own IJK->RAS matrix (ignoring any parent transform)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return matrix_to_array(m)


def transform_to_world(transform_node, node) -> np.ndarray:
    """4x4 to-world matrix of ``transform_node`` (linear all the way up; ``node`` names the message)."""
    import vtk

    if not transform_node.IsTransformToWorldLinear():
        raise GeometryError(f"'{node.GetName()}' is under the non-linear transform '{transform_node.GetName()}'; "
                            "harden it first (Data module, right-click the volume, Harden transform).")
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(m)
    return matrix_to_array(m)


def parent_to_world(node) -> np.ndarray | None:
    """4x4 matrix of the node's (linear) parent transforms to world, ``None`` without a parent.

    Raises :class:`GeometryError` for a non-linear parent transform (harden it first).
    """
    parent = node.GetParentTransformNode()
    return None if parent is None else transform_to_world(parent, node)


def world_ijk_to_ras(volume_node) -> np.ndarray:
    """IJK->world RAS of a volume, including a linear parent transform (what the user sees)."""
    local = ijk_to_ras(volume_node)
    parent = parent_to_world(volume_node)
    return local if parent is None else parent @ local


def check_volume(volume_node, what: str) -> None:
    """Raise :class:`GeometryError` unless the node is a non-empty, single-component 3-D volume."""
    if volume_node is None:
        raise GeometryError(f"no {what} was selected.")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise GeometryError(f"the {what} '{volume_node.GetName()}' holds no image data.")
    if image.GetNumberOfScalarComponents() != 1:
        raise GeometryError(f"the {what} '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                            "components (colour or vector image); use a scalar (grey-level) volume.")
    dims = image.GetDimensions()
    if sum(d > 1 for d in dims) < 3:
        raise GeometryError(f"the {what} '{volume_node.GetName()}' is not 3-D (size {dims[0]}x{dims[1]}x{dims[2]}).")


def check_mask(volume_node, what: str, name: str | None = None) -> None:
    """Raise :class:`GeometryError` when the mask ``volume_node`` has no voxel inside (every value 0): the
    similarity would then weigh nothing, and the registration would run to the end and only smooth.
    ``name``: the node the user chose, when ``volume_node`` was made from it (a segmentation's export)."""
    import vtk.util.numpy_support as ns

    scalars = volume_node.GetImageData().GetPointData().GetScalars()
    if scalars is None or not ns.vtk_to_numpy(scalars).any():
        raise GeometryError(f"the {what} '{name or volume_node.GetName()}' is empty (no voxel inside it), so nothing "
                            "would be registered; paint the region to register or clear the mask.")


def export_volume(volume_node, path: str | Path, *, world: bool = True, what: str = "volume",
                  ijk_to_world: np.ndarray | None = None) -> Path:
    """Write a volume node as NIfTI (Slicer's own writer), in world coordinates by default.

    With ``world=True`` a linear parent transform is folded into the written geometry, so the file
    holds the volume where the user sees it; ``ijk_to_world`` gives that geometry explicitly instead.
    The node and the scene are not modified.
    """
    import slicer

    check_volume(volume_node, what)
    path = Path(path)
    if ijk_to_world is None:
        ijk_to_world = world_ijk_to_ras(volume_node) if world else ijk_to_ras(volume_node)
    copy = volume_node.CreateNodeInstance()  # same class (scalar or label map), not added to the scene
    copy.SetAndObserveImageData(volume_node.GetImageData())
    copy.SetIJKToRASMatrix(array_to_matrix(ijk_to_world))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1)
    if not storage.WriteData(copy):
        raise GeometryError(f"could not write the {what} '{volume_node.GetName()}' to {path}.")
    return path


def read_volume(path: str | Path, *, labelmap: bool = False):
    """Read a NIfTI file into a new scalar (or label map) volume node that is not in any scene."""
    import slicer

    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise GeometryError(f"could not read {path} into Slicer.")
    return node


def place_volume(scene, source, name: str, target=None):
    """Put the voxels and geometry of ``source`` (from :func:`read_volume`) into ``target`` (an existing
    volume node of the same kind, updated in place: its name and display are kept) or into a new node
    ``name`` with default display nodes. Returns the node. The node keeps no storage node pointing at
    the (temporary) file: saving the scene writes its data afresh."""
    if target is None:
        target = scene.AddNewNodeByClass(source.GetClassName(), name)
    target.SetAndObserveImageData(source.GetImageData())
    target.SetIJKToRASMatrix(array_to_matrix(ijk_to_ras(source)))
    if target.GetDisplayNode() is None:
        target.CreateDefaultDisplayNodes()
    return target


# --------------------------------------------------------------------------------------------------
# displacement fields and grid transforms


def read_displacement_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK-convention displacement field (LPS vectors and geometry, e.g. ``displacement.nii.gz``).

    Returns ``(displacement, ijk_to_ras)``: an ``(I, J, K, 3)`` float32 array in **RAS** mm and the
    4x4 IJK->RAS matrix of its grid. The array is a transposed view of one C-ordered ``(K, J, I, 3)``
    buffer (VTK's point order), so :func:`set_grid_transform` hands it to VTK without copying; the
    peak memory is two float32 copies of the field (SimpleITK's image and the array), and one stays.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise GeometryError(f"{path} is not a 3-D displacement field with 3 components per voxel.")
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    if image.GetPixelID() != sitk.sitkVectorFloat32:
        image = sitk.Cast(image, sitk.sitkVectorFloat32)
    kji = sitk.GetArrayFromImage(image)  # (K, J, I, 3) float32, its own buffer
    del image
    kji[..., :2] *= -1.0  # LPS -> RAS vectors, in place
    return kji.transpose(2, 1, 0, 3), LPS_FLIP @ affine_lps


def _displacement_image(displacement_ras: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """``vtkImageData`` (origin/spacing of the grid, identity direction) holding RAS vectors as float32.

    The VTK array shares the memory of ``displacement_ras`` when that is a float32 ``(I, J, K, 3)``
    view of a C-ordered ``(K, J, I, 3)`` buffer (what :func:`read_displacement_file` returns); any
    other layout is copied once into that layout.
    """
    import vtk
    import vtk.util.numpy_support as ns

    disp = np.asarray(displacement_ras)
    if disp.ndim != 4 or disp.shape[3] != 3:
        raise GeometryError(f"a displacement field must be shaped (I, J, K, 3), not {disp.shape}.")
    spacing, origin, _ = split_affine(ijk_to_ras_matrix)
    image = vtk.vtkImageData()
    image.SetDimensions(*disp.shape[:3])
    image.SetOrigin(*origin)
    image.SetSpacing(*spacing)
    flat = np.ascontiguousarray(disp.transpose(2, 1, 0, 3), dtype=np.float32).reshape(-1, 3)
    vectors = ns.numpy_to_vtk(flat, deep=False, array_type=vtk.VTK_FLOAT)  # keeps a reference to ``flat``
    vectors.SetName("displacement")
    image.GetPointData().SetScalars(vectors)
    return image


def set_grid_transform(transform_node, displacement_ras: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> None:
    """Make ``transform_node`` the resampling mapping ``x -> x + u(x)`` (``u`` RAS mm on the grid).

    Stored as the transform *from parent* (the ITK/resampling convention) with linear interpolation,
    like ITK's ``DisplacementFieldTransform``.
    """
    import slicer

    _, _, direction = split_affine(ijk_to_ras_matrix)
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(_displacement_image(displacement_ras, ijk_to_ras_matrix))
    direction4 = np.eye(4)
    direction4[:3, :3] = direction
    grid.SetGridDirectionMatrix(array_to_matrix(direction4))
    grid.SetInterpolationModeToLinear()
    transform_node.SetAndObserveTransformFromParent(grid)


def grid_points(shape: tuple[int, int, int], ijk_to_ras_matrix: np.ndarray) -> np.ndarray:
    """RAS mm of every voxel centre, ``(I, J, K, 3)``."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    a = np.asarray(ijk_to_ras_matrix, dtype=np.float64)
    return idx @ a[:3, :3].T + a[:3, 3]


def compose_with_linear(displacement_ras: np.ndarray, ijk_to_ras_matrix: np.ndarray,
                        world_to_local: np.ndarray) -> np.ndarray:
    """Displacement of ``x -> L(x + u(x))`` for a linear ``L`` (4x4, RAS->RAS), on the same grid.

    Used when the moving volume sits under a linear transform: the result is registered against the
    volume as seen in the world, and the node placed under the result needs the mapping into its
    own local coordinates. Computed one K slice at a time (float64 per slice) into a float32 result
    of the layout :func:`read_displacement_file` returns.
    """
    disp = np.asarray(displacement_ras)
    shape = disp.shape[:3]
    L = np.asarray(world_to_local, dtype=np.float64)
    a = np.asarray(ijk_to_ras_matrix, dtype=np.float64)
    out = np.empty((shape[2], shape[1], shape[0], 3), dtype=np.float32)
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64),
                         indexing="ij")
    for k in range(shape[2]):
        idx = np.stack([ii, jj, np.full_like(ii, k)], axis=-1)
        x = idx @ a[:3, :3].T + a[:3, 3]
        moved = x + disp[:, :, k]
        out[k] = (moved @ L[:3, :3].T + L[:3, 3] - x).transpose(1, 0, 2)
    return out.transpose(2, 1, 0, 3)


def set_registration_references(transform_node, fixed_node, moving_node) -> None:
    """Record which volumes the transform registers (MRML's spatialRegistration fixed/moving roles)."""
    transform_node.SetNodeReferenceID(transform_node.GetFixedNodeReferenceRole(),
                                      fixed_node.GetID() if fixed_node else None)
    transform_node.SetNodeReferenceID(transform_node.GetMovingNodeReferenceRole(),
                                      moving_node.GetID() if moving_node else None)
