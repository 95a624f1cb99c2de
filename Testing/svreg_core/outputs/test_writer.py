"""``write_outputs``: the full file set, its contents, the report, and atomic folder replacement."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svreg_core.errors import InputError, OutputError
from svreg_core.image import Image, load_image
from svreg_core.metrics import jacobian_determinant
from svreg_core.outputs import OUTPUT_FILES, write_outputs
from svreg_core.outputs.figure import to_ras_array
from svreg_core.outputs.writer import (
    MARKER_FILE,
    check_output_space,
    distance_metrics,
    expected_output_bytes,
    finite_report,
    is_svreg_output,
    prepare_output_dir,
    remove_stale_work_folders,
    write_report_json,
)


def _labels(image: Image) -> Image:
    d = image.data
    labels = np.zeros(d.shape, np.int32)
    labels[d > np.percentile(d, 40)] = 1
    labels[d > np.percentile(d, 75)] = 2
    return Image(labels, image.affine)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


@pytest.fixture(scope="module")
def written(synthetic_result, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("writer") / "out"
    r = synthetic_result
    report = write_outputs(r, out, fixed_labels=_labels(r.fixed), moving_labels=_labels(r.moving),
                           extra={"note": "synthetic"})
    return out, report


def test_every_output_file_and_nothing_else(written) -> None:
    out, _ = written
    assert sorted(p.name for p in out.iterdir()) == sorted((*OUTPUT_FILES, "warped_labels.nii.gz"))
    assert _siblings(out) == ["out"]  # no hidden .partial / .old folder left next to it
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.png").stat().st_size > 10_000
    assert (out / MARKER_FILE).read_text().startswith("Written by svreg") and is_svreg_output(out)


def test_images_are_on_the_right_grids(written, synthetic_result) -> None:
    out, _ = written
    r = synthetic_result
    for name in ("warped", "regularization", "jacobian", "warped_labels"):
        nii = nib.load(str(out / f"{name}.nii.gz"))
        assert nii.shape == r.fixed.shape, name
        np.testing.assert_allclose(nii.affine, r.fixed.affine, atol=1e-4)
    np.testing.assert_allclose(nib.load(str(out / "warped.nii.gz")).get_fdata(), r.warped.data, atol=1e-6)
    lam = nib.load(str(out / "regularization.nii.gz")).get_fdata()
    assert lam.min() > 0 and lam.max() <= 1.0 and lam.min() < 0.5  # the synthetic λ spans (0.2, 1)
    jac = nib.load(str(out / "jacobian.nii.gz")).get_fdata()
    np.testing.assert_allclose(jac, jacobian_determinant(r.displacement, r.fixed.affine), atol=1e-5)
    assert np.asanyarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj).dtype == np.int32
    inv = nib.load(str(out / "inverse_displacement.nii.gz"))
    assert inv.shape == (*r.moving.shape, 1, 3) and inv.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(inv.affine, r.moving.affine, atol=1e-4)


def test_inverse_displacement_inverts_the_mapping(written, synthetic_result, geo) -> None:
    out, _ = written
    r = synthetic_result
    inv_lps = np.asanyarray(nib.load(str(out / "inverse_displacement.nii.gz")).dataobj)[:, :, :, 0, :]
    y = geo.world_points(r.moving.shape, r.moving.affine)
    z = y + geo.lps(inv_lps)  # T⁻¹(y), RAS
    # keep moving points whose preimage lies well inside the fixed grid (and the working grid)
    vox = geo.to_voxel(z, r.fixed.affine)
    inside = np.all((vox >= 2) & (vox <= np.asarray(r.fixed.shape) - 3), axis=-1)
    assert inside.sum() > 500
    back = r.transform_points(z[inside])
    err = np.linalg.norm(back - y[inside], axis=-1)
    assert np.linalg.norm(inv_lps, axis=-1)[inside].mean() > 4.0
    # scaling-and-squaring interpolation error only (measured 0.17 mm max, 0.05 mm mean); using +v, or
    # forgetting A, would give errors of several mm
    assert err.max() < 0.3 and err.mean() < 0.1, (err.max(), err.mean())


def test_report_contents(written, synthetic_result) -> None:
    """The report's numbers are those of the files beside it and of the result: the regularity metrics of the
    written Jacobian over the fixed image's foreground (its voxels above its minimum), the Dice of the fixed labels
    against the written warped labels, each input's grid, and the affine stage's matrix."""
    out, report = written
    r = synthetic_result
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    m = on_disk["metrics"]
    for key in ("folding_percent", "ndv_percent", "sdlogj", "jacobian_min", "dice_mean", "dice", "hd95_mean", "hd95"):
        assert key in m, key
    foreground = r.fixed.data > r.fixed.data.min()
    jac = np.asarray(nib.load(str(out / "jacobian.nii.gz")).dataobj, dtype=np.float64)[foreground]
    assert jac.size > 1000
    assert m["folding_percent"] == pytest.approx(100.0 * np.count_nonzero(jac <= 0) / jac.size, abs=1e-9)
    assert m["sdlogj"] == pytest.approx(np.std(np.log(np.clip(jac, 1e-9, 1e9))), rel=1e-5) and m["sdlogj"] > 0.01
    assert (m["jacobian_min"], m["jacobian_max"]) == pytest.approx((jac.min(), jac.max()), rel=1e-6)
    fixed_labels = _labels(r.fixed).data
    warped_labels = np.asarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj)
    by_hand = {str(k): 2.0 * np.count_nonzero((fixed_labels == k) & (warped_labels == k))
               / (np.count_nonzero(fixed_labels == k) + np.count_nonzero(warped_labels == k)) for k in (1, 2)}
    assert m["dice"] == pytest.approx(by_hand, abs=1e-12) and 0.3 < min(by_hand.values()) < 1.0
    assert m["dice_mean"] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-12)
    assert on_disk["timing"]["total_s"] >= on_disk["timing"]["outputs_s"] > 0
    assert on_disk["parameters"]["level_spacings"] == [4.0, 2.0]
    assert {"svreg_core", "torch", "numpy", "nibabel", "h5py", "python"} <= set(on_disk["versions"])
    assert on_disk["device"] == "cpu" and on_disk["note"] == "synthetic"
    assert on_disk["label_interpolation"] == "linear"
    assert m["jacobian_min"] <= 1.0 <= m["jacobian_max"]
    assert set(m["dice_before"]) == {"1", "2"} and 0 <= m["dice_mean_before"] <= 1
    # the fixed grid: voxel axes (-3, 3.5, 3) mm turned 10°, pointing left, anterior, superior; the moving grid's
    # (2.5, -4, 3.2) mm turned 20°: right, posterior, superior
    assert on_disk["inputs"]["fixed"] == {"shape": [18, 16, 14], "spacing_mm": [3.0, 3.5, 3.0], "orientation": "LAS"}
    assert on_disk["inputs"]["moving"]["shape"] == list(r.moving.shape)
    assert on_disk["inputs"]["moving"]["spacing_mm"] == pytest.approx([2.5, 4.0, 3.2])
    assert on_disk["inputs"]["moving"]["orientation"] == "RPS"
    assert set(on_disk["inputs"]) == {"fixed", "moving", "fixed_labels", "moving_labels"}
    assert on_disk["outputs"] == sorted(["warped", "displacement", "transform", "inverse", "regularization",
                                         "jacobian", "labels", "figure"])
    np.testing.assert_allclose(on_disk["affine_ras"], r.affine, atol=1e-12)
    assert not np.allclose(r.affine, np.eye(4))  # a turn of 12° and a shift of (4, -3, 2.5) mm


def test_chosen_outputs_only(synthetic_result, tmp_path: Path) -> None:
    out = tmp_path / "few"
    report = write_outputs(synthetic_result, out, outputs=["displacement", "figure"],
                           sources={"fixed": "f.nii.gz"})
    assert sorted(p.name for p in out.iterdir()) == sorted(["displacement.nii.gz", "report.png", "report.json",
                                                             MARKER_FILE])
    assert report["outputs"] == ["displacement", "figure"] and report["inputs"]["fixed"]["path"] == "f.nii.gz"
    nii = nib.load(str(out / "displacement.nii.gz"))
    assert nii.header.get_xyzt_units()[0] == "mm" and nii.get_data_dtype() == np.float32
    with pytest.raises(InputError, match="unknown output 'png'"):
        write_outputs(synthetic_result, tmp_path / "bad", outputs=["png"])
    assert not (tmp_path / "bad").exists()
    # the warped labels asked for without moving labels: the folder was written without them, without a word
    with pytest.raises(InputError, match="the labels output is the warped moving labels; it needs moving_labels"):
        write_outputs(synthetic_result, tmp_path / "bad", outputs=["labels", "displacement"])
    assert not (tmp_path / "bad").exists()


def _copy_of(written, folder: Path) -> Path:
    """A copy of the module's svreg output folder (an earlier svreg run's result)."""
    return Path(shutil.copytree(written[0], folder))


def test_refuses_to_overwrite_then_replaces(synthetic_result, written, tmp_path: Path) -> None:
    out = _copy_of(written, tmp_path / "out")
    before = (out / "report.json").read_text()
    with pytest.raises(OutputError, match="--overwrite"):
        write_outputs(synthetic_result, out)
    assert (out / "report.json").read_text() == before
    write_outputs(synthetic_result, out, overwrite=True)
    assert (out / "report.json").read_text() != before  # new timings
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # the old warped_labels is gone
    assert _siblings(out) == ["out"]


def test_overwrite_never_replaces_a_foreign_folder(synthetic_result, written, tmp_path: Path) -> None:
    """A folder svreg did not write, or an svreg folder the user added files to, is never replaced."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    own = _copy_of(written, tmp_path / "own")
    (own / "notes.txt").write_text("mine too")
    (own / "extra").mkdir()
    for folder, words in ((foreign, "not written by svreg"), (own, "notes.txt")):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=words) as info:
                write_outputs(synthetic_result, folder, overwrite=overwrite)
            assert "\n" not in str(info.value)
    assert (foreign / "keep.txt").read_text() == "precious" and (own / "notes.txt").read_text() == "mine too"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["mine", "own"]


