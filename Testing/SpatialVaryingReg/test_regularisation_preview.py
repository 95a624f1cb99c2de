"""The *Regularisation* sliders of a HyperSPR model, below the widget (issue 9, Slicer part):

* the module reads a model's code ranges and default codes from ``model.json`` (plain JSON, no torch),
  the same ranges the engine reads from a checkpoint it saved itself;
* codes are checked before anything starts, with the engine's rule and a plain message;
* the job's ``svreg register`` command line carries ``--alpha-prime``/``--lambda-max`` (the engine's own
  parser reads them back);
* sliders map positions log-uniformly onto the trained ranges, the default is found again exactly;
* the preview scheduler debounces, stops a running run first and keeps at most one alive (real child
  processes);
* end to end on the preview engine (a real ``svreg preview`` child of a tiny hyper checkpoint): slider
  moves reuse one engine process and update the same output nodes in place, the latest request winning;
  a change of inputs or settings restarts it; cancel and stop kill its process tree; a bad code gets the
  plain message and the engine serves on.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import numpy as np
import pytest
from slicer_test_helpers import (
    HYPER,
    add_volume,
    array_ijk,
    blob_image,
    grid_transform_arrays,
    process_alive,
    process_group_alive,
    tiny_hyper_checkpoint,
    write_model,
)

from SpatialVaryingRegLib import geometry, logic, models, preview, runner

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -31.0
SHAPE = (32, 32, 32)


def hyper_model(folder, **extra):
    return write_model(folder, name="hyper-tiny", config={"hyper": HYPER}, alpha_prime=0.175, lambda_max=1.0,
                       **extra)


@pytest.fixture
def pair(scene):
    x = geometry.grid_points(SHAPE, AFFINE)
    u = np.stack([3.0 * np.sin(x[..., 1] / 12.0), 2.0 * np.cos(x[..., 2] / 15.0), 2.0 * np.sin(x[..., 0] / 11.0)], -1)
    return add_volume(scene, blob_image(x + u), AFFINE, "fixed"), add_volume(scene, blob_image(x), AFFINE, "moving")


# ---- model.json


def test_code_ranges_and_defaults_are_read_from_model_json(tmp_path):
    hyper = models.read_model(hyper_model(tmp_path / "h"))
    assert hyper.is_hyper and hyper.code_ranges == models.CodeRanges((0.05, 0.5), (0.5, 10.0))
    assert hyper.default_codes == (0.175, 1.0)
    assert hyper.summary().endswith("regularisation adjustable: alpha_prime 0.05 to 0.5, lambda_max 0.5 to 10")
    plain = models.read_model(write_model(tmp_path / "p", alpha_prime=0.1, lambda_max=2.0))
    assert not plain.is_hyper and plain.code_ranges is None and plain.default_codes == (0.1, 2.0)
    assert models.read_model(write_model(tmp_path / "old")).default_codes is None  # an older description
    # a shipped hyper model and a checkpoint are described alike
    engine = tmp_path / "engine"
    (engine / "svreg_core").mkdir(parents=True)
    hyper_model(engine / models.SHIPPED_SUBFOLDER / "brain-hyper")
    assert models.model_info("brain-hyper", engine).code_ranges == hyper.code_ranges
    assert models.model_info(str(tmp_path / "h" / "model.json"), engine).default_codes == (0.175, 1.0)
    with pytest.raises(models.ModelError, match="no shipped model 'nope'"):
        models.model_info("nope", engine)


@pytest.mark.parametrize("extra, message", [
    ({"config": {"hyper": {"alpha_prime": [0.5, 0.05], "lambda_max": [0.5, 10]}}},
     r"alpha_prime range \(config.hyper\) must be two numbers \[low, high\] with 0 < low <= high"),
    ({"config": {"hyper": {"alpha_prime": [0.05, 0.5]}}}, r"code ranges \(config.hyper\) must be"),
    ({"config": {"hyper": {"alpha_prime": [0, 0.5], "lambda_max": [0.5, 10]}}}, "0 < low <= high"),
    ({"config": {"hyper": HYPER}, "alpha_prime": "x", "lambda_max": 1.0}, "needs its default alpha_prime"),
])
def test_a_malformed_hyper_description_is_refused_in_one_line(tmp_path, extra, message):
    folder = write_model(tmp_path / "bad", **extra)
    with pytest.raises(models.ModelError, match=message) as info:
        models.read_model(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_the_module_reads_the_ranges_the_engine_saved(tmp_path):
    """The module's JSON reading agrees with the engine's own ModelInfo of a checkpoint it wrote."""
    from svreg_core.models import read_model_info

    folder = tiny_hyper_checkpoint(tmp_path)
    engine_info, module_info = read_model_info(folder), models.read_model(folder)
    assert module_info.code_ranges.alpha_prime == engine_info.code_ranges.alpha_prime
    assert module_info.code_ranges.lambda_max == engine_info.code_ranges.lambda_max
    assert module_info.default_codes == (engine_info.alpha_prime, engine_info.lambda_max)


def test_codes_are_checked_with_the_engines_rule(tmp_path):
    """Every case the module refuses, the engine refuses too, and the other way round."""
    from svreg_core.errors import InputError
    from svreg_core.models import read_model_info
    from svreg_core.registration import model_codes

    hyper_folder, plain_folder = tiny_hyper_checkpoint(tmp_path), tiny_hyper_checkpoint(tmp_path, None, "plain")
    cases = [((0.05, 10.0), 0), ((0.5, 0.5), 0), ((0.6, 1.0), 0), ((0.175, 0.4), 0), ((0.175, 1.0), 0),
             ((0.3, 5.0), 0), ((0.3, 5.0), 5), ((None, 20.0), 0), ((0.04999, None), 0), ((-1.0, 1.0), 5)]
    for folder in (hyper_folder, plain_folder):
        engine_info, module_info = read_model_info(folder), models.read_model(folder)
        for (alpha_prime, lambda_max), refine in cases:
            filled = (engine_info.alpha_prime if alpha_prime is None else alpha_prime,
                      engine_info.lambda_max if lambda_max is None else lambda_max)
            try:
                model_codes(engine_info, filled, refine)
                engine_ok = True
            except InputError:
                engine_ok = False
            try:
                module_info.check_codes(alpha_prime, lambda_max, refine)
                module_ok = True
            except models.ModelError as exc:
                module_ok = False
                assert "\n" not in str(exc)
            assert module_ok == engine_ok, (folder.name, alpha_prime, lambda_max, refine)
    info = models.read_model(hyper_folder)
    with pytest.raises(models.ModelError, match=r"^lambda_max 20 is outside the range model hyper-test was trained "
                                                r"on \[0.5, 10\]; choose a value inside it.$"):
        info.check_codes(None, 20.0, 0)
    with pytest.raises(models.ModelError, match="alpha_prime must be a number of 0 or more, not 'a'"):
        info.check_codes("a", None, 0)
    with pytest.raises(models.ModelError, match="alpha_prime must be a number of 0 or more, not nan"):
        info.check_codes(math.nan, None, 0)


# ---- the job's command line and the checks before it starts


def test_the_job_passes_the_codes_to_the_engine(scene, pair, tmp_path):
    fixed, moving = pair
    ckpt = hyper_model(tmp_path / "ckpt")
    from svreg_core.cli import build_parser

    parser, _ = build_parser()
    for codes, refine, expected in (((0.2, 5.0), 0, (0.2, 5.0)), ((None, 0.5), 20, (None, 0.5)),
                                    ((None, None), 0, (None, None))):
        settings = logic.RegistrationSettings(method="learned", model=str(ckpt), refine_steps=refine, codes=codes)
        job = logic.RegistrationJob(fixed, moving, settings=settings)
        job.validate()
        workdir = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
        workdir.mkdir()
        args = job.export_inputs(workdir).arguments()
        assert ("--alpha-prime" in args, "--lambda-max" in args) == tuple(c is not None for c in expected)
        ns = parser.parse_args(args[2:])  # what the engine's parser makes of the command line
        assert (ns.model, ns.refine, ns.alpha_prime, ns.lambda_max) == (str(ckpt), refine, *expected)


def test_codes_the_model_cannot_use_stop_before_anything_starts(scene, pair, tmp_path):
    fixed, moving = pair
    hyper, plain = hyper_model(tmp_path / "hyper"), write_model(tmp_path / "plain", alpha_prime=0.1, lambda_max=2.0)
    temp_root = tmp_path / "temp"
    nodes_before = scene.GetNumberOfNodes()
    for model, method, codes, refine, expected in (
            (hyper, "learned", (0.9, None), 0, r"alpha_prime 0.9 is outside the range model hyper-tiny was trained "
                                               r"on \[0.05, 0.5\]; choose a value inside it."),
            (hyper, "learned", (0.2, 0.1), 0, r"lambda_max 0.1 is outside the range .* \[0.5, 10\]"),
            (plain, "learned", (0.3, None), 0, "model tiny is not a hyper model"),
            (hyper, "pairwise", (0.2, None), 0, "for pairwise registration set them in the parameters"),
            (hyper, "learned", (0.2,), 0, r"codes must be a pair \(alpha_prime, lambda_max\)"),
            (hyper, "learned", ("a", None), 0, "alpha_prime must be a number of 0 or more, not 'a'")):
        settings = logic.RegistrationSettings(method=method, model=str(model), codes=codes, refine_steps=refine,
                                              temp_root=str(temp_root))
        job = logic.RegistrationJob(fixed, moving, settings=settings)
        with pytest.raises(logic.RegistrationError, match=expected) as info:
            job.start()
        assert "\n" not in str(info.value) and job.child is None and job.workdir is None
    # a plain model's other codes set its refinement's loss: accepted with refinement steps
    logic.RegistrationJob(fixed, moving, settings=logic.RegistrationSettings(
        method="learned", model=str(plain), codes=(0.3, None), refine_steps=5)).validate()
    assert not temp_root.exists() and scene.GetNumberOfNodes() == nodes_before
    assert moving.GetParentTransformNode() is None


def test_status_line_names_a_hyper_models_codes():
    report = {"metrics": {"folding_percent": 0.0}, "device": "cpu", "timing": {"total_s": 1.0}, "method": "learned",
              "model": {"name": "brain-hyper", "architecture": "unet-spr"}, "refine_steps": 0,
              "codes": {"alpha_prime": 0.2, "lambda_max": 5.0, "conditioned": True}}
    assert logic.method_text(report) == "learned model 'brain-hyper' (unet-spr) at α′ 0.2, λ_max 5"
    plain = dict(report, codes={"alpha_prime": 0.2, "lambda_max": 5.0, "conditioned": False}, refine_steps=3)
    assert logic.method_text(plain) == "learned model 'brain-hyper' (unet-spr) + 3 refinement steps"


# ---- sliders


def test_slider_positions_map_log_uniformly_onto_the_range():
    low, high = 0.5, 10.0
    assert preview.slider_code(0, low, high) == low and preview.slider_code(100, low, high) == high  # exact ends
    assert preview.slider_code(50, low, high) == pytest.approx(math.sqrt(low * high))  # the geometric middle
    codes = [preview.slider_code(p, low, high) for p in range(101)]
    ratios = np.array(codes[1:]) / np.array(codes[:-1])
    assert np.allclose(ratios, (high / low) ** 0.01)  # equal steps on a log scale
    assert all(preview.slider_position(c, low, high) == p for p, c in enumerate(codes))  # round trip
    assert all(low <= c <= high for c in codes)
    # the default lands exactly where the slider shows it (3.35 lies between two positions)
    position = preview.slider_position(3.35, low, high)
    assert preview.slider_code(position, low, high, default=3.35) == 3.35
    assert preview.slider_code(position, low, high) != 3.35
    assert preview.slider_position(20.0, low, high) == 100 and preview.slider_position(0.1, low, high) == 0
    assert preview.slider_position(1.0, 1.0, 1.0) == 0 and preview.slider_code(70, 1.0, 1.0) == 1.0  # a fixed code


# ---- the scheduler, with real child processes


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeper():
    """Starts real child processes that sleep; any still running at the end of the test is ended."""
    children = []

    def start(seconds: float) -> runner.ChildProcess:
        children.append(runner.ChildProcess(["-c", f"import time; time.sleep({seconds})"], python=sys.executable,
                                            env=runner.child_environment()).start())
        return children[-1]

    yield start
    for child in children:
        child.cancel(grace=0.5)


def poll_until_idle(scheduler: preview.PreviewScheduler | logic.PreviewEngine, timeout: float = 30.0) -> None:
    """Call ``poll()`` until it reports nothing left to do (a scheduler idle, an engine's stopped children reaped)."""
    t0 = time.monotonic()
    while scheduler.poll():
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process checks")
def test_a_burst_of_requests_starts_one_run_for_the_last(sleeper):
    clock, started, finished = FakeClock(), [], []

    def start(what):
        started.append(what)
        return sleeper(0)

    scheduler = preview.PreviewScheduler(start, finished.append, delay_s=0.3, clock=clock)
    assert not scheduler.poll() and not scheduler.busy
    for i in range(5):  # five key presses, 0.1 s apart
        scheduler.request(i)
        clock.now += 0.1
        assert scheduler.poll() and started == []
    clock.now += 0.25
    poll_until_idle(scheduler)
    assert started == [4] and len(finished) == 1 and finished[0].result.status == runner.SUCCEEDED


@pytest.mark.skipif(os.name == "nt", reason="POSIX process checks")
def test_a_new_request_stops_the_running_run_first_and_one_run_per_release(sleeper):
    clock, started, finished = FakeClock(), [], []

    def start(what):
        # never two alive: the previous run has ended (reaped) before the next starts
        assert all(not p.running and not process_alive(p.process.pid) for p in finished)
        started.append(what)
        return sleeper(30)

    scheduler = preview.PreviewScheduler(start, finished.append, delay_s=0.3, clock=clock)
    for release in ("a", "b", "c", "d"):  # four releases, each while the previous run is still running
        scheduler.request(release)  # stops the running one at once, without waiting for it
        assert scheduler.job is None or scheduler.job._stop_deadline is not None
        clock.now += 0.3
        t0 = time.monotonic()
        while not started or started[-1] != release:
            assert scheduler.poll() and time.monotonic() - t0 < 10
            time.sleep(0.02)
        assert scheduler.job.running
    assert [job.result.status for job in finished] == [runner.CANCELLED] * 3
    assert started == ["a", "b", "c", "d"]  # one run per release
    scheduler.cancel()
    poll_until_idle(scheduler)
    assert [job.result.status for job in finished] == [runner.CANCELLED] * 4 and not scheduler.busy


# ---- end to end through the preview engine (one long-lived child)


def preview_job(pair, model: str, codes, temp, reuse=None, on_log=None, **overrides) -> logic.RegistrationJob:
    """A network-only job of the tiny hyper model on the 32³ pair (affine stage off unless overridden)."""
    fixed, moving = pair
    settings = logic.RegistrationSettings(overrides={"affine": False, **overrides}, method="learned", model=model,
                                          refine_steps=0, codes=codes, device="cpu", create_warped=False,
                                          temp_root=str(temp))
    return logic.RegistrationJob(fixed, moving, settings=settings, reuse=reuse, on_log=on_log)


@pytest.fixture
def engine():
    """A preview engine, stopped (its process tree killed) at the end of the test."""
    engine = logic.PreviewEngine()
    yield engine
    engine.stop()


@pytest.fixture
def model(tmp_path) -> str:
    return str(tiny_hyper_checkpoint(tmp_path))


@pytest.mark.skipif(os.name == "nt", reason="POSIX process checks")
def test_slider_moves_reuse_one_engine_and_update_the_same_nodes(scene, pair, tmp_path, engine, model):
    """A full run (its own child) at the lowest codes, then slider moves on one engine process: each updates
    the first run's nodes in place with other outputs; while one computes, newer requests replace the
    waiting one and the latest wins."""
    fixed, moving = pair
    temp = tmp_path / "temp"
    first = preview_job(pair, model, (0.05, 0.5), temp).run(timeout=120)
    assert first.report["codes"] == {"alpha_prime": 0.05, "lambda_max": 0.5, "conditioned": True}
    lam_first = array_ijk(first.lambda_map).copy()
    disp_first = grid_transform_arrays(first.transform)[0].copy()
    nodes_before = scene.GetNumberOfNodes()

    log: list[str] = []
    moves, walls = [], []
    for codes in ((0.5, 10.0), (0.2, 2.0)):
        t0 = time.monotonic()
        moves.append(engine.start_job(preview_job(pair, model, codes, temp, first.reuse(), log.append)).run(120))
        walls.append(time.monotonic() - t0)
        if len(moves) == 1:
            pid = engine.pid
            assert pid is not None and process_alive(pid)
        assert engine.pid == pid  # the same engine process for every slider move
    assert sum("Started the preview engine" in line for line in log) == 1
    assert sum(f"engine process {pid}" in line for line in log) == 2
    stiff, middle = moves
    assert stiff.report["codes"] == {"alpha_prime": 0.5, "lambda_max": 10.0, "conditioned": True}
    assert stiff.report["refine_steps"] == 0 and "preview" in stiff.report
    assert "at α′ 0.5, λ_max 10" in stiff.status_text
    for out in moves:
        assert (out.transform, out.lambda_map, out.jacobian) == (first.transform, first.lambda_map, first.jacobian)
    assert scene.GetNumberOfNodes() == nodes_before and moving.GetParentTransformNode() is first.transform
    lam = array_ijk(middle.lambda_map)
    assert lam.shape == SHAPE and not np.allclose(lam, lam_first)  # the λ map moved with the codes
    disp = grid_transform_arrays(middle.transform)[0]
    assert np.abs(disp - disp_first).max() > 0.05 * np.abs(disp_first).max() > 0  # and the warp
    assert stiff.report["metrics"] != middle.report["metrics"]
    # each request's folder is gone once loaded; the engine keeps only its exported inputs
    assert [p.name for p in temp.iterdir()] == [engine.workdir.name]
    assert sorted(p.name for p in engine.workdir.iterdir()) == ["inputs"]

    clock, finished = FakeClock(), []
    scheduler = preview.PreviewScheduler(
        lambda codes: engine.start_job(preview_job(pair, model, codes, temp, first.reuse())), finished.append,
        clock=clock)
    scheduler.request((0.1, 1.0))
    clock.now += 1.0
    assert scheduler.poll() and scheduler.job.running
    scheduler.request((0.3, 3.0))  # while the engine computes: its result will be dropped...
    scheduler.request((0.4, 4.0))  # ...and the waiting request replaced
    clock.now += 1.0
    poll_until_idle(scheduler, timeout=120)
    assert [j.cancelled for j in finished] == [True, False] and engine.pid == pid
    assert finished[1].outputs.report["codes"]["alpha_prime"] == 0.4
    assert finished[1].outputs.lambda_map is first.lambda_map
    assert [p.name for p in temp.iterdir()] == [engine.workdir.name]
    print(f"preview on the engine, tiny hyper U-Net, 32^3 synthetic pair, CPU: first (engine start) "
          f"{walls[0]:.1f} s, next {walls[1]:.2f} s wall")


@pytest.mark.skipif(os.name == "nt", reason="POSIX process checks")
def test_a_change_of_inputs_or_settings_restarts_the_engine(scene, pair, tmp_path, engine, model):
    fixed, _moving = pair
    temp = tmp_path / "temp"
    engine.start_job(preview_job(pair, model, (0.2, 2.0), temp)).run(timeout=120)
    old_pid, old_folder = engine.pid, engine.workdir
    assert engine.serves(_validated(preview_job(pair, model, (0.3, 5.0), temp)))  # other codes: same engine

    voxels = vtk_to_numpy(fixed.GetImageData().GetPointData().GetScalars())
    voxels *= 1.5  # the fixed volume is edited
    fixed.GetImageData().Modified()
    assert not engine.serves(_validated(preview_job(pair, model, (0.2, 2.0), temp)))
    engine.start_job(preview_job(pair, model, (0.2, 2.0), temp)).run(timeout=120)
    assert engine.pid != old_pid
    poll_until_idle(engine)
    assert not process_group_alive(old_pid) and not old_folder.exists()

    pid = engine.pid
    affine_on = preview_job(pair, model, (0.2, 2.0), temp, affine=True)  # a setting the engine depends on
    assert not engine.serves(_validated(affine_on))
    engine.start_job(affine_on).run(timeout=120)
    assert engine.pid != pid
    poll_until_idle(engine)
    assert not process_group_alive(pid) and [p.name for p in temp.iterdir()] == [engine.workdir.name]


def _validated(job: logic.RegistrationJob) -> logic.RegistrationJob:
    job.validate()
    return job


def vtk_to_numpy(array):
    import vtk.util.numpy_support as ns

    return ns.vtk_to_numpy(array)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process checks")
def test_cancel_and_stop_kill_the_engine_process_tree(scene, pair, tmp_path, engine, model):
    temp = tmp_path / "temp"
    nodes_before = scene.GetNumberOfNodes()
    job = engine.start_job(preview_job(pair, model, (0.2, 2.0), temp))
    pid = engine.pid
    assert job.running and process_alive(pid)
    job.cancel()  # while the engine starts: what the module does when the scene closes
    assert job.cancelled and job.outputs is None and not process_group_alive(pid)
    assert scene.GetNumberOfNodes() == nodes_before

    out = engine.start_job(preview_job(pair, model, (0.2, 2.0), temp)).run(timeout=120)  # a new engine
    assert engine.pid != pid and out.report["codes"]["lambda_max"] == 2.0
    pid = engine.pid
    os.killpg(pid, signal.SIGKILL)  # an engine that dies between two slider moves is replaced
    t0 = time.monotonic()
    while process_alive(pid) and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    time.sleep(0.2)
    out = engine.start_job(preview_job(pair, model, (0.3, 3.0), temp, out.reuse())).run(timeout=120)
    assert engine.pid != pid and out.report["codes"]["lambda_max"] == 3.0
    pid = engine.pid
    job = engine.start_job(preview_job(pair, model, (0.5, 10.0), temp, out.reuse()))
    engine.stop()  # module cleanup: blocking, the tree killed, the folders removed
    assert not process_group_alive(pid) and engine.pid is None and list(temp.iterdir()) == []
    while job.poll():
        time.sleep(0.02)
    assert job.cancelled and job.error == "cancelled by the user."


@pytest.mark.skipif(os.name == "nt", reason="POSIX process checks")
def test_a_bad_code_gives_the_plain_message_and_the_engine_serves_on(scene, pair, tmp_path, engine, model):
    temp = tmp_path / "temp"
    engine.start_job(preview_job(pair, model, (0.2, 2.0), temp)).run(timeout=120)
    pid = engine.pid
    # the module checks the codes before sending anything
    with pytest.raises(logic.RegistrationError, match=r"^alpha_prime 0.9 is outside the range model hyper-test "
                                                      r"was trained on \[0.05, 0.5\]; choose a value inside it.$"):
        engine.start_job(preview_job(pair, model, (0.9, None), temp))
    # the engine refuses them too, with one plain line, and serves on
    call = engine.process.submit({"alpha_prime": 0.9, "output": str(tmp_path / "bad")})
    while call.poll():
        time.sleep(0.02)
    assert call.result.status == runner.FAILED
    assert call.result.message == ("alpha_prime 0.9 is outside the range this model was trained on [0.05, 0.5]; "
                                   "choose a value inside it.")
    assert not (tmp_path / "bad").exists()
    out = engine.start_job(preview_job(pair, model, (0.5, None), temp)).run(timeout=120)
    assert engine.pid == pid and out.report["codes"] == {"alpha_prime": 0.5, "lambda_max": 1.0, "conditioned": True}
