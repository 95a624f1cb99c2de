"""What clinicians expect, through the module's GUI-free logic on Slicer's real MRML (slicer-core):

segmentations as masks and label maps (warped labels back as a Segmentation), the inverse transform as
a node (maps a fixed fiducial onto the moving image and back within a voxel), a moving fiducial list
carried by the result and the TRE in the status line, output nodes updated in place, the CPU time
estimate. The engine runs in its child process on a tiny 32^3 pair (seconds).
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from slicer_test_helpers import (
    add_volume,
    array_ijk,
    blob_image,
    fiducials,
    grid_transform_arrays,
    write_engine_outputs,
)

from SpatialVaryingRegLib import estimate, geometry, landmarks, logic, segmentations, tuning

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the engine child process is exercised on POSIX here")

FAST = {"level_spacings": [8.0, 4.0], "iterations": [15, 15], "affine": False, "similarity": "mse"}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -31.0
SHAPE = (32, 32, 32)
VOXEL_MM = 2.0
#: Fixed-image points near the blobs (RAS mm).
POINTS = np.array([[9.0, 0.0, 0.0], [0.0, -9.0, 2.0], [12.0, -8.0, 0.5], [-8.0, 3.0, -4.0]])


def smooth_displacement(points):
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([3.0 * np.sin(y / 12.0), 2.0 * np.cos(z / 15.0), 2.0 * np.sin(x / 11.0)], -1)


def labels_of(data):
    """Two labels: the big blob (1) and the small blob's core (2)."""
    out = (data > 0.5).astype(np.int16)
    out[data > 0.9] = 2
    return out


def segmentation_from(scene, labelmap, names):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", labelmap.GetName() + " segmentation")
    import slicer

    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    for i, name in enumerate(names):
        seg.GetSegmentation().GetNthSegment(i).SetName(name)
    seg.GetSegmentation().GetNthSegment(0).SetColor(0.9, 0.1, 0.2)
    scene.RemoveNode(labelmap)
    return seg


@pytest.fixture
def pair(scene):
    """Fixed/moving volumes related by a known deformation: fixed point p shows what moving shows at
    p + u(p); label maps of both as Segmentation nodes; corresponding fiducial lists."""
    x = geometry.grid_points(SHAPE, AFFINE)
    fixed_data, moving_data = blob_image(x + smooth_displacement(x)), blob_image(x)
    names = ["brain", "lesion"]
    return {
        "fixed": add_volume(scene, fixed_data, AFFINE, "fixed"),
        "moving": add_volume(scene, moving_data, AFFINE, "moving"),
        "fixed_seg": segmentation_from(scene, add_volume(scene, labels_of(fixed_data), AFFINE, "fl", labelmap=True),
                                       names),
        "moving_seg": segmentation_from(scene, add_volume(scene, labels_of(moving_data), AFFINE, "ml",
                                                          labelmap=True), names),
        "fixed_points": fiducials(scene, POINTS, "F"),
        "moving_points": fiducials(scene, POINTS + smooth_displacement(POINTS), "M"),
    }


def world(scene, point, transform):
    """World position of a point placed under ``transform``."""
    node = fiducials(scene, [point], "probe")
    node.SetAndObserveTransformNodeID(transform.GetID())
    out = landmarks.world_points(node)[0]
    scene.RemoveNode(node)
    return out


def test_segmentations_inverse_and_fiducials_end_to_end(scene, pair, tmp_path):
    settings = logic.RegistrationSettings(overrides=FAST, device="cpu", create_inverse=True, temp_root=str(tmp_path))
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=pair["fixed_seg"],
                                moving_labels=pair["moving_seg"], moving_mask=pair["moving_seg"],
                                fixed_fiducials=pair["fixed_points"], moving_fiducials=pair["moving_points"],
                                settings=settings)
    out = job.run(timeout=300)
    # the engine wrote what the module loads and nothing else (no ITK transform file, no figure)
    assert out.report["outputs"] == ["displacement", "inverse", "jacobian", "labels", "regularization", "warped"]

    # (a) the segmentations went to the engine as label maps (Dice scored over both labels) and the warped
    # labels came back as a Segmentation with the moving segments' names and colours
    assert sorted(out.report["metrics"]["dice"]) == ["1", "2"]
    assert out.warped_labels.IsA("vtkMRMLSegmentationNode")
    warped = out.warped_labels.GetSegmentation()
    assert [warped.GetNthSegment(i).GetName() for i in range(warped.GetNumberOfSegments())] == ["brain", "lesion"]
    assert warped.GetNthSegment(0).GetColor() == pytest.approx((0.9, 0.1, 0.2))
    assert not [n for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
                if n.GetName().endswith(("(export)", "(import)"))]  # no staging node left behind

    # (c) the inverse: a FromParent grid transform on the moving grid, references swapped
    inverse = out.inverse
    assert inverse.IsA("vtkMRMLGridTransformNode") and inverse.GetTransformFromParent().IsA("vtkOrientedGridTransform")
    field, grid = grid_transform_arrays(inverse)
    assert field.shape[:3] == SHAPE and np.allclose(grid, geometry.ijk_to_ras(pair["moving"]), atol=1e-4)
    assert inverse.GetNodeReference(inverse.GetFixedNodeReferenceRole()) is pair["moving"]
    forward = out.transform.GetTransformFromParent()
    for p in POINTS:
        on_moving = np.array(forward.TransformPoint(p))  # where the registration says p lies on the moving image
        mapped = world(scene, p, inverse)                 # a fixed fiducial under the inverse node
        assert np.linalg.norm(mapped - on_moving) < VOXEL_MM
        back = world(scene, mapped, out.transform)        # ... and back under the forward node
        assert np.linalg.norm(back - p) < VOXEL_MM

    # (d) the moving fiducials now sit under the result, on their fixed counterparts; TRE in the status
    assert pair["moving_points"].GetParentTransformNode() is out.transform
    tre = out.tre
    assert tre is not None and tre.count == len(POINTS)
    assert tre.before == pytest.approx(np.linalg.norm(smooth_displacement(POINTS), axis=1))
    moved = landmarks.world_points(pair["moving_points"])
    assert tre.after == pytest.approx(np.linalg.norm(moved - POINTS, axis=1))
    # each moved point is where the resampling mapping sends back to the original moving point (the same
    # mapping that overlays the moving volume on the fixed one); the blob images constrain only part of
    # the synthetic deformation, so the TRE itself is not expected to reach zero here
    original = POINTS + smooth_displacement(POINTS)
    assert np.abs(np.array([forward.TransformPoint(p) for p in moved]) - original).max() < 0.1
    assert f"TRE {tre.after.mean():.2f} mm" in out.status_text and "over 4 point pairs" in out.status_text

    # (e) registering again (the moving volume, its segmentation and fiducials as the first run left them): the
    # same inputs reach the engine (the segmentation was exported through the first result) and "before" is
    # still before registration (it was the first result's TRE)
    again = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=pair["fixed_seg"],
                                  moving_labels=pair["moving_seg"], moving_mask=pair["moving_seg"],
                                  fixed_fiducials=pair["fixed_points"], moving_fiducials=pair["moving_points"],
                                  settings=settings).run(timeout=300)
    assert again.tre is not None and again.tre.before == pytest.approx(tre.before)
    assert again.report["metrics"]["dice_before"] == pytest.approx(out.report["metrics"]["dice_before"])