def test_report_json_of_earlier_versions_counts_as_svreg_output(synthetic_result, written, tmp_path: Path) -> None:
    out = _copy_of(written, tmp_path / "out")
    (out / MARKER_FILE).unlink()  # written before the marker existed: report.json names svreg_core
    assert is_svreg_output(out)
    write_outputs(synthetic_result, out, overwrite=True)
    assert (out / MARKER_FILE).is_file()
    (out / MARKER_FILE).unlink()
    (out / "report.json").write_text(json.dumps({"versions": {"other_tool": "1.0"}}))
    assert not is_svreg_output(out)
    with pytest.raises(OutputError, match="not written by svreg"):
        write_outputs(synthetic_result, out, overwrite=True)


def test_symlink_output_replaces_its_target(synthetic_result, written, tmp_path: Path) -> None:
    """A link given as output is followed: the folder it points to is replaced, the link stays, and
    nothing hidden is left next to either."""
    real = _copy_of(written, tmp_path / "real")
    links = tmp_path / "links"
    links.mkdir()
    link = links / "result"
    link.symlink_to(real, target_is_directory=True)
    old_inode = real.stat().st_ino
    write_outputs(synthetic_result, link, overwrite=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.stat().st_ino != old_inode and (real / "report.json").is_file()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["links", "real"]
    assert [x.name for x in links.iterdir()] == ["result"]
    # a link to a folder svreg did not write is refused like that folder
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    link.unlink()
    link.symlink_to(mine, target_is_directory=True)
    with pytest.raises(OutputError, match="not written by svreg"):
        write_outputs(synthetic_result, link, overwrite=True)
    assert (mine / "keep.txt").read_text() == "precious" and [x.name for x in links.iterdir()] == ["result"]


def test_failure_leaves_no_folder_and_keeps_the_old_one(synthetic_result, written, tmp_path: Path,
                                                        monkeypatch) -> None:
    import svreg_core.outputs.writer as writer

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "write_report_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(synthetic_result, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = _copy_of(written, tmp_path / "old")
    before = (old / "report.json").read_text()
    with pytest.raises(RuntimeError):
        write_outputs(synthetic_result, old, overwrite=True)
    assert _siblings(old) == ["old"] and (old / "report.json").read_text() == before


def test_an_interrupt_while_a_writer_thread_starts_is_waited_for(synthetic_result, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """A real SIGTERM (handled as Ctrl-C, as the command line does) while the pool's ``submit`` waits in
    ``Thread.start`` for a new worker thread that is slow to begin: the thread is not running yet (``join`` would
    raise) and the pool never counts it, so its shutdown does not wait for it; the writer does, and nothing works
    in the output folder once it is removed. (SIGTERM, not SIGINT: pytest-xdist's workers ignore SIGINT.)"""
    import signal
    import threading

    from svreg_core.interrupts import sigterm_as_interrupt

    start = threading.Thread.start
    started: list[threading.Thread] = []

    def start_slowly_and_interrupt(thread: threading.Thread) -> None:
        if not thread.name.startswith("svreg-outputs") or started:
            return start(thread)
        started.append(thread)
        bootstrap = thread._bootstrap  # type: ignore[attr-defined]  # what the new thread runs first
        thread._bootstrap = lambda: (time.sleep(0.5), bootstrap())  # type: ignore[attr-defined]
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
        start(thread)  # the SIGTERM arrives while this waits for the new thread

    monkeypatch.setattr(threading.Thread, "start", start_slowly_and_interrupt)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        write_outputs(synthetic_result, tmp_path / "new")
    assert len(started) == 1 and not started[0].is_alive()
    assert list(tmp_path.iterdir()) == []


def test_a_sigterm_while_probing_the_output_folder_leaves_no_probe(tmp_path: Path, monkeypatch) -> None:
    """The writability probe (a hidden folder created and removed at once) is not left behind by a SIGTERM that
    arrives right after it was created: the interrupt comes once it is removed."""
    import signal

    from svreg_core.interrupts import sigterm_as_interrupt

    mkdir = Path.mkdir

    def mkdir_then_sigterm(self: Path, *args, **kwargs) -> None:
        mkdir(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Path, "mkdir", mkdir_then_sigterm)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        prepare_output_dir(tmp_path / "out", overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_a_sigterm_while_the_new_folder_replaces_the_old_comes_after_the_swap(synthetic_result, written,
                                                                              tmp_path: Path, monkeypatch) -> None:
    """``--overwrite``: a SIGTERM right after the new folder took the output's name (the old one still to be
    deleted) interrupts only once the swap is done: the new output in place, no hidden folder left."""
    import signal

    from svreg_core.interrupts import sigterm_as_interrupt

    old = _copy_of(written, tmp_path / "old")
    before = (old / "report.json").read_text()
    rename = Path.rename

    def rename_then_sigterm(self: Path, target):
        moved = rename(self, target)
        if ".partial-" in self.name:  # the finished folder takes the output's name
            os.kill(os.getpid(), signal.SIGTERM)
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_sigterm)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        write_outputs(synthetic_result, old, overwrite=True)
    assert _siblings(old) == ["old"] and (old / "report.json").read_text() != before


@pytest.mark.parametrize("umask, folder_mode", [(0o022, 0o755), (0o077, 0o700)])
def test_the_output_folder_has_the_permissions_the_umask_gives(synthetic_result, tmp_path: Path, umask: int,
                                                               folder_mode: int) -> None:
    """A user who keeps their files private (umask 077: patient images) gets a private output folder and files;
    the usual 022 lets the group read them."""
    import stat

    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        write_outputs(synthetic_result, out, outputs=["warped"])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == folder_mode
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o666 & ~umask}


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="liveness of a process id is checked on POSIX only")
def test_stale_work_folders_of_dead_runs_are_removed(synthetic_result, tmp_path: Path) -> None:
    from svreg_core.outputs.writer import _host

    out = tmp_path / "out"
    dead, live = _dead_pid(), os.getpid()
    names = {f".out.partial-{_host()}-{dead}-abc123": False, f".out.old-{_host()}-{dead}-0f1e": True,
             f".out.partial-{_host()}-{live}-xyz": True,  # a running process's folder is kept
             f".out.partial-otherhost-{dead}-abc": True,  # another machine's: its processes are unknown here
             f".other.partial-{_host()}-{dead}-abc": True,  # another output's
             ".out.partial-k2j4l5m6": True}  # no process id: not recognised, kept
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "warped.nii.gz").write_text("partial")
    kept = [n for n in names if names[n]]
    # while ``out`` is missing, a dead run's ``.old`` folder is the only copy of its previous result
    assert remove_stale_work_folders(out) == [tmp_path / f".out.partial-{_host()}-{dead}-abc123"]
    write_outputs(synthetic_result, out)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["out", *kept])
    write_outputs(synthetic_result, out, overwrite=True)  # ``out`` exists now: the ``.old`` folder goes
    kept.remove(f".out.old-{_host()}-{dead}-0f1e")
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["out", *kept])


