"""The engine's child process, end to end on a tiny pair, through the module's GUI-free logic.

Success (output nodes, geometry, display, Dice in the status text, the engine's transform.h5 agreeing
with the grid transform node), cancel mid-run (no output folder, no process left, scene unchanged),
bad input (a plain message reaches the caller), CUDA requested without CUDA, and the process-tree kill.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
from slicer_test_helpers import add_volume, array_ijk, blob_image, process_alive, process_group_alive

from SpatialVaryingRegLib import display, geometry, logic, runner

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process-group checks are POSIX-only here")

#: Fast engine parameters for 32^3 images (two coarse levels, few iterations, no affine stage; MSE since
#: the synthetic pair has identical intensities and little texture).
FAST = {"level_spacings": [8.0, 4.0], "iterations": [15, 15], "affine": False, "similarity": "mse"}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -31.0
SHAPE = (32, 32, 32)


def smooth_displacement(points):
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([3.0 * np.sin(y / 12.0), 2.0 * np.cos(z / 15.0), 2.0 * np.sin(x / 11.0)], -1)


@pytest.fixture
def pair(scene):
    """Fixed/moving volumes and label maps (32^3, 2 mm) related by a smooth known deformation."""
    x = geometry.grid_points(SHAPE, AFFINE)
    fixed_data, moving_data = blob_image(x + smooth_displacement(x)), blob_image(x)
    return {
        "fixed": add_volume(scene, fixed_data, AFFINE, "fixed"),
        "moving": add_volume(scene, moving_data, AFFINE, "moving"),
        "fixed_labels": add_volume(scene, (fixed_data > 0.5).astype(np.int16), AFFINE, "fixed labels", labelmap=True),
        "moving_labels": add_volume(scene, (moving_data > 0.5).astype(np.int16), AFFINE, "moving labels",
                                    labelmap=True),
    }


def dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_register_end_to_end_creates_the_output_nodes(scene, pair, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    events, lines = [], []
    settings = logic.RegistrationSettings(overrides=FAST, device="cpu", keep_temporary_files=True,
                                          temp_root=str(tmp_path))
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=pair["fixed_labels"],
                                moving_labels=pair["moving_labels"], settings=settings,
                                on_event=events.append, on_log=lines.append)
    out = job.run(timeout=300)

    # progress arrived as JSON events, in order, ending with done
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert events[-1]["event"] == "done"
    assert any(e.get("stage", "").startswith("deformable") for e in events)

    # the transform: a FromParent grid transform with fixed/moving references, the moving volume under it
    t = out.transform
    assert t.IsA("vtkMRMLGridTransformNode") and t.GetTransformFromParent().IsA("vtkOrientedGridTransform")
    assert not t.GetTransformFromParent().GetInverseFlag()
    assert t.GetNodeReference(t.GetFixedNodeReferenceRole()) is pair["fixed"]
    assert t.GetNodeReference(t.GetMovingNodeReferenceRole()) is pair["moving"]
    assert pair["moving"].GetParentTransformNode() is t
    assert t.GetAttribute(logic.RUN_ATTRIBUTE) == "1"

    # it maps points like the engine's own transform.h5 (read by SimpleITK, LPS)
    outdir = out.output_dir
    assert outdir is not None and (outdir / "transform.h5").is_file()
    h5 = sitk.ReadTransform(str(outdir / "transform.h5"))
    rng = np.random.default_rng(0)
    ijk = rng.uniform(3, 28, size=(30, 3))
    probe = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    flip = np.array([-1.0, -1.0, 1.0])
    expected = np.array([h5.TransformPoint(tuple(p * flip)) for p in probe]) * flip
    mrml = np.array([t.GetTransformFromParent().TransformPoint(p) for p in probe])
    assert np.abs(mrml - expected).max() < 1e-3

    # λ and Jacobian: scalar volumes on the fixed grid with their display settings
    fixed_dims = pair["fixed"].GetImageData().GetDimensions()
    for node in (out.lambda_map, out.jacobian, out.warped):
        assert node.GetImageData().GetDimensions() == fixed_dims
        assert np.allclose(geometry.world_ijk_to_ras(node), geometry.world_ijk_to_ras(pair["fixed"]), atol=1e-4)
        assert node.GetParentTransformNode() is None
    lam = array_ijk(out.lambda_map)
    assert lam.min() > 0 and lam.max() <= 1.0 + 1e-6
    lambda_window = display.lambda_window(lam)
    lo, hi = lambda_window[1] - lambda_window[0] / 2, lambda_window[1] + lambda_window[0] / 2
    assert 0.0 <= lo < hi <= 1.0 and hi >= np.percentile(lam, 99) and lo <= np.percentile(lam, 2)
    assert f"λ map colours: dark purple λ <= {lo:g} to yellow λ = 1." in lines  # what the colours mean
    for node, window in ((out.lambda_map, lambda_window), (out.jacobian, display.JACOBIAN_WINDOW)):
        d = node.GetDisplayNode()
        assert not d.GetAutoWindowLevel()
        assert (d.GetWindow(), d.GetLevel()) == pytest.approx(window)
    colors = scene.GetNodeByID(out.jacobian.GetDisplayNode().GetColorNodeID())
    assert colors.GetName() == display.DIVERGING_FALLBACK_NAME
    # the first result is shown: fixed in the background, λ in the foreground of every slice view
    for view in views:
        assert view.GetBackgroundVolumeID() == pair["fixed"].GetID()
        assert view.GetForegroundVolumeID() == out.lambda_map.GetID()

    # warped labels and the numbers in the status line
    assert out.warped_labels.IsA("vtkMRMLLabelMapVolumeNode")
    before = dice(array_ijk(pair["fixed_labels"]), array_ijk(pair["moving_labels"]))
    after = dice(array_ijk(pair["fixed_labels"]), array_ijk(out.warped_labels))
    metrics = out.report["metrics"]
    assert after > before and metrics["dice_mean"] == pytest.approx(after, abs=1e-3)
    assert metrics["folding_percent"] < 1.0
    assert "mean Dice" in out.status_text and "folding" in out.status_text
    assert all(name.startswith("moving to fixed (SVReg 1)") for name in (n.GetName() for n in out.nodes()))

    # a second run gets the next number and leaves the slice views alone
    for view in views:
        view.SetForegroundVolumeID(None)
    settings2 = logic.RegistrationSettings(overrides=FAST, device="cpu", create_warped=False, temp_root=str(tmp_path))
    out2 = logic.RegistrationJob(pair["fixed"], pair["moving"], settings=settings2).run(timeout=300)
    assert out2.transform.GetAttribute(logic.RUN_ATTRIBUTE) == "2" and "(SVReg 2)" in out2.run_name
    assert out2.warped is None
    assert all(view.GetForegroundVolumeID() is None for view in views)
    assert [p.name for p in tmp_path.iterdir()] == [outdir.parent.name]  # the second run cleaned up


def test_cancel_mid_run_leaves_no_folder_no_process_and_the_scene_unchanged(scene, pair, tmp_path):
    slow = dict(FAST, iterations=[2000, 2000])
    settings = logic.RegistrationSettings(overrides=slow, device="cpu", temp_root=str(tmp_path))
    events = []
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], settings=settings, on_event=events.append)
    nodes_before = scene.GetNumberOfNodes()
    job.start()
    workdir, pid = job.workdir, job.child.process.pid
    assert workdir.is_dir()
    t0 = time.monotonic()
    while not any(e.get("stage", "").startswith("deformable") for e in events):
        assert job.poll(), "the run ended before it could be cancelled"
        assert time.monotonic() - t0 < 120
        time.sleep(0.05)
    job.cancel()

    assert job.cancelled and job.outputs is None and "cancelled" in job.error
    assert not workdir.exists() and list(tmp_path.iterdir()) == []
    assert not process_group_alive(pid)
    assert scene.GetNumberOfNodes() == nodes_before
    assert pair["moving"].GetParentTransformNode() is None
    with pytest.raises(logic.RegistrationCancelled):
        job.run()


def test_a_registration_past_its_time_limit_is_an_error_that_says_so(scene, pair, tmp_path):
    """``logic.register(timeout=…)`` ran out: a RegistrationError naming the limit (it was RegistrationCancelled,
    'cancelled by the user'), the folder removed, the scene unchanged."""
    slow = dict(FAST, iterations=[2000, 2000])
    settings = logic.RegistrationSettings(overrides=slow, device="cpu", temp_root=str(tmp_path))
    nodes_before = scene.GetNumberOfNodes()
    job = logic.RegistrationJob(pair["fixed"], pair["moving"], settings=settings)
    with pytest.raises(logic.RegistrationError) as info:
        job.run(timeout=1.0)
    assert not isinstance(info.value, logic.RegistrationCancelled)
    assert str(info.value) == "stopped after 1 s: it ran past its time limit."
    assert list(tmp_path.iterdir()) == [] and scene.GetNumberOfNodes() == nodes_before


def test_bad_input_message_reaches_the_caller(scene, pair, tmp_path):
    data = array_ijk(pair["fixed"]).copy()
    data[3, 4, 5] = np.nan
    broken = add_volume(scene, data, AFFINE, "broken")
    settings = logic.RegistrationSettings(overrides=FAST, device="cpu", temp_root=str(tmp_path))
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(logic.RegistrationError) as info:
        logic.RegistrationJob(broken, pair["moving"], settings=settings).run(timeout=120)
    message = str(info.value)
    assert "NaN" in message or "not finite" in message or "infinite" in message
    assert "\n" not in message and "Traceback" not in message
    assert scene.GetNumberOfNodes() == nodes_before and list(tmp_path.iterdir()) == []

    # inputs the module rejects before starting anything
    with pytest.raises(logic.RegistrationError, match="same node"):
        logic.RegistrationJob(pair["fixed"], pair["fixed"], settings=settings).start()
    elsewhere = add_volume(scene, np.zeros((8, 8, 8), np.int16), np.diag([3.0, 3.0, 3.0, 1.0]), "elsewhere",
                           labelmap=True)
    with pytest.raises(logic.RegistrationError, match="not on the grid"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], fixed_labels=elsewhere, settings=settings).start()
    bad_preset = logic.RegistrationSettings(preset=str(tmp_path / "missing.json"), temp_root=str(tmp_path))
    with pytest.raises(logic.RegistrationError, match="preset"):
        logic.RegistrationJob(pair["fixed"], pair["moving"], settings=bad_preset).start()
    assert list(tmp_path.iterdir()) == []


def test_cuda_requested_without_cuda_gives_a_plain_message(scene, pair, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    settings = logic.RegistrationSettings(overrides=FAST, device="cuda", temp_root=str(tmp_path))
    with pytest.raises(logic.RegistrationError) as info:
        logic.RegistrationJob(pair["fixed"], pair["moving"], settings=settings).run(timeout=120)
    assert "CUDA" in str(info.value) and "cpu" in str(info.value).lower()
    assert list(tmp_path.iterdir()) == []


def test_register_command_line_matches_the_engine_parser(tmp_path):
    from svreg_core.cli import build_parser

    request = runner.RegisterRequest(fixed=tmp_path / "f.nii.gz", moving=tmp_path / "m.nii.gz",
                                     output=tmp_path / "out", fixed_labels=tmp_path / "fl.nii.gz",
                                     moving_labels=tmp_path / "ml.nii.gz", fixed_mask=tmp_path / "fm.nii.gz",
                                     moving_mask=tmp_path / "mm.nii.gz", labels=[2, 3], preset="ct",
                                     similarity="mind", spr=False, affine=False, device="cpu",
                                     label_interpolation="nearest", outputs=["displacement", "jacobian"],
                                     gzip_level=0)
    args = request.arguments()
    assert args[:3] == ["-m", "svreg_core.cli", "register"]
    parser, _ = build_parser()
    ns = parser.parse_args(args[2:])
    assert (ns.fixed, ns.moving, ns.output) == (str(request.fixed), str(request.moving), str(request.output))
    assert ns.labels == [2, 3] and ns.preset == "ct" and ns.similarity == "mind" and ns.no_spr
    assert ns.affine is False and ns.device == "cpu" and ns.seed is None and ns.progress == "json"
    assert ns.label_interpolation == "nearest" and ns.fixed_mask == str(request.fixed_mask)
    assert ns.outputs == ["displacement", "jacobian"] and ns.gzip_level == 0
    assert "--outputs" not in runner.RegisterRequest(fixed=tmp_path / "f.nii.gz", moving=tmp_path / "m.nii.gz",
                                                     output=tmp_path / "out").arguments()  # default: all
    # an ROI's bound with rounding noise (repr: -3.55e-15, which argparse before Python 3.14 takes for an option)
    crop = (-3.55e-15, -20.5, 0.1, 40.0, 1e-9, 123456.789)
    cropped = runner.RegisterRequest(fixed=tmp_path / "f.nii.gz", moving=tmp_path / "m.nii.gz",
                                     output=tmp_path / "out", crop_fixed=crop).arguments()
    assert tuple(parser.parse_args(cropped[2:]).crop_fixed) == crop


def test_child_process_cancel_kills_the_whole_tree():
    script = textwrap.dedent("""
        import json, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(json.dumps({"event": "progress", "stage": "spawned", "grandchild": child.pid}), flush=True)
        time.sleep(120)
    """)
    events = []
    proc = runner.ChildProcess(["-c", script], python=sys.executable, env=dict(os.environ),
                               on_event=events.append).start()
    t0 = time.monotonic()
    while not events:
        assert proc.poll() and time.monotonic() - t0 < 30
        time.sleep(0.02)
    grandchild = events[0]["grandchild"]
    result = proc.cancel(grace=1.0)
    assert result.status == runner.CANCELLED
    assert not process_group_alive(proc.process.pid)
    assert not process_alive(grandchild)


def test_a_run_past_its_time_limit_says_so_not_cancelled_by_the_user():
    proc = runner.ChildProcess(["-c", "import time; time.sleep(60)"], python=sys.executable,
                               env=dict(os.environ)).start()
    result = proc.wait(timeout=0.5)
    assert result.status == runner.CANCELLED
    assert result.message == "stopped after 0.5 s: it ran past its time limit."
    assert not process_group_alive(proc.process.pid)


def test_child_process_failure_without_error_event_is_summarised():
    proc = runner.ChildProcess(["-c", "import sys; print('some log'); sys.exit('ModuleNotFoundError: No module "
                                      "named \\'nibabel\\'')"], python=sys.executable, env=dict(os.environ))
    result = proc.start().wait(timeout=30)
    assert result.status == runner.FAILED and result.returncode == 1
    assert "nibabel" in result.message and "install" in result.message.lower()
    assert "some log" in result.log_tail


def test_plain_messages():
    assert "GPU ran out of memory" in runner.plain_message("torch.OutOfMemoryError: CUDA out of memory. Tried ...")
    assert "Use CPU" in runner.plain_message("CUDA out of memory", "cuda")
    assert "ran out of memory" in runner.plain_message("out of memory; crop the images", "cpu")
    assert "PyTorch" in runner.plain_message("ModuleNotFoundError: No module named 'torch'")
    message = "fixed image: file not found: x.nii.gz"
    assert runner.plain_message(f"line 1\n{message}") == message


def test_preset_document_merges_overrides(tmp_path):
    doc = logic.RegistrationSettings(preset="ct", overrides={"alpha_prime": 0.01, "similarity": None}).preset_document()
    assert doc == {"base": "ct", "parameters": {"alpha_prime": 0.01}}
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"base": "lung-ct", "parameters": {"lambda_max": 2.0}, "tuning": {"trial": 3}}))
    doc = logic.RegistrationSettings(preset=str(path), overrides={"affine": False}).preset_document()
    assert doc == {"base": "lung-ct", "parameters": {"lambda_max": 2.0, "affine": False}}

    from svreg_core.optim.parameters import load_parameters  # the engine accepts what the module writes

    out = tmp_path / "merged.json"
    out.write_text(json.dumps(doc))
    params = load_parameters(str(out))
    assert params.lambda_max == 2.0 and params.affine is False and params.similarity == "mind"


def test_outputs_of_a_moving_volume_under_a_linear_transform(scene, slicer_module, tmp_path):
    """The engine registers the volume as seen in the world; the node placed under the result still
    hardens onto the fixed volume (the result includes its former linear parent)."""
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    from svreg_core.image import Grid
    from svreg_core.outputs.itk import displacement_nifti

    x = geometry.grid_points(SHAPE, AFFINE)
    u = smooth_displacement(x).astype(np.float32)
    fixed = add_volume(scene, blob_image(x + u), AFFINE, "fixed")  # fixed(x) = moving_world(x + u(x))
    # the moving volume's own grid is shifted/rotated; a linear parent transform P puts it in the world
    P = np.eye(4)
    P[:3, :3] = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    P[:3, 3] = [4.0, -3.0, 2.0]
    local_affine = np.linalg.inv(P) @ AFFINE
    moving = add_volume(scene, blob_image(geometry.grid_points(SHAPE, P @ local_affine)), local_affine, "moving")
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial alignment")
    parent.SetMatrixTransformToParent(geometry.array_to_matrix(P))
    moving.SetAndObserveTransformNodeID(parent.GetID())

    job = logic.RegistrationJob(fixed, moving, settings=logic.RegistrationSettings(create_warped=False))
    job.validate()
    assert np.allclose(job._moving_ijk_to_world, AFFINE)  # exported as seen in the world
    out = tmp_path / "output"  # what the engine writes, in its formats
    out.mkdir()
    nib.save(displacement_nifti(u, Grid(SHAPE, AFFINE)), str(out / "displacement.nii.gz"))
    for name in ("regularization", "jacobian"):
        nib.save(nib.Nifti1Image(np.full(SHAPE, 0.9, np.float32), AFFINE), str(out / f"{name}.nii.gz"))
    (out / "report.json").write_text(json.dumps({"metrics": {"folding_percent": 0.0}, "device": "cpu"}))
    result = job.load_outputs(out)

    assert moving.GetParentTransformNode() is result.transform
    assert parent.GetID() and scene.GetNodeByID(parent.GetID()) is parent  # left in the scene, unused
    assert slicer_module.vtkSlicerTransformLogic.hardenTransform(moving)
    inv = np.linalg.inv(geometry.world_ijk_to_ras(moving))
    ijk = x @ inv[:3, :3].T + inv[:3, 3]
    hardened = map_coordinates(array_ijk(moving).astype(np.float64), ijk.reshape(-1, 3).T,
                               order=1).reshape(SHAPE)
    fixed_data = array_ijk(fixed)
    inner = (slice(5, -5),) * 3
    assert np.abs(hardened - fixed_data)[inner].max() < 0.03


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_an_engine_killed_by_the_system_says_so_not_its_last_log_line():
    """The out-of-memory killer ends the engine with SIGKILL, without an error event: the message was its last
    stderr line (e.g. a library's warning), or "exited with status -9". It says what happened and what to do."""
    script = ("import os, signal, sys; print('UserWarning: TypedStorage is deprecated', file=sys.stderr, flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    result = runner.ChildProcess(["-c", script], python=sys.executable, env=dict(os.environ)).start().wait(timeout=30)
    assert result.status == runner.FAILED and result.returncode == -signal.SIGKILL
    assert result.message.startswith("The registration engine was killed by the system (SIGKILL), most often because "
                                     "the computer ran out of memory.")
    assert result.log_tail == ["UserWarning: TypedStorage is deprecated"]
    crashed = runner.ChildProcess(["-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
                                  python=sys.executable, env=dict(os.environ)).start().wait(timeout=30)
    assert crashed.message == "The registration engine stopped unexpectedly (SIGSEGV); the Log shows its last lines."


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names and PATH")
def test_the_child_runs_with_this_slicers_own_python(slicer_module, monkeypatch, tmp_path):
    """Inside Slicer the child ran the first ``PythonSlicer`` on the PATH: with another Slicer's bin folder there
    (a second version installed, a build tree), the engine ran in that Slicer's Python, with its packages and torch.
    This Slicer's own (``<slicerHome>/bin``) comes first; one on the PATH only without it."""
    import types

    for folder in ("this/bin", "other/bin"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "PythonSlicer").write_text("#!/bin/sh\n", encoding="utf-8")
        (tmp_path / folder / "PythonSlicer").chmod(0o755)
    monkeypatch.delenv("SVREG_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "other" / "bin") + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(slicer_module, "app", types.SimpleNamespace(slicerHome=str(tmp_path / "this")), raising=False)
    assert runner.python_executable() == str(tmp_path / "this" / "bin" / "PythonSlicer")
    (tmp_path / "this" / "bin" / "PythonSlicer").unlink()
    assert runner.python_executable() == str(tmp_path / "other" / "bin" / "PythonSlicer")
