"""Geometry between the engine's files and MRML, checked with Slicer's real MRML library (slicer-core).

* a known displacement becomes a FromParent grid transform; the moving volume hardened through it
  matches the fixed volume;
* oblique, anisotropic (and left-handed) volumes survive the NIfTI round trip in world coordinates;
* the transform node saved as .h5 by MRML is read by SimpleITK and maps points exactly like the
  engine's ``displacement.nii.gz`` read by SimpleITK.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from slicer_test_helpers import (
    add_volume,
    array_ijk,
    blob_image,
    create_grid_transform_node,
    grid_transform_arrays,
    load_volume,
    oblique_affine,
)

from SpatialVaryingRegLib import geometry

INNER = (slice(4, -4),) * 3


def smooth_displacement(points: np.ndarray) -> np.ndarray:
    """A smooth, invertible displacement (RAS mm) of world points ``(..., 3)``."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([3.0 * np.sin(y / 12.0), 2.0 * np.cos(z / 15.0), 2.0 * np.sin(x / 11.0)], -1).astype(np.float32)


def assert_same_world_volume(data_a, affine_a, data_b, affine_b, tol=1e-6):
    """Both volumes have voxels at the same world points with the same values (any axis order/flips)."""
    assert data_a.size == data_b.size
    pts = geometry.grid_points(data_a.shape, affine_a)
    inv = np.linalg.inv(affine_b)
    ijk = pts @ inv[:3, :3].T + inv[:3, 3]
    index = np.rint(ijk).astype(int)
    assert np.abs(ijk - index).max() < 1e-3, "voxel centres do not coincide"
    assert (index >= 0).all() and (index < np.array(data_b.shape)).all()
    values = data_b[index[..., 0], index[..., 1], index[..., 2]]
    assert np.abs(values - data_a).max() <= tol


def sample_volume(node, points: np.ndarray) -> np.ndarray:
    """Trilinear value of a volume node at world points ``(..., 3)``."""
    inv = np.linalg.inv(geometry.world_ijk_to_ras(node))
    ijk = points @ inv[:3, :3].T + inv[:3, 3]
    flat = ijk.reshape(-1, 3).T
    return map_coordinates(array_ijk(node).astype(np.float64), flat, order=1).reshape(points.shape[:-1])


def test_known_displacement_hardens_moving_onto_fixed(scene, slicer_module):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -31.0
    shape = (32, 32, 32)
    x = geometry.grid_points(shape, affine)
    u = smooth_displacement(x)
    moving_data, fixed_data = blob_image(x), blob_image(x + u)  # fixed(x) = moving(x + u(x))
    moving = add_volume(scene, moving_data, affine, "moving")
    fixed = add_volume(scene, fixed_data, affine, "fixed")

    transform = create_grid_transform_node(scene, u, affine, "T")
    geometry.set_registration_references(transform, fixed, moving)
    assert transform.IsA("vtkMRMLGridTransformNode")
    grid = transform.GetTransformFromParent()
    assert grid.IsA("vtkOrientedGridTransform") and not grid.GetInverseFlag()
    assert transform.GetNodeReference(transform.GetFixedNodeReferenceRole()) is fixed
    assert transform.GetNodeReference(transform.GetMovingNodeReferenceRole()) is moving
    # FromParent maps a fixed-world point to the moving-world point x + u(x)
    probe = x[5:-5:6, 5:-5:6, 5:-5:6].reshape(-1, 3)
    mapped = np.array([grid.TransformPoint(p) for p in probe])
    assert np.abs(mapped - (probe + u[5:-5:6, 5:-5:6, 5:-5:6].reshape(-1, 3))).max() < 1e-4

    moving.SetAndObserveTransformNodeID(transform.GetID())
    assert slicer_module.vtkSlicerTransformLogic.hardenTransform(moving)
    assert moving.GetParentTransformNode() is None
    hardened = sample_volume(moving, x)
    before = np.abs(moving_data - fixed_data)[INNER].max()
    after = np.abs(hardened - fixed_data)[INNER].max()
    assert before > 0.25
    assert after < 0.03, f"hardened moving differs from fixed by {after:.3f} (before: {before:.3f})"
    assert np.corrcoef(hardened[INNER].ravel(), fixed_data[INNER].ravel())[0, 1] > 0.9999


@pytest.mark.parametrize("handedness", ["right", "left"])
def test_oblique_anisotropic_volume_round_trip(scene, tmp_path, handedness):
    affine = oblique_affine()
    if handedness == "left":
        affine[:3, 2] *= -1  # a left-handed voxel frame (k axis reversed)
    shape = (17, 23, 11)
    data = blob_image(geometry.grid_points(shape, affine)) + np.arange(np.prod(shape)).reshape(shape) * 1e-4
    node = add_volume(scene, data.astype(np.float32), affine, "oblique")

    path = geometry.export_volume(node, tmp_path / "oblique.nii.gz")
    nii = nib.load(str(path))  # an independent reader: nibabel's RAS affine
    assert_same_world_volume(np.asarray(nii.dataobj), nii.affine, data, affine)

    back = load_volume(scene, path, "back")
    assert back.GetStorageNode() is None  # nothing points at the temporary file
    assert_same_world_volume(array_ijk(back), geometry.world_ijk_to_ras(back), data, affine)


