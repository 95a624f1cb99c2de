"""Failures after the engine and the input selectors' defaults (issue 12, defects 3 and 6).

An engine stand-in (a script given as the child interpreter) exits successfully but leaves a
displacement file that SimpleITK cannot read: the job must end at once with SimpleITK's own one-line
message, keep or remove its folder as the setting says, and never report a later "No such file".
"""
from __future__ import annotations

import stat
import sys

import numpy as np
import pytest
from slicer_test_helpers import add_volume, process_group_alive, write_engine_outputs

from SpatialVaryingRegLib import geometry, logic

ENGINE = """\
#!{python}
import json, pathlib, sys
out = pathlib.Path(sys.argv[sys.argv.index("-o") + 1])
out.mkdir(parents=True)
(out / "report.json").write_text(json.dumps({{"metrics": {{"folding_percent": 0.0}}, "device": "cpu"}}))
(out / "displacement.nii.gz").write_bytes(b"this is not a NIfTI file")
print(json.dumps({{"event": "done", "outdir": str(out)}}), flush=True)
"""


@pytest.fixture
def corrupt_engine(tmp_path):
    path = tmp_path / "engine"
    path.write_text(ENGINE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def pair(scene):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    return (add_volume(scene, rng.random((12, 12, 12)).astype(np.float32), affine, "fixed"),
            add_volume(scene, rng.random((12, 12, 12)).astype(np.float32), affine, "moving"))


@pytest.mark.parametrize("keep", [True, False])
def test_an_unreadable_output_ends_the_job_with_the_real_message(scene, pair, corrupt_engine, tmp_path, keep):
    fixed, moving = pair
    settings = logic.RegistrationSettings(keep_temporary_files=keep, temp_root=str(tmp_path / "temp"))
    nodes_before = scene.GetNumberOfNodes()
    job = logic.RegistrationJob(fixed, moving, settings=settings, python=corrupt_engine, env={})
    with pytest.raises(logic.RegistrationError) as caught:
        job.run(timeout=60)
    message = str(caught.value)
    assert message.startswith("the engine finished but its outputs could not be loaded: ")
    assert "\n" not in message and "report.json" not in message
    assert job.poll() is False and job.poll() is False  # ended for good: a timer stops here
    assert scene.GetNumberOfNodes() == nodes_before and moving.GetParentTransformNode() is None
    assert (job.workdir / "output" / "displacement.nii.gz").is_file() is keep
    assert any((tmp_path / "temp").iterdir()) is keep


FINISHED_ENGINE = """\
#!{python}
import json, shutil, sys, time
out = sys.argv[sys.argv.index("-o") + 1]
time.sleep(0.3)
shutil.copytree({outputs!r}, out)
print(json.dumps({{"event": "done", "outdir": out}}), flush=True)
"""


def test_a_volume_deleted_while_the_engine_runs_ends_the_job_with_a_plain_message(scene, pair, tmp_path):
    """The moving volume deleted (Data module) while the engine ran: its results were still loaded, a transform
    and maps of a volume no longer in the scene. Now the job ends with a plain message, nothing is added, and the
    temporary folder is removed. An engine stand-in copies a finished output folder written by hand."""
    fixed, moving = pair
    outputs = write_engine_outputs(tmp_path / "finished", geometry.ijk_to_ras(fixed), (12, 12, 12))
    engine = tmp_path / "engine"
    engine.write_text(FINISHED_ENGINE.format(python=sys.executable, outputs=str(outputs)))
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    settings = logic.RegistrationSettings(temp_root=str(tmp_path / "temp"))
    job = logic.RegistrationJob(fixed, moving, settings=settings, python=str(engine), env={})
    nodes_after_deletion: list[int] = []

    def delete_the_moving_volume() -> None:  # the user, while the engine runs
        if not nodes_after_deletion:
            scene.RemoveNode(moving)
            nodes_after_deletion.append(scene.GetNumberOfNodes())

    with pytest.raises(logic.RegistrationError, match="^the engine finished but its outputs could not be loaded: the "
                       "moving volume 'moving' was removed from the scene during the registration; nothing was "
                       "loaded.$"):
        job.run(timeout=60, idle=delete_the_moving_volume)
    assert scene.GetNumberOfNodes() == nodes_after_deletion[0] and moving.GetParentTransformNode() is None
    assert not any((tmp_path / "temp").iterdir())


SLOW_ENGINE = """\
#!{python}
import time
time.sleep(60)
"""


def test_an_interrupted_console_run_ends_the_engine_and_removes_its_folder(scene, pair, tmp_path):
    """``logic.register`` blocks the Python console; interrupted there (KeyboardInterrupt, e.g. a notebook's stop
    button), it left the engine running and its temporary folder behind. An engine stand-in that only sleeps."""
    fixed, moving = pair
    engine = tmp_path / "engine"
    engine.write_text(SLOW_ENGINE.format(python=sys.executable))
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    settings = logic.RegistrationSettings(temp_root=str(tmp_path / "temp"))
    job = logic.RegistrationJob(fixed, moving, settings=settings, python=str(engine), env={})

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(timeout=60, idle=interrupt)
    assert not process_group_alive(job.child.process.pid) and not any((tmp_path / "temp").iterdir())
    assert job.cancelled and job.error == "the registration was interrupted."


def test_one_line_messages():
    assert logic.one_line(RuntimeError("Exception thrown in SimpleITK ReadImage\nmore detail")) == \
        "Exception thrown in SimpleITK ReadImage"
    assert logic.one_line(KeyError()) == "KeyError"
    assert "crop the volumes" in logic.one_line(MemoryError())


def test_input_defaults_skip_label_maps_and_results_and_differ(scene):
    affine = np.eye(4)
    data = np.zeros((4, 4, 4), np.float32)
    assert logic.default_input_volumes(scene) == (None, None)
    first = add_volume(scene, data, affine, "t1")
    assert logic.default_input_volumes(scene) == (first, None)
    second = add_volume(scene, data, affine, "t2")
    add_volume(scene, data.astype(np.int16), affine, "labels", labelmap=True)
    lam = add_volume(scene, data, affine, "t2 to t1 (SVReg 1) lambda")
    lam.SetAttribute(logic.RUN_ATTRIBUTE, "1")
    fixed, moving = logic.default_input_volumes(scene)
    assert (fixed, moving) == (first, second) and fixed is not moving
    assert logic.module_output_ids(scene) == [lam.GetID()]