def test_output_nodes_are_updated_in_place(scene, pair, tmp_path):
    settings = logic.RegistrationSettings(overrides=FAST, device="cpu", create_inverse=True, temp_root=str(tmp_path))
    first = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"],
                                  settings=settings).run(timeout=300)
    first.lambda_map.SetName("my lambda")
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLTransformNode", "vtkMRMLVolumeNode",
                                                             "vtkMRMLSegmentationNode")}
    reuse = logic.OutputNodes(transform=first.transform, lambda_map=first.lambda_map, jacobian=first.jacobian,
                              warped=first.warped, warped_labels=first.warped_labels, inverse=first.inverse)
    stale = grid_transform_arrays(first.transform)[0]
    faster = logic.RegistrationSettings(overrides=dict(FAST, iterations=[5, 5]), device="cpu", create_inverse=True,
                                        temp_root=str(tmp_path))
    second = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"], reuse=reuse,
                                   settings=faster).run(timeout=300)
    assert first.report["outputs"] == ["displacement", "inverse", "jacobian", "labels", "regularization", "warped"]
    assert [n.GetID() for n in second.nodes()] == [n.GetID() for n in first.nodes()]
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts  # nothing new
    assert not np.allclose(grid_transform_arrays(second.transform)[0], stale)  # the new result is in
    assert second.lambda_map.GetName() == "my lambda"  # the user's node keeps its name
    assert second.transform.GetAttribute(logic.RUN_ATTRIBUTE) == "1" and second.run_name == first.run_name
    assert pair["moving"].GetParentTransformNode() is second.transform
    # a node of the wrong kind is not reused: a label map volume cannot hold a segmentation's labels
    wrong = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "not a segmentation")
    third = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"],
                                  reuse=logic.OutputNodes(warped_labels=wrong),
                                  settings=faster).run(timeout=300)
    assert third.warped_labels.IsA("vtkMRMLSegmentationNode") and third.warped_labels is not wrong


def test_segmentation_export_gives_labels_in_segment_order_on_the_volume_grid(scene, pair, tmp_path):
    import nibabel as nib

    path = segmentations.export_labelmap(pair["fixed_seg"], pair["fixed"], tmp_path / "l.nii.gz", what="fixed labels",
                                         ijk_to_world=geometry.world_ijk_to_ras(pair["fixed"]))
    image = nib.load(path)
    x = geometry.grid_points(SHAPE, AFFINE)
    expected = labels_of(blob_image(x + smooth_displacement(x)))
    assert np.array_equal(np.asarray(image.dataobj), expected)
    assert np.allclose(image.affine, AFFINE)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # the staging node is gone