def test_killed_writer_leaves_a_partial_folder_the_next_run_removes(synthetic_result, tmp_path: Path) -> None:
    """A real SIGKILL while a partial folder exists; the next write to the same output removes it."""
    out = tmp_path / "out"
    code = ("import sys, tempfile, time\n"
            "from pathlib import Path\n"
            "from svreg_core.outputs.writer import _work_folder_name\n"
            "out = Path(sys.argv[1])\n"
            "tmp = tempfile.mkdtemp(prefix=_work_folder_name(out, 'partial'), dir=out.parent)\n"
            "Path(tmp, 'warped.nii.gz').write_text('half written')\n"
            "print(tmp, flush=True)\n"
            "time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        partial = Path(child.stdout.readline().strip())
        assert partial.is_dir() and partial.parent == tmp_path
        remove_stale_work_folders(out)
        assert partial.is_dir()  # its process still runs
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    write_outputs(synthetic_result, out)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]


def test_non_finite_metrics_become_null_with_a_note(synthetic_result, tmp_path: Path) -> None:
    """Labels absent from both maps give no Dice: report.json stays strict JSON (null, not NaN)."""
    r = synthetic_result
    report = write_outputs(r, tmp_path / "out", fixed_labels=_labels(r.fixed), moving_labels=_labels(r.moving),
                           labels=[9])
    text = (tmp_path / "out" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert on_disk == report
    assert on_disk["metrics"]["dice_mean"] is None and on_disk["metrics"]["hd95_mean"] is None
    assert "metrics.dice_mean" in on_disk["notes"][-1] and "null" in on_disk["notes"][-1]


def test_finite_report_and_strict_writing(tmp_path: Path) -> None:
    raw = {"a": 1.5, "b": [1.0, float("inf"), {"c": float("-inf")}], "d": {"e": float("nan"), "f": "x"},
           "notes": ["earlier note"]}
    clean = finite_report(raw)
    assert clean["a"] == 1.5 and clean["b"] == [1.0, None, {"c": None}] and clean["d"] == {"e": None, "f": "x"}
    assert clean["notes"][0] == "earlier note" and "b[1], b[2].c, d.e" in clean["notes"][1]
    assert math.isnan(raw["d"]["e"])  # the input is left as it was
    assert finite_report({"a": 1.0}) == {"a": 1.0}  # no note when nothing was replaced
    written = write_report_json(tmp_path / "r.json", raw)
    assert json.loads((tmp_path / "r.json").read_text()) == written == clean


def test_labels_on_the_wrong_grid(synthetic_result, tmp_path: Path) -> None:
    r = synthetic_result
    with pytest.raises(InputError, match="moving labels"):
        write_outputs(r, tmp_path / "o", moving_labels=_labels(r.fixed))
    with pytest.raises(InputError, match="fixed labels"):
        write_outputs(r, tmp_path / "o", fixed_labels=_labels(r.moving))
    assert list(tmp_path.iterdir()) == []


def test_prepare_output_dir_errors(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        prepare_output_dir(tmp_path / "file.txt", overwrite=True)
    with pytest.raises(OutputError):
        prepare_output_dir(tmp_path / "file.txt" / "out", overwrite=False)
    with pytest.raises(OutputError):
        prepare_output_dir(tmp_path / "file.txt" / "deeper" / "out", overwrite=False)
    data = tmp_path / "data"
    data.mkdir()
    (data / "fixed.nii.gz").write_text("x")
    with pytest.raises(OutputError, match="contains the input"):
        prepare_output_dir(data, overwrite=True, inputs=[data / "fixed.nii.gz"])
    # an existing empty folder is fine without --overwrite
    (tmp_path / "empty").mkdir()
    assert prepare_output_dir(tmp_path / "empty", overwrite=False) == (tmp_path / "empty").absolute()
    # a missing parent is created only when asked
    assert prepare_output_dir(tmp_path / "a" / "b" / "out", overwrite=False, create_parent=False)
    assert not (tmp_path / "a").exists()
    prepare_output_dir(tmp_path / "a" / "b" / "out", overwrite=False)
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "out").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_prepare_output_dir_read_only_parent(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            prepare_output_dir(parent / "out", overwrite=False)
    finally:
        parent.chmod(0o755)
    assert list(parent.iterdir()) == []


def test_prepare_output_dir_tries_a_real_folder(tmp_path: Path, unwritable_folder: Path) -> None:
    """Permission bits say /proc is writable for root; creating a folder there fails all the same. A
    writable location is left exactly as it was (the test folder is removed again)."""
    for target in (unwritable_folder / "svreg-test-out", unwritable_folder / "svreg-a" / "b" / "out"):
        with pytest.raises(OutputError, match=rf"cannot write the output folder .*creating a folder in "
                                              rf"{re.escape(str(unwritable_folder))} fails"):
            prepare_output_dir(target, overwrite=False, create_parent=False)
    prepare_output_dir(tmp_path / "x" / "out", overwrite=False, create_parent=False)
    prepare_output_dir(tmp_path / "out", overwrite=False, create_parent=False)
    assert list(tmp_path.iterdir()) == []


def test_expected_output_bytes_bound_the_written_files(written, synthetic_result) -> None:
    """The estimate (uncompressed) is at least what was written, and not wildly more."""
    out, _ = written
    r = synthetic_result
    actual = sum(f.stat().st_size for f in out.iterdir())
    estimate = expected_output_bytes(r.fixed.shape, r.moving.shape, labels=True)
    assert actual <= estimate <= 2 * actual + 2_000_000
    fields = sum((out / n).stat().st_size for n in ("displacement.nii.gz", "inverse_displacement.nii.gz",
                                                    "transform.h5"))
    only_fields = expected_output_bytes(r.fixed.shape, r.moving.shape, outputs=["displacement", "inverse",
                                                                                "transform"])
    assert fields <= only_fields <= 1.5 * fields + 2_000_000  # fields are stored (headers: the 2 MB allowance)
    assert expected_output_bytes((10, 10, 10), (10, 10, 10), outputs=["warped"]) == 4000 + 2_000_000


def test_check_output_space_against_the_real_disk(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_output_space(tmp_path / "a" / "out", 1000)
    with pytest.raises(OutputError, match=r"not enough free space for the outputs in .*MB needed, .*MB free"):
        check_output_space(tmp_path / "a" / "out", free + 10**12)
    assert list(tmp_path.iterdir()) == []


def test_figure_shows_images_in_ras_order(geo) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    lps_like = np.diag([-1.0, -1.0, 1.0, 1.0])  # i runs to the left, j to the back
    np.testing.assert_array_equal(to_ras_array(Image(data, lps_like)), data[::-1, ::-1, :])
    permuted = np.eye(4)[[1, 0, 2, 3]]  # i runs anterior, j runs right
    np.testing.assert_array_equal(to_ras_array(Image(data, permuted)), data.transpose(1, 0, 2))


def test_dice_before_and_after_score_the_labels_of_both_inputs(synthetic_result, tmp_path: Path) -> None:
    """A label of both inputs that the warp loses (here: outside the part of the moving grid the fixed grid
    sees) scores 0 before and after, instead of leaving one of the means: both average the same labels."""
    r = synthetic_result
    fixed_labels, moving_labels = _labels(r.fixed), _labels(r.moving)
    fixed_labels.data[0, 0, 0] = 3
    moving_labels.data[:2, :2, :2] = 3  # a corner of the moving grid's margin
    report = write_outputs(r, tmp_path / "out", fixed_labels=fixed_labels, moving_labels=moving_labels,
                           outputs=["labels"], label_mode="nearest")
    assert 3 not in np.asanyarray(nib.load(str(tmp_path / "out" / "warped_labels.nii.gz")).dataobj)
    m = report["metrics"]
    assert set(m["dice"]) == set(m["dice_before"]) == {"1", "2", "3"}
    assert m["dice"]["3"] == m["dice_before"]["3"] == 0.0
    assert m["dice_mean"] == pytest.approx(np.mean(list(m["dice"].values())))


def test_hd95_of_a_sheared_grid_is_in_world_millimetres() -> None:
    """The report's HD95 on a non-orthogonal fixed grid: the world distance (one voxel step along j is 1.08 mm
    with 0.4 mm of it along x), not voxel indices scaled by the columns' lengths."""
    from svreg_core.metrics import hd95

    affine = np.eye(4)
    affine[:3, 1] = [0.4, 1.0, 0.0]
    fixed = np.zeros((12, 12, 8), np.int32)
    fixed[3:9, 3:9, 2:6] = 1
    warped = np.roll(fixed, (1, -2), axis=(0, 1))
    h = distance_metrics(Image(fixed, affine), Image(warped, affine), None)
    assert h["hd95"]["1"] == pytest.approx(hd95(fixed, warped, linear=affine[:3, :3])[1])
    assert h["hd95"]["1"] != pytest.approx(hd95(fixed, warped, spacing=np.linalg.norm(affine[:3, :3], axis=0))[1])


@pytest.mark.parametrize(("fixed_codes", "moving_codes"), [((4, 4), (1, 1)), ((2, 1), (4, 4)), ((1, 1), (1, 1))])
def test_outputs_carry_the_nifti_space_of_their_grid(synthetic_result, tmp_path: Path, fixed_codes,
                                                     moving_codes) -> None:
    """A fixed image in a template space (sform code 4 MNI, 2 aligned) read from its file gives every output on the
    fixed grid its codes, so FSLeyes and AFNI place them in that space; the inverse field, on the moving grid, the
    moving image's; a plain scanner-space (1) input still gives 1."""
    r = synthetic_result
    loaded = []
    for name, image, codes in (("fixed", r.fixed, fixed_codes), ("moving", r.moving, moving_codes)):
        nii = nib.Nifti1Image(image.data, image.affine)
        nii.set_sform(image.affine, code=codes[0])
        nii.set_qform(image.affine, code=codes[1])
        nib.save(nii, str(tmp_path / f"{name}.nii.gz"))
        loaded.append(load_image(tmp_path / f"{name}.nii.gz"))
    fixed, moving = loaded
    result = dataclasses.replace(r, fixed=fixed, moving=moving)
    moving_labels = Image.on(moving.grid, _labels(moving).data)
    write_outputs(result, tmp_path / "out", moving_labels=moving_labels)
    for name in ("warped", "warped_labels", "jacobian", "regularization", "displacement", "inverse_displacement"):
        header = nib.load(str(tmp_path / "out" / f"{name}.nii.gz")).header
        expected = moving_codes if name == "inverse_displacement" else fixed_codes
        assert (int(header["sform_code"]), int(header["qform_code"])) == expected, name


@pytest.mark.parametrize(("outputs", "with_labels", "named"), [
    (["transform"], True, ["metrics", "files", "report"]),
    (["warped", "jacobian", "figure"], False, ["warped image", "Jacobian", "metrics", "figure", "files", "report"]),
    (None, True, ["warped image", "Jacobian", "warped labels", "metrics", "figure", "files", "report"])])
def test_progress_names_only_the_chosen_parts_and_rises_to_99_percent(synthetic_result, tmp_path: Path, outputs,
                                                                       with_labels: bool, named: list[str]) -> None:
    """``--outputs transform`` never hears of a warped image, a Jacobian map or a figure being written, nor a run
    without moving labels of warped labels; each event's fraction rises from the registration's end to 0.99."""
    from svreg_core.progress import REGISTERED_FRACTION

    events = []
    r = synthetic_result
    write_outputs(r, tmp_path / "out", outputs=outputs, moving_labels=_labels(r.moving) if with_labels else None,
                  progress=events.append)
    messages = [e.message for e in events]
    assert messages[0] == f"writing outputs: {named[0]}"
    assert messages[1:] == [f"writing outputs: {part} done" + (f"; {following}" if following else "")
                            for part, following in zip(named, [*named[1:], None])]
    fractions = [e.fraction for e in events]
    assert fractions[0] == REGISTERED_FRACTION and fractions[-1] == pytest.approx(0.99)
    assert all(a < b for a, b in zip(fractions, fractions[1:])), fractions
    assert [(e.step, e.total) for e in events] == [(n, len(named)) for n in range(len(named) + 1)]


def test_figure_title_names_the_regularisation_used(synthetic_result) -> None:
    """report.png's title said "SPR registration" for every run, also a --no-spr one (λ ≡ 1) and a learned model's."""
    from svreg_core.models.checkpoint import ModelInfo
    from svreg_core.optim.parameters import RegistrationParameters
    from svreg_core.outputs.writer import figure_title

    assert figure_title(synthetic_result) == "SPR registration"
    uniform = dataclasses.replace(synthetic_result, parameters=RegistrationParameters(device="cpu", spr=False))
    assert figure_title(uniform) == "uniform-regularisation registration (λ ≡ 1)"
    info = ModelInfo(architecture="unet-spr", config={}, network_spacing_mm=2.0, size_multiple=16,
                     normalization="robust_normalize", similarity="lncc", lncc_window=5, prior="beta",
                     alpha_prime=0.01, lambda_max=2.0, spr=True, integration_steps=7, svreg_version="0",
                     name="brain-unet-spr")
    learned = dataclasses.replace(synthetic_result, model=info, refine_steps=20)
    assert figure_title(learned) == "learned SPR model brain-unet-spr, 20 refinement steps per level"


def test_report_states_the_units_of_its_numbers(written) -> None:
    """report.json gave hd95 and the timings as bare numbers; its units entry now names each one's unit."""
    out, _ = written
    units = json.loads((out / "report.json").read_text())["units"]
    assert units["metrics"]["hd95_mean"] == units["metrics"]["hd95"] == "mm"
    assert units["metrics"]["folding_percent"].startswith("%") and units["metrics"]["sdlogj"].startswith("1 ")
    assert set(units["metrics"]) == set(json.loads((out / "report.json").read_text())["metrics"])
    assert units["timing"] == "s" and "RAS mm" in units["affine_ras"]


def test_overwrite_never_replaces_the_folder_of_an_input_named_in_sources(synthetic_result, written,
                                                                           tmp_path: Path) -> None:
    """Registering an earlier output's warped image again into that folder with overwrite (the library call, which
    names its inputs in ``sources`` only) deleted the input with the folder; it is refused and the folder kept."""
    out = tmp_path / "chain"
    shutil.copytree(written[0], out)
    before = (out / "warped.nii.gz").read_bytes()
    with pytest.raises(OutputError, match="contains the input"):
        write_outputs(synthetic_result, out, overwrite=True, outputs=[], sources={"moving": out / "warped.nii.gz"})
    assert (out / "warped.nii.gz").read_bytes() == before


def test_report_records_the_masks_among_its_inputs(synthetic_result, tmp_path: Path) -> None:
    """report.json's inputs left out the masks the registration used (given in sources, as svreg register gives
    --fixed-mask / --moving-mask), so a run could not be told from one without them; their paths are recorded."""
    sources = {"fixed": "f.nii.gz", "moving": "m.nii.gz", "fixed_mask": "fm.nii.gz", "moving_mask": "mm.nii.gz"}
    report = write_outputs(synthetic_result, tmp_path / "out", outputs=[], sources=sources)
    inputs = json.loads((tmp_path / "out" / "report.json").read_text())["inputs"]
    assert inputs == report["inputs"]
    assert inputs["fixed_mask"] == {"path": "fm.nii.gz"} and inputs["moving_mask"] == {"path": "mm.nii.gz"}
    assert inputs["fixed"]["path"] == "f.nii.gz" and inputs["fixed"]["shape"] == [18, 16, 14]


def test_a_folder_made_at_the_output_meanwhile_is_not_replaced(synthetic_result, tmp_path: Path) -> None:
    """The output folder made (by the user, by another run) while the outputs were being written was renamed away and
    deleted with its files at the end, overwrite or not; it is now checked again and kept, the run refused."""
    out = tmp_path / "out"

    def make_it_meanwhile(event) -> None:
        if "files done" in (event.message or "") and not out.exists():
            out.mkdir()
            (out / "mine.txt").write_text("keep me")

    with pytest.raises(OutputError, match="is not empty and was not written by svreg"):
        write_outputs(synthetic_result, out, outputs=[], overwrite=True, progress=make_it_meanwhile)
    assert (out / "mine.txt").read_text() == "keep me"
    assert _siblings(out) == ["out"]  # and no hidden work folder left


def test_outputs_that_cannot_take_the_folders_name_are_kept_and_named(synthetic_result, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """An earlier output folder that cannot be renamed at the end (a file in it held open on Windows, a mount point)
    gave a traceback, and the finished outputs were deleted with the work folder; they are now kept in a visible
    sibling folder, named in one line, and the earlier folder is left as it was."""
    out = tmp_path / "out"
    write_outputs(synthetic_result, out, outputs=["displacement"])
    earlier = (out / "report.json").read_bytes()
    rename = Path.rename

    def locked(self: Path, target):  # the OS refusing to move the earlier folder (the rest of the file system works)
        if self == out:
            raise PermissionError(13, "Permission denied")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", locked)
    with pytest.raises(OutputError) as err:
        write_outputs(synthetic_result, out, outputs=["displacement", "jacobian"], overwrite=True)
    kept = [f for f in tmp_path.iterdir() if f.name.startswith("out.svreg-")]
    assert len(kept) == 1 and str(err.value) == (f"the outputs are complete but could not be moved to {out} "
                                                 f"(Permission denied); they are in {kept[0]}.")
    assert {"displacement.nii.gz", "jacobian.nii.gz", "report.json"} <= {f.name for f in kept[0].iterdir()}
    assert (out / "report.json").read_bytes() == earlier and sorted(f.name for f in tmp_path.iterdir()) == [
        "out", kept[0].name]