def test_export_folds_linear_parent_transform_into_geometry(scene, tmp_path, slicer_module):
    affine = oblique_affine(spacing=(1.0, 1.2, 1.4))
    node = add_volume(scene, np.random.default_rng(0).random((6, 7, 8)).astype(np.float32), affine, "v")
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "P")
    m = np.eye(4)
    m[:3, :3] = oblique_affine(spacing=(1, 1, 1), angle=0.2)[:3, :3]
    m[:3, 3] = [5.0, -3.0, 7.0]
    parent.SetMatrixTransformToParent(geometry.array_to_matrix(m))
    node.SetAndObserveTransformNodeID(parent.GetID())

    path = geometry.export_volume(node, tmp_path / "world.nii.gz")
    assert np.allclose(nib.load(str(path)).affine, m @ affine, atol=1e-4)
    assert np.allclose(geometry.ijk_to_ras(node), affine)  # the node itself is untouched
    local = geometry.export_volume(node, tmp_path / "local.nii.gz", world=False)
    assert np.allclose(nib.load(str(local)).affine, affine, atol=1e-4)

    nonlinear = create_grid_transform_node(scene, np.zeros((3, 3, 3, 3), np.float32), np.eye(4), "G")
    node.SetAndObserveTransformNodeID(nonlinear.GetID())
    with pytest.raises(geometry.GeometryError, match="non-linear transform"):
        geometry.export_volume(node, tmp_path / "x.nii.gz")


def test_grid_transform_and_saved_h5_map_points_like_the_engine_displacement_file(scene, tmp_path, slicer_module):
    sitk = pytest.importorskip("SimpleITK")
    from svreg_core.image import Grid
    from svreg_core.outputs.itk import displacement_nifti

    affine = oblique_affine(spacing=(1.5, 1.0, 2.0))
    shape = (24, 30, 20)
    x = geometry.grid_points(shape, affine)
    u = smooth_displacement(x)
    path = tmp_path / "displacement.nii.gz"
    nib.save(displacement_nifti(u, Grid(shape, affine)), str(path))  # written exactly as the engine does

    disp, grid_affine = geometry.read_displacement_file(path)
    assert np.allclose(grid_affine, affine, atol=1e-4)
    assert np.abs(disp - u).max() < 1e-5
    node = create_grid_transform_node(scene, disp, grid_affine, "T")
    back, back_affine = grid_transform_arrays(node)
    assert np.abs(back - u).max() < 1e-5 and np.allclose(back_affine, affine, atol=1e-6)

    # SimpleITK's reading of the engine's file (LPS in, LPS out)
    field = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    rng = np.random.default_rng(1)
    ijk = rng.uniform(2, np.array(shape) - 3, size=(40, 3))  # inside the grid, off the voxel centres
    probe = ijk @ affine[:3, :3].T + affine[:3, 3]
    flip = np.array([-1.0, -1.0, 1.0])
    expected = np.array([field.TransformPoint(tuple(p * flip)) for p in probe]) * flip

    mrml = np.array([node.GetTransformFromParent().TransformPoint(p) for p in probe])
    assert np.abs(mrml - expected).max() < 1e-3

    storage = slicer_module.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(tmp_path / "saved.h5"))
    assert storage.WriteData(node)
    saved = sitk.ReadTransform(str(tmp_path / "saved.h5"))
    from_h5 = np.array([saved.TransformPoint(tuple(p * flip)) for p in probe]) * flip
    assert np.abs(from_h5 - expected).max() < 1e-3

    # and MRML reads its own .h5 back into an equivalent FromParent transform (Slicer's reader picks
    # cubic interpolation of the grid: within 0.01 mm here; with linear, as ITK does, exactly the same)
    reread = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "reread")
    reader = slicer_module.vtkMRMLTransformStorageNode()
    reader.SetFileName(str(tmp_path / "saved.h5"))
    assert reader.ReadData(reread)
    again = np.array([reread.GetTransformFromParent().TransformPoint(p) for p in probe])
    assert np.abs(again - expected).max() < 1e-2
    reread.GetTransformFromParent().SetInterpolationModeToLinear()
    again = np.array([reread.GetTransformFromParent().TransformPoint(p) for p in probe])
    assert np.abs(again - expected).max() < 1e-3


def test_compose_with_linear_maps_into_local_coordinates():
    affine = oblique_affine()
    shape = (8, 9, 10)
    x = geometry.grid_points(shape, affine)
    u = smooth_displacement(x)
    local_to_world = np.eye(4)
    local_to_world[:3, :3] = oblique_affine(spacing=(1, 1, 1), angle=-0.3)[:3, :3]
    local_to_world[:3, 3] = [4.0, 5.0, -6.0]
    composed = geometry.compose_with_linear(u, affine, np.linalg.inv(local_to_world))
    # local point x + composed(x), taken back to the world, is the registration's x + u(x)
    local = x + composed
    world = local @ local_to_world[:3, :3].T + local_to_world[:3, 3]
    assert np.abs(world - (x + u)).max() < 1e-4


def test_bad_volumes_give_plain_messages(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(geometry.GeometryError, match="holds no image data"):
        geometry.check_volume(empty, "fixed volume")
    flat = add_volume(scene, np.zeros((10, 10, 1), np.float32), np.eye(4), "flat")
    with pytest.raises(geometry.GeometryError, match="not 3-D"):
        geometry.check_volume(flat, "moving volume")
    with pytest.raises(geometry.GeometryError, match="no fixed volume"):
        geometry.check_volume(None, "fixed volume")