def test_segmentations_of_one_structure_set_in_another_order_are_paired_by_name(scene, pair, tmp_path):
    """A moving segmentation listing 'lesion' before 'brain' went to the engine as lesion = 1, brain = 2 against the
    fixed brain = 1, lesion = 2: Dice compared the brain with the lesion. The moving segments now take their fixed
    namesakes' labels, and the warped segments come back named and coloured as the moving ones."""
    import nibabel as nib

    x = geometry.grid_points(SHAPE, AFFINE)
    moving_labels = labels_of(blob_image(x))
    swapped = np.where(moving_labels == 1, 2, np.where(moving_labels == 2, 1, 0)).astype(np.int16)
    moving_seg = segmentation_from(scene, add_volume(scene, swapped, AFFINE, "swapped", labelmap=True),
                                   [" Lesion", "brain"])  # segment 0 is the lesion; names compared without case
    moving_seg.GetSegmentation().GetNthSegment(1).SetColor(0.1, 0.8, 0.3)
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=pair["fixed_seg"],
                                moving_labels=moving_seg, moving_mask=moving_seg)
    job.validate()
    sent = np.asarray(nib.load(job.export_node(moving_seg, tmp_path / "m.nii.gz", "moving label map")).dataobj)
    assert np.array_equal(sent, moving_labels)  # brain 1, lesion 2: the fixed segmentation's labels
    mask = np.asarray(nib.load(job.export_node(moving_seg, tmp_path / "k.nii.gz", "moving mask", mask=True)).dataobj)
    assert np.array_equal(mask > 0, moving_labels > 0)

    out = job.load_outputs(write_engine_outputs(tmp_path / "output", AFFINE, SHAPE, moving_labels))
    warped = out.warped_labels.GetSegmentation()
    segments = {warped.GetNthSegment(i).GetLabelValue(): warped.GetNthSegment(i)
                for i in range(warped.GetNumberOfSegments())}
    assert {label: segment.GetName() for label, segment in segments.items()} == {1: "brain", 2: " Lesion"}
    assert segments[1].GetColor() == pytest.approx((0.1, 0.8, 0.3))

    # a label map volume names its labels in its colour table: a segmentation on the other side takes those labels
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "atlas colours")
    table.SetTypeToUser()
    table.SetNumberOfColors(8)
    for value, name in ((3, "edema"), (5, "lesion"), (7, "Brain")):
        table.SetColor(value, name, 0.5, 0.5, 0.5, 1.0)
    atlas = np.where(moving_labels == 1, 7, np.where(moving_labels == 2, 5, 0)).astype(np.int16)
    moving_volume = add_volume(scene, atlas, AFFINE, "moving atlas labels", labelmap=True)
    moving_volume.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    assert segmentations.label_names(moving_volume) == {"lesion": 5, "brain": 7}  # no voxel holds edema (3)
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=pair["fixed_seg"],
                                moving_labels=moving_volume)
    job.validate()
    sent = np.asarray(nib.load(job.export_node(pair["fixed_seg"], tmp_path / "f.nii.gz", "fixed label map")).dataobj)
    fixed_labels = labels_of(blob_image(x + smooth_displacement(x)))
    assert np.array_equal(sent, np.where(fixed_labels == 1, 7, np.where(fixed_labels == 2, 5, 0)))
    fixed_volume = add_volume(scene, atlas, AFFINE, "fixed atlas labels", labelmap=True)
    fixed_volume.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    assert segmentations.label_values(moving_seg, fixed_volume) == dict(zip(segmentations.segment_ids(moving_seg),
                                                                            (5, 7)))

    # names with nothing in common keep the segment order; a moving segment without a namesake follows the fixed's
    assert segmentations.label_values(moving_seg, None) == {sid: n + 1 for n, sid in
                                                            enumerate(segmentations.segment_ids(moving_seg))}
    moving_seg.GetSegmentation().GetNthSegment(0).SetName("edema")
    ids = segmentations.segment_ids(moving_seg)
    assert segmentations.label_values(moving_seg, pair["fixed_seg"]) == {ids[0]: 3, ids[1]: 1}
    moving_seg.GetSegmentation().GetNthSegment(1).SetName("Segment_2")
    assert segmentations.label_values(moving_seg, pair["fixed_seg"]) == {ids[0]: 1, ids[1]: 2}


def test_segmentation_export_ignores_the_volumes_own_result_transform(scene, pair, tmp_path):
    """After a registration the moving volume sits under the result transform, its segmentation not: the labels
    are still exported on the volume's own grid, not through the previous result; the export leaves no node
    behind (no staging label map, reference or colour table)."""
    import nibabel as nib

    def export(name):
        return np.asarray(nib.load(segmentations.export_labelmap(
            pair["moving_seg"], pair["moving"], tmp_path / name, what="moving labels",
            ijk_to_world=geometry.world_ijk_to_ras(pair["moving"]))).dataobj)

    before = export("before.nii.gz")
    result = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "previous result")
    result.SetMatrixTransformToParent(geometry.array_to_matrix(np.array(
        [[1, 0, 0, 7.0], [0, 1, 0, -5.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])))
    pair["moving"].SetAndObserveTransformNodeID(result.GetID())
    nodes = scene.GetNumberOfNodes()
    after = export("after.nii.gz")
    assert np.array_equal(after, before) and after.max() == 2
    assert scene.GetNumberOfNodes() == nodes


def test_add_pair_takes_segmentations_and_a_registered_moving_side(scene, pair, tmp_path):
    """The tuning panel's 'Add pair': Segmentation label maps are exported as label maps; a moving volume, its
    segmentation and its fiducials under this module's result are written as before that result; a pair that
    cannot be exported leaves no folder behind."""
    import nibabel as nib

    from svreg_core.tuning.pairs import discover_pairs, load_pair

    folder = tmp_path / "validation"
    nodes = (pair["fixed"], pair["moving"], pair["fixed_seg"], pair["moving_seg"], pair["fixed_points"],
             pair["moving_points"])
    first = tuning.export_pair(folder, "unregistered", *nodes)
    result = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "a previous result")
    result.SetAttribute(logic.RUN_ATTRIBUTE, "1")
    result.SetMatrixTransformToParent(geometry.array_to_matrix(np.array(
        [[1, 0, 0, 7.0], [0, 1, 0, -5.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])))
    for node in (pair["moving"], pair["moving_points"]):
        node.SetAndObserveTransformNodeID(result.GetID())
    second = tuning.export_pair(folder, "registered", *nodes)
    for name in ("fixed.nii.gz", "moving.nii.gz", "fixed_labels.nii.gz", "moving_labels.nii.gz"):
        a, b = nib.load(first / name), nib.load(second / name)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine), name
    assert (first / "moving_landmarks.csv").read_text() == (second / "moving_landmarks.csv").read_text()
    loaded = load_pair(next(p for p in discover_pairs(folder) if p.name == "registered"))
    assert sorted(np.unique(loaded.moving_labels.data)) == [0, 1, 2]
    # a label map off its volume's grid: refused before anything is written
    off_grid = add_volume(scene, np.zeros((8, 8, 8), np.int16), AFFINE, "off grid", labelmap=True)
    with pytest.raises(geometry.GeometryError, match="not on the grid of the fixed volume"):
        tuning.export_pair(folder, "broken", pair["fixed"], pair["moving"], off_grid, pair["moving_seg"])
    assert sorted(p.name for p in folder.iterdir()) == ["registered", "unregistered"]


def test_a_second_register_starts_from_the_moving_sides_initial_alignment(scene, pair, tmp_path):
    """A moving volume, its label map and fiducials under a manual initial alignment (a linear transform), registered:
    the volume and the fiducials go under the result, which holds that alignment. Register again (other settings, the
    same nodes) started from the volume without it (the engine got it at its raw pose, the fiducials' "before" TRE
    too), and with the label map, still under the alignment, it was refused as "not under the same transform". A
    re-run starts where the first one did; Add pair writes the moving side there too."""
    x = geometry.grid_points(SHAPE, AFFINE)
    initial = np.eye(4)
    initial[:3, :3] = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    initial[:3, 3] = [6.0, -4.0, 3.0]
    local = np.linalg.inv(initial) @ AFFINE  # seen in the world (under the alignment) on the fixed grid
    alignment = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial alignment")
    alignment.SetMatrixTransformToParent(geometry.array_to_matrix(initial))
    moving = add_volume(scene, blob_image(x), local, "moved moving")
    labels = add_volume(scene, labels_of(blob_image(x)), local, "moved labels", labelmap=True)
    points = fiducials(scene, POINTS, "moved points")
    for node in (moving, labels, points):
        node.SetAndObserveTransformNodeID(alignment.GetID())
    world_points = landmarks.world_points(points)
    outputs = write_engine_outputs(tmp_path / "output", AFFINE, SHAPE)

    def job(reuse=None):
        job = logic.RegistrationJob(pair["fixed"], moving, moving_labels=labels, fixed_fiducials=pair["fixed_points"],
                                    moving_fiducials=points, reuse=reuse)
        job.validate()
        assert np.allclose(job._moving_ijk_to_world, AFFINE, atol=1e-6)  # where the user placed it
        return job

    first = job().load_outputs(outputs)
    assert moving.GetParentTransformNode() is first.transform and labels.GetParentTransformNode() is alignment
    np.testing.assert_allclose(first.tre.before, np.linalg.norm(world_points - POINTS, axis=1), atol=1e-6)
    second = job(first.reuse()).load_outputs(outputs)
    np.testing.assert_allclose(second.tre.before, first.tre.before, atol=1e-6)
    job(logic.OutputNodes())  # new nodes from the registered volume: from the alignment as well
    target = tuning.export_pair(tmp_path / "validation", "p", pair["fixed"], moving,
                                fixed_fiducials=pair["fixed_points"], moving_fiducials=points)
    written = np.loadtxt(target / "moving_landmarks.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(written, world_points, atol=1e-6)


def test_the_other_direction_after_a_registration_is_refused_without_advice_to_harden(scene, pair, tmp_path):
    """Register moving onto fixed, then the other way round: the new fixed volume sits under the first result, and
    the message said to harden it (which resamples the volume for good). It says to take it out from under it."""
    first = logic.RegistrationJob(pair["fixed"], pair["moving"])
    first.validate()
    result = first.load_outputs(write_engine_outputs(tmp_path / "output", AFFINE, SHAPE))
    with pytest.raises(logic.RegistrationError, match=re.escape(
            f"the fixed volume 'moving' is under '{result.transform.GetName()}', a result of this module (from "
            "registering it as a moving volume); take it out from under that transform (Data module)")):
        logic.RegistrationJob(pair["moving"], pair["fixed"]).validate()
    pair["moving"].SetAndObserveTransformNodeID(None)
    logic.RegistrationJob(pair["moving"], pair["fixed"]).validate()


def test_inputs_under_other_transforms_are_refused_with_a_plain_message(scene, pair):
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift.SetMatrixTransformToParent(geometry.array_to_matrix(np.array(
        [[1, 0, 0, 5.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])))
    pair["moving_seg"].SetAndObserveTransformNodeID(shift.GetID())
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"])
    with pytest.raises(logic.RegistrationError, match="not under the same transform as the moving volume"):
        job.validate()
    pair["moving_seg"].SetAndObserveTransformNodeID(None)
    pair["moving_points"].SetAndObserveTransformNodeID(shift.GetID())
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_fiducials=pair["moving_points"])
    with pytest.raises(logic.RegistrationError, match="moving fiducials 'M' are not under the same transform"):
        job.validate()
    pair["moving_points"].SetAndObserveTransformNodeID(None)
    # a mask or label map volume made on the volume's voxels, the volume then aligned by hand (a transform above
    # it only): the message said to resample it onto the volume, which it already shares
    mask = add_volume(scene, np.ones(SHAPE, np.uint8), AFFINE, "moving mask", labelmap=True)
    pair["moving"].SetAndObserveTransformNodeID(shift.GetID())
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_mask=mask)
    with pytest.raises(logic.RegistrationError, match=r"^the moving mask 'moving mask' is not under the same "
                                                      r"transform as the moving volume 'moving'; place both under"):
        job.validate()
    mask.SetAndObserveTransformNodeID(shift.GetID())
    logic.RegistrationJob(pair["fixed"], pair["moving"], moving_mask=mask).validate()
    pair["fixed"].SetAndObserveTransformNodeID(shift.GetID())
    with pytest.raises(logic.RegistrationError, match=r"^the fixed label map 'fl' is not under the same transform "
                                                      r"as the fixed volume 'fixed'"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=add_volume(
            scene, np.ones(SHAPE, np.int16), AFFINE, "fl", labelmap=True), moving_labels=mask).validate()
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(logic.RegistrationError, match="'empty' has no segments"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_mask=empty).validate()


def test_unpaired_fiducials_are_refused_before_the_run(scene, pair):
    """Lists that cannot pair up for the TRE were found only after the registration ("TRE not computed"): a minute
    or more of a run whose landmark check the user wanted could not happen."""
    pair["moving_points"].RemoveNthControlPoint(0)
    assert landmarks.pair_count_problem(pair["fixed_points"], pair["moving_points"]) == \
        "the fixed list has 4 points and the moving list 3 (pairs go by order)"
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_fiducials=pair["fixed_points"],
                                moving_fiducials=pair["moving_points"])
    with pytest.raises(logic.RegistrationError, match=r"^the fiducial lists cannot be paired for the target "
                                                      r"registration error: the fixed list has 4 points and the "
                                                      r"moving list 3 \(pairs go by order\); correct them, or clear"):
        job.validate()
    logic.RegistrationJob(pair["fixed"], pair["moving"], moving_fiducials=pair["moving_points"]).validate()


def test_fiducials_not_placed_are_refused_before_the_run_and_the_export(scene, pair, tmp_path):
    """A point list with a point not placed (a landmark template's unplaced point, or one being placed) counted that
    point where it happened to be (e.g. at 0, 0, 0): the TRE averaged it in and a tuning pair's landmark file held it
    as a landmark. Refused in one line, naming the point."""
    pair["fixed_points"].UnsetNthControlPointPosition(2)
    problem = "point 3 ('F-3') of the fixed list is not placed (place it or delete it)"
    assert landmarks.pair_count_problem(pair["fixed_points"], pair["moving_points"]) == problem
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_fiducials=pair["fixed_points"],
                                moving_fiducials=pair["moving_points"])
    with pytest.raises(logic.RegistrationError, match=re.escape(f"registration error: {problem}; correct them")):
        job.validate()
    with pytest.raises(geometry.GeometryError, match=re.escape(problem)):
        tuning.export_pair(tmp_path, "p", pair["fixed"], pair["moving"], fixed_fiducials=pair["fixed_points"],
                           moving_fiducials=pair["moving_points"])
    assert not any(tmp_path.iterdir())


def test_cpu_time_estimate_follows_the_engines_working_grids_and_says_it_is_an_estimate(scene, pair):
    """Hand-computed working grids: the field of view (voxel centres) at each level's spacing, never finer than the
    volume's voxels; the CT presets' pyramid and MIND; levels merged on a coarse volume."""
    e = estimate
    big = add_volume(scene, np.zeros((128, 128, 96), np.float32), np.diag([1.0, 1.0, 1.5, 1.0]), "big")
    # brain-mri: 4 mm then 2 mm over a 127 x 127 x 142.5 mm field of view, times 80 and 60 iterations
    work, at_4mm = 32 * 32 * 36 * 80 + 64 * 64 * 72 * 60, 32 * 32 * 36
    large = e.cpu_seconds(big)
    assert large == pytest.approx(e.CPU_OVERHEAD_S + e.CPU_SECONDS_PER_VOXEL_ITERATION["lncc"] * work
                                  + e.CPU_AFFINE_SECONDS_PER_VOXEL["lncc"] * at_4mm
                                  + e.CPU_SECONDS_PER_FIXED_VOXEL * 128 * 128 * 96)
    assert e.CPU_OVERHEAD_S < e.cpu_seconds(pair["fixed"]) < large
    assert e.cpu_seconds(big, refine_steps=20) < large
    assert e.cpu_seconds(big, overrides={"affine": False}) == pytest.approx(
        large - e.CPU_AFFINE_SECONDS_PER_VOXEL["lncc"] * at_4mm)
    # ct on 2.5 x 2.5 x 5 mm CT: 5 mm, then 2.5 mm (not 2: no level finer than the voxels), MIND
    ct = add_volume(scene, np.zeros((100, 100, 20), np.float32), np.diag([2.5, 2.5, 5.0, 1.0]), "ct")
    assert e.cpu_seconds(ct, "ct") == pytest.approx(
        e.CPU_OVERHEAD_S + e.CPU_SECONDS_PER_VOXEL_ITERATION["mind"] * (50 * 50 * 20 * 80 + 100 * 100 * 39 * 60)
        + e.CPU_AFFINE_SECONDS_PER_VOXEL["mind"] * 62 * 62 * 24 + e.CPU_SECONDS_PER_FIXED_VOXEL * 100 * 100 * 20)
    # a 6 mm volume: both brain-mri levels become 6 mm and merge into one of 80 iterations
    assert e.working_levels((4.0, 2.0), (80, 60), 6.0) == [(6.0, 80)]
    assert e.working_levels((5.0, 2.0), (80, 60), 2.5) == [(5.0, 80), (2.5, 60)]
    assert "estimate" in e.text(large) and e.text(large).startswith("about ")
    # a crop box (the fixed ROI) over the first 64 of the 128 voxel centres along x: the estimate of those voxels
    # (it was the whole volume's: a CT cropped to a small box was estimated as the whole scan)
    half = add_volume(scene, np.zeros((64, 128, 96), np.float32), np.diag([1.0, 1.0, 1.5, 1.0]), "half")
    box = (-0.5, -10.0, -10.0, 63.5, 200.0, 200.0)
    assert e.cpu_seconds(big, box=box) == pytest.approx(e.cpu_seconds(half)) and e.cpu_seconds(half) < large
    # the box is in world coordinates, as the engine crops the volume exported where the user sees it: a volume
    # moved 500 mm by a parent transform gives the same estimate for the box moved with it (it was the estimate of
    # the box's 2 voxels per axis left over the volume's own coordinates)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "500 mm along x")
    shift.SetMatrixTransformToParent(geometry.array_to_matrix(np.array(
        [[1, 0, 0, 500.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])))
    big.SetAndObserveTransformNodeID(shift.GetID())
    moved = (box[0] + 500.0, *box[1:3], box[3] + 500.0, *box[4:])
    assert e.cpu_seconds(big, box=moved) == pytest.approx(e.cpu_seconds(half))
    # a mouse brain, 40^3 voxels of 0.5 mm (20 mm across): the engine's affine stage scales its pyramid by 20 / 96,
    # its 4 mm level to 0.83 mm: 24^3 voxels over the 19.5 mm of voxel centres (it was estimated at 4 mm: 5^3); the
    # deformable levels stay 4 and 2 mm (5^3 and 10^3 voxels)
    mouse = add_volume(scene, np.zeros((40, 40, 40), np.float32), np.diag([0.5, 0.5, 0.5, 1.0]), "mouse")
    assert e.cpu_seconds(mouse) == pytest.approx(
        e.CPU_OVERHEAD_S + e.CPU_SECONDS_PER_VOXEL_ITERATION["lncc"] * (5 ** 3 * 80 + 10 ** 3 * 60)
        + e.CPU_AFFINE_SECONDS_PER_VOXEL["lncc"] * 24 ** 3 + e.CPU_SECONDS_PER_FIXED_VOXEL * 40 ** 3)


def roi(scene, center, size):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "crop")
    node.SetXYZ(*center)
    node.SetSize(*size)
    return node


def test_crop_to_roi_registers_the_box_and_loads_results_there(scene, pair, tmp_path):
    """A markups ROI over part of the fixed volume: the engine gets its world bounds (``--crop-fixed``) and
    the result volumes come back on the fixed voxels inside the box, at their places in the world."""
    box = roi(scene, (0.0, 2.0, -3.0), (30.0, 24.0, 40.0))  # R -15..15, A -10..14, S -23..17
    settings = logic.RegistrationSettings(overrides=FAST, device="cpu", temp_root=str(tmp_path))
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_roi=box, settings=settings)
    job.validate()
    workdir = tmp_path / "export"
    workdir.mkdir()
    args = job.export_inputs(workdir).arguments()
    i = args.index("--crop-fixed")
    assert [float(v) for v in args[i + 1:i + 7]] == pytest.approx([-15.0, -10.0, -23.0, 15.0, 14.0, 17.0])
    out = job.run(timeout=300)
    # fixed voxel centres: -31 + 2 n; inside the box: R -15..15 (n 8..23), A -9..13 (n 11..22), S -23..17 (n 4..24)
    assert out.lambda_map.GetImageData().GetDimensions() == (16, 12, 21)
    np.testing.assert_allclose(geometry.ijk_to_ras(out.lambda_map)[:3, 3], [-15.0, -9.0, -23.0], atol=1e-4)
    assert out.report["crop_fixed_ras_mm"] == [[-15.0, -10.0, -23.0], [15.0, 14.0, 17.0]]


def test_an_roi_without_size_is_refused_before_anything_starts(scene, pair):
    flat = roi(scene, (0.0, 0.0, 0.0), (30.0, 0.0, 30.0))
    with pytest.raises(logic.RegistrationError, match="has no size"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_roi=flat).validate()


def test_a_fixed_label_map_alone_is_refused_before_anything_starts(scene, pair):
    """The engine refuses a fixed label map without a moving one (it would do nothing): the module says so
    first; a moving one alone is warped (test_output_nodes_are_updated_in_place)."""
    with pytest.raises(logic.RegistrationError, match="a fixed label map alone does nothing"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=pair["fixed_seg"]).validate()
    with pytest.raises(logic.RegistrationError, match="labels to score need a label map of both volumes"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"],
                              settings=logic.RegistrationSettings(labels=[1])).validate()


def test_an_input_chosen_as_an_output_node_is_refused_before_anything_is_written(scene, pair, tmp_path):
    """The Outputs selectors list every volume: the fixed volume chosen as the lambda map (or the moving volume as
    the warped volume, a label map both as input and as warped labels) was overwritten by the result, and a node
    chosen for two outputs got one map over the other. Refused in one line; the inputs keep their voxels and names."""
    x = geometry.grid_points(SHAPE, AFFINE)
    fixed_labels = add_volume(scene, labels_of(blob_image(x)), AFFINE, "fixed labels", labelmap=True)
    moving_labels = add_volume(scene, labels_of(blob_image(x)), AFFINE, "moving labels", labelmap=True)
    outputs = write_engine_outputs(tmp_path / "output", AFFINE, SHAPE, labels_of(blob_image(x)))
    voxels = {node.GetID(): array_ijk(node) for node in (pair["fixed"], pair["moving"], fixed_labels)}
    names = {node_id: scene.GetNodeByID(node_id).GetName() for node_id in voxels}
    spare = add_volume(scene, np.zeros(SHAPE, np.float32), AFFINE, "spare")
    for reuse, message in (
            (logic.OutputNodes(lambda_map=pair["fixed"]), "the output node for the lambda map is the fixed volume "
                                                          "'fixed', which the run would overwrite"),
            (logic.OutputNodes(warped=pair["moving"]), "the warped volume is the moving volume 'moving'"),
            (logic.OutputNodes(warped_labels=fixed_labels), "the warped labels is the fixed label map"),
            (logic.OutputNodes(lambda_map=spare, jacobian=spare), "'spare' is chosen as the output for both the "
                                                                  "lambda map and the Jacobian")):
        job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=fixed_labels,
                                    moving_labels=moving_labels, reuse=reuse)
        with pytest.raises(logic.RegistrationError, match=re.escape(message)):
            job.validate()
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=fixed_labels, moving_labels=moving_labels,
                                reuse=logic.OutputNodes(lambda_map=spare))
    job.validate()  # a node of its own for each output is taken
    assert job.load_outputs(outputs).lambda_map is spare
    for node_id, before in voxels.items():
        node = scene.GetNodeByID(node_id)
        assert np.array_equal(array_ijk(node), before) and node.GetName() == names[node_id]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("refine", [0, 5])
@pytest.mark.parametrize("masks", ["fixed", "moving", "both"])
def test_masks_with_a_learned_model_are_refused_as_svreg_register_refuses_them(scene, pair, tmp_path, masks, refine,
                                                                               affine):
    """svreg register refuses masks with --model only when neither the affine stage nor a refinement runs (the
    masks restrict their similarity; the network alone ignores them): the module refuses the same cases first, in
    one plain line, and sends the masks on the command line of every other one (a moving mask with the affine stage
    and no refine steps was refused, although the engine uses it there)."""
    from svreg_core.cli import build_parser, registration_parameters
    from svreg_core.errors import InputError

    fixed_mask = add_volume(scene, np.ones(SHAPE, np.uint8), AFFINE, "fixed mask", labelmap=True) \
        if masks in ("fixed", "both") else None
    moving_mask = add_volume(scene, np.ones(SHAPE, np.uint8), AFFINE, "moving mask", labelmap=True) \
        if masks in ("moving", "both") else None
    settings = logic.RegistrationSettings(method="learned", model="brain-unet-spr", refine_steps=refine,
                                          overrides={"affine": affine})
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_mask=fixed_mask, moving_mask=moving_mask,
                                settings=settings)
    if not refine and not affine:
        them = {"fixed": "fixed mask restricts", "moving": "moving mask restricts",
                "both": "fixed mask and moving mask restrict"}[masks]
        with pytest.raises(logic.RegistrationError, match=rf"^the {them} the similarity of the affine stage and of "
                                                          r"the refine steps, and both are off: tick Affine "
                                                          r"pre-alignment, set Refine steps above 0, or clear"):
            job.validate()
        job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_mask=fixed_mask, moving_mask=moving_mask,
                                    settings=logic.RegistrationSettings(method="learned", model="brain-unet-spr",
                                                                        refine_steps=1, overrides={"affine": affine}))
    job.validate()
    args = job.export_inputs(tmp_path).arguments()
    assert ("--fixed-mask" in args, "--moving-mask" in args) == (fixed_mask is not None, moving_mask is not None)
    if not refine and not affine:  # the engine refuses the refused case's command line too
        args[args.index("--refine") + 1] = "0"
        with pytest.raises(InputError, match="the network alone does not use them"):
            registration_parameters(build_parser()[0].parse_args(args[2:]))
    else:
        registration_parameters(build_parser()[0].parse_args(args[2:]))


@pytest.mark.parametrize("kind", ["volume", "segmentation"])
def test_an_empty_mask_is_refused_before_the_engine_starts(scene, pair, tmp_path, kind):
    """A mask with no voxel inside (all zeros, or a segmentation whose segment was never painted): the engine
    weighs the similarity by it, so it ran to the end, only smoothed, and reported success. Now a plain message
    before the engine starts, nothing left in the temporary folder, the scene unchanged."""
    if kind == "volume":
        mask = add_volume(scene, np.zeros(SHAPE, np.uint8), AFFINE, "fixed mask", labelmap=True)
    else:
        import slicer
        import vtk.util.numpy_support as ns

        painted = np.zeros(SHAPE, np.uint8)
        painted[10:20, 10:20, 10:20] = 1
        mask = segmentation_from(scene, add_volume(scene, painted, AFFINE, "painted", labelmap=True), ["region"])
        mask.SetName("fixed mask")
        erased = slicer.vtkOrientedImageData()  # the region erased again (Segment Editor's Erase effect)
        erased.DeepCopy(mask.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap"))
        ns.vtk_to_numpy(erased.GetPointData().GetScalars())[:] = 0
        segments = slicer.vtkSlicerSegmentationsModuleLogic
        assert segments.SetBinaryLabelmapToSegment(erased, mask, mask.GetSegmentation().GetNthSegmentID(0),
                                                   segments.MODE_REPLACE)
    nodes_before = scene.GetNumberOfNodes()
    settings = logic.RegistrationSettings(temp_root=str(tmp_path))
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_mask=mask, settings=settings,
                                python=str(tmp_path.parent / f"{tmp_path.name}-no-engine"))  # never started
    with pytest.raises(logic.RegistrationError, match=r"the fixed mask 'fixed mask' is empty \(no voxel inside it\)"):
        job.start()
    assert job.child is None and not any(tmp_path.iterdir()) and scene.GetNumberOfNodes() == nodes_before


def test_warped_segmentation_labels_leave_no_node_behind_run_after_run(scene, pair, tmp_path):
    """Loading warped labels into a Segmentation staged them in a label map volume, removed afterwards without its
    display node: every run left one more orphan display node in the scene (saved with it). Loaded from an output
    folder written by hand (no engine): only the result nodes and their display nodes are added, and a re-run
    into the same nodes adds nothing."""
    x = geometry.grid_points(SHAPE, AFFINE)
    outputs = write_engine_outputs(tmp_path / "output", AFFINE, SHAPE, labels_of(blob_image(x)))

    def node_ids():
        return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}

    before = node_ids()
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"])
    job.validate()
    first = job.load_outputs(outputs)
    assert first.warped_labels.GetSegmentation().GetNumberOfSegments() == 2
    wanted = {n.GetID() for n in first.nodes()}
    wanted |= {n.GetNthDisplayNodeID(i) for n in first.nodes() if n.IsA("vtkMRMLDisplayableNode")
               for i in range(n.GetNumberOfDisplayNodes())}
    added = {i for i in node_ids() - before if not scene.GetNodeByID(i).IsA("vtkMRMLColorNode")}
    assert added == wanted
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"], reuse=first.reuse())
    job.validate()
    after_first = node_ids()
    job.load_outputs(outputs)
    assert node_ids() == after_first


def test_outputs_a_rerun_does_not_update_are_named_as_the_earlier_runs(scene, pair, tmp_path):
    """Re-running into the same nodes with the inverse and the warped volume turned off left the earlier inverse
    (of the old transform) named as the pair of the updated transform; such nodes keep their content and say so."""
    outputs = write_engine_outputs(tmp_path / "output", AFFINE, SHAPE)
    settings = logic.RegistrationSettings(create_inverse=True, create_warped=True)
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], settings=settings)
    job.validate()
    first = job.load_outputs(outputs)
    names = {n.GetID(): n.GetName() for n in first.nodes()}
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], reuse=first.reuse(),
                                settings=logic.RegistrationSettings(create_inverse=False, create_warped=False))
    job.validate()
    second = job.load_outputs(outputs)
    assert (second.transform, second.inverse, second.warped) == (first.transform, None, None)
    for node in (first.inverse, first.warped):
        assert node.GetScene() is scene and node.GetName() == names[node.GetID()] + logic.STALE_SUFFIX
    assert first.transform.GetName() == names[first.transform.GetID()]  # updated: its name stays
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], reuse=logic.OutputNodes(inverse=first.inverse))
    job.validate()
    job.load_outputs(outputs)  # marked once only
    assert first.inverse.GetName() == names[first.inverse.GetID()] + logic.STALE_SUFFIX


def test_painting_a_segmentation_restarts_the_slider_preview_engine(scene, pair):
    """The preview engine reads the label maps and masks once; it is restarted when they change. Painting a
    segment (the Segment Editor writes into the segment's labelmap) left the segmentation's own modification time
    as it was, so the sliders went on warping the labels as they were before the edit."""
    import slicer
    import vtk.util.numpy_support as ns

    region = np.zeros(SHAPE, np.uint8)
    region[8:16, 8:16, 8:16] = 1
    seg = segmentation_from(scene, add_volume(scene, region, AFFINE, "region", labelmap=True), ["region"])

    def key():
        job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=seg)
        job.validate()
        return job.preview_key()

    before = key()
    assert key() == before  # nothing changed: the running engine serves on
    segmentation = seg.GetSegmentation()
    painted = slicer.vtkOrientedImageData()
    painted.DeepCopy(segmentation.GetNthSegment(0).GetRepresentation("Binary labelmap"))
    ns.vtk_to_numpy(painted.GetPointData().GetScalars())[:5] = 1
    segments = slicer.vtkSlicerSegmentationsModuleLogic
    assert segments.SetBinaryLabelmapToSegment(painted, seg, segmentation.GetNthSegmentID(0), segments.MODE_REPLACE)
    assert key() != before


def test_a_users_own_node_a_run_does_not_update_keeps_its_name(scene, pair, tmp_path):
    """A label map of the user's chosen as the output for segmentation labels (of another kind: a new Segmentation
    is made) was renamed "... (earlier run, not updated)", though no run had ever written it."""
    x = geometry.grid_points(SHAPE, AFFINE)
    outputs = write_engine_outputs(tmp_path / "output", AFFINE, SHAPE, labels_of(blob_image(x)))
    own = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "my labels")
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], moving_labels=pair["moving_seg"],
                                reuse=logic.OutputNodes(warped_labels=own))
    job.validate()
    result = job.load_outputs(outputs)
    assert result.warped_labels.IsA("vtkMRMLSegmentationNode") and own.GetName() == "my labels"
