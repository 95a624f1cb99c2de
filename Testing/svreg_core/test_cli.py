"""The ``svreg register`` command: a full run on a tiny real pair (subprocess), and every kind of bad
input giving one plain ``svreg: error:`` line, exit status 2 and no output folder."""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from svreg_core.cli import BATCH_SUMMARY_COLUMNS, main
from svreg_core.image import Grid, load_image
from svreg_core.outputs import OUTPUT_FILES
from svreg_core.progress import REGISTERED_FRACTION

REPORT_METRICS = ("dice_mean", "dice", "hd95_mean", "folding_percent", "ndv_percent", "sdlogj")


def _run(geo, *argv, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(geo.svreg_command(*argv), cwd=str(cwd), env=geo.child_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def full_run(geo, tiny_pair, fast_preset, tmp_path_factory) -> SimpleNamespace:
    p = tiny_pair.paths
    inputs = [p.fixed, p.moving, p.fixed_labels, p.moving_labels]
    before = {str(f): geo.file_hash(f) for f in inputs}
    work = tmp_path_factory.mktemp("cli_full")
    out = work / "result"
    proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--fixed-labels", p.fixed_labels,
                "--moving-labels", p.moving_labels, "--preset", fast_preset, "--device", "cpu",
                "--progress", "json", cwd=work)
    after = {str(f): geo.file_hash(f) for f in inputs}
    return SimpleNamespace(proc=proc, out=out, work=work, before=before, after=after)


def test_full_run_writes_every_file(full_run, tiny_pair) -> None:
    proc, out = full_run.proc, full_run.out
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr.lower()
    assert sorted(p.name for p in out.iterdir()) == sorted((*OUTPUT_FILES, "warped_labels.nii.gz"))
    assert sorted(p.name for p in full_run.work.iterdir()) == ["result"]  # no hidden .partial folder
    lam = nib.load(str(out / "regularization.nii.gz")).get_fdata()
    assert lam.min() > 0.0 and lam.max() <= 1.0
    fixed = nib.load(str(tiny_pair.paths.fixed))
    for name in ("warped", "jacobian", "warped_labels", "regularization"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == fixed.shape
        np.testing.assert_allclose(img.affine, fixed.affine, atol=1e-4)
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_full_run_report(full_run, tiny_pair) -> None:
    report = json.loads((full_run.out / "report.json").read_text())
    for key in REPORT_METRICS:
        assert key in report["metrics"], key
    assert set(report["metrics"]["dice"]) == {"1", "2"}
    assert report["timing"]["total_s"] > 0
    assert report["parameters"]["level_spacings"] == [8.0, 4.0] and report["parameters"]["iterations"] == [20, 20]
    assert report["parameters"]["affine"] is True and report["parameters"]["device"] == "cpu"
    assert report["device"] == "cpu"
    assert {"svreg_core", "torch", "numpy", "nibabel", "h5py", "python"} <= set(report["versions"])
    assert report["inputs"]["fixed"]["path"] == str(tiny_pair.paths.fixed)
    assert report["inputs"]["fixed"]["shape"] == list(tiny_pair.fixed.shape)
    assert report["inputs"]["fixed"]["orientation"] == "".join(nib.aff2axcodes(tiny_pair.fixed_affine))
    assert report["inputs"]["moving_labels"]["path"] == str(tiny_pair.paths.moving_labels)
    m = report["metrics"]
    assert 0 < m["jacobian_min"] <= 1 <= m["jacobian_max"]
    assert m["dice_mean"] > m["dice_mean_before"] and set(m["dice_before"]) == {"1", "2"}
    assert report["metrics"]["folding_percent"] < 0.1


def test_full_run_improves_overlap(full_run, tiny_pair) -> None:
    """Dice after registration beats the moving labels simply resampled (SimpleITK) onto the fixed grid."""
    p = tiny_pair.paths
    before = sitk.Resample(sitk.ReadImage(str(p.moving_labels)), sitk.ReadImage(str(p.fixed_labels)),
                           sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    fixed = np.asanyarray(nib.load(str(p.fixed_labels)).dataobj)
    resampled = sitk.GetArrayFromImage(before).transpose(2, 1, 0)
    dice_before = np.mean([2 * np.sum((fixed == k) & (resampled == k)) / (np.sum(fixed == k) + np.sum(resampled == k))
                           for k in (1, 2)])
    report = json.loads((full_run.out / "report.json").read_text())
    assert report["metrics"]["dice_mean"] > dice_before + 0.03, (dice_before, report["metrics"]["dice_mean"])


def test_full_run_transform_files_agree(full_run, geo, tiny_pair) -> None:
    """displacement.nii.gz (T = A(x + u) as one field) and transform.h5 (A after u) map points alike."""
    out = full_run.out
    report = json.loads((out / "report.json").read_text())
    a = np.asarray(report["affine_ras"])
    assert not np.allclose(a, np.eye(4), atol=1e-3)  # the affine stage did something: the order matters
    field = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out / "displacement.nii.gz")),
                                                      sitk.sitkVectorFloat64))
    h5 = sitk.ReadTransform(str(out / "transform.h5"))
    shape, aff = tiny_pair.fixed.shape, tiny_pair.fixed_affine
    ijk = np.random.default_rng(0).integers(1, np.asarray(shape) - 1, (200, 3))
    x = geo.lps(nib.affines.apply_affine(aff, ijk))
    by_field = np.array([field.TransformPoint(tuple(q)) for q in x])
    by_h5 = np.array([h5.TransformPoint(tuple(q)) for q in x])
    np.testing.assert_allclose(by_h5, by_field, atol=1e-2)
    assert np.abs(by_field - x).max() > 1.0


def test_full_run_json_progress(full_run) -> None:
    lines = [line for line in full_run.proc.stdout.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line parses
    assert events[-1]["event"] == "done" and events[-1]["outdir"] == str(full_run.out.absolute())
    assert "metrics" in events[-1]["report"]
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) > 5 and {e["event"] for e in events} == {"progress", "done"}
    fractions = [e["fraction"] for e in progress]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions), fractions
    stages = {e["stage"] for e in progress}
    assert {"load", "affine", "outputs"} <= stages and any(s.startswith("deformable") for s in stages), stages
    # one stage "done", the last event before the result (the registration's own end is not a second "done")
    assert [e["stage"] for e in progress].count("done") == 1 and progress[-1]["stage"] == "done"
    # the outputs (about 15 % of a CPU run, most of a GPU one) move the bar from the registration's end on; they
    # sat at 96 % in one event, so the time estimate was far too short
    assert [e["fraction"] for e in progress if e["stage"] == "registered"] == [REGISTERED_FRACTION]
    outputs = [e for e in progress if e["stage"] == "outputs"]
    assert [e["step"] for e in outputs] == list(range(8)) and outputs[0]["fraction"] == REGISTERED_FRACTION
    assert outputs[-1]["fraction"] == pytest.approx(0.99) and outputs[-1]["message"] == "writing outputs: report done"


def test_inputs_never_modified(full_run) -> None:
    assert full_run.before == full_run.after


# ------------------------------------------------------------------------------------ bad inputs


def _bad_inputs(geo, pair, folder: Path) -> dict[str, Path]:
    fixed = pair.fixed
    aff = pair.fixed_affine
    nan = fixed.copy()
    nan[3, 4, 5] = np.nan
    junk = folder / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b this is not really gzip data" * 10)
    return {
        "2-D": geo.save_nifti(fixed[:, :, 10], aff, folder / "slice.nii.gz"),
        "4-D": geo.save_nifti(np.stack([fixed, fixed], -1), aff, folder / "series.nii.gz"),
        "NaN": geo.save_nifti(nan, aff, folder / "nan.nii.gz"),
        "empty": geo.save_nifti(np.zeros_like(fixed), aff, folder / "empty.nii.gz"),
        "unreadable": junk,
        "missing": folder / "missing.nii.gz",
    }


def _main(argv: list, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _assert_plain_error(rc: int, err: str, *words: str) -> None:
    """One error line; plain progress lines (stderr not a terminal) may come before it."""
    assert rc == 2
    lines = [ln for ln in err.strip("\n").split("\n") if not re.match(r"svreg: [^:]+ \d+ %", ln)]
    assert len(lines) == 1 and lines[0].startswith("svreg: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("case", ["2-D", "4-D", "NaN", "empty", "unreadable", "missing"])
@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_bad_image_is_a_plain_error(geo, tiny_pair, tmp_path: Path, capsys, case: str, role: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bad = _bad_inputs(geo, tiny_pair, data)[case]
    p = tiny_pair.paths
    fixed, moving = (bad, p.moving) if role == "fixed" else (p.fixed, bad)
    listing = sorted(tmp_path.iterdir())
    rc, out, err = _main(["register", fixed, moving, "-o", tmp_path / "out", "--device", "cpu"], capsys)
    _assert_plain_error(rc, err, f"{role} image")
    assert sorted(tmp_path.iterdir()) == listing  # no output folder, no hidden partial folder
    assert out == ""


def test_mismatched_labels(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    p = tiny_pair.paths
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--moving-labels", p.fixed_labels],
                       capsys)
    _assert_plain_error(rc, err, "moving labels", "grid")
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--fixed-labels", p.moving_labels,
                        "--moving-labels", p.moving_labels], capsys)
    _assert_plain_error(rc, err, "fixed labels", "grid")
    assert list(tmp_path.iterdir()) == []


def test_labels_that_neither_map_holds_are_refused_before_the_registration(tiny_pair, tmp_path: Path,
                                                                             capsys) -> None:
    """``--labels`` with a value in neither label map (a typo): Dice and HD95 would skip it silently (or, alone,
    end the run with no score); one line naming it and the labels the maps hold, before any registration."""
    p = tiny_pair.paths
    held = np.union1d(np.unique(load_image(p.fixed_labels, labels=True).data),
                      np.unique(load_image(p.moving_labels, labels=True).data))
    wanted = int(held[-1])
    rc, out, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--fixed-labels", p.fixed_labels,
                          "--moving-labels", p.moving_labels, "--labels", wanted, 999, 998, 999, "--device", "cpu",
                          "--progress", "json"], capsys)
    _assert_plain_error(rc, err, "--labels 999 998: neither the fixed nor the moving label map holds these labels",
                        f"the maps hold {', '.join(map(str, held[:12]))}")
    assert '"stage": "prepare"' not in out and list(tmp_path.iterdir()) == []  # nothing registered or written


def test_preview_refuses_labels_that_neither_map_holds(tiny_pair, tiny_checkpoints, tmp_path: Path, capsys) -> None:
    """``svreg preview --labels`` with a typo: the same one line (and JSON error event) before the affine stage."""
    p = tiny_pair.paths
    rc, out, err = _main(["preview", p.fixed, p.moving, "--model", tiny_checkpoints.hyper, "--fixed-labels",
                          p.fixed_labels, "--moving-labels", p.moving_labels, "--labels", 999, "--device", "cpu"],
                         capsys)
    _assert_plain_error(rc, err, "--labels 999: neither the fixed nor the moving label map holds this label")
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "error" and not any(e.get("stage") == "affine" for e in events)


def test_preview_refuses_masks_it_would_not_use(tiny_pair, tiny_checkpoints, tmp_path: Path, capsys) -> None:
    """``svreg preview --no-affine --moving-mask``: the network alone ignores masks, which were taken without a
    word; refused as ``svreg register --model`` refuses them, before any work."""
    p = tiny_pair.paths
    rc, out, err = _main(["preview", p.fixed, p.moving, "--model", tiny_checkpoints.hyper, "--moving-mask",
                          p.moving_labels, "--no-affine", "--device", "cpu"], capsys)
    _assert_plain_error(rc, err, "--moving-mask restricts the similarity of the affine stage and of a refinement")
    assert not any(json.loads(line).get("stage") == "load" for line in out.splitlines())


def test_unwritable_output(tiny_pair, tmp_path: Path, capsys) -> None:
    """An output path below a regular file cannot be created (works even as root)."""
    p = tiny_pair.paths
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for target in (blocker / "out", blocker / "deeper" / "out", blocker):
        rc, _, err = _main(["register", p.fixed, p.moving, "-o", target], capsys)
        _assert_plain_error(rc, err)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file.txt"] and blocker.read_text() == "x"


def test_missing_parent_is_not_created_on_failure(tiny_pair, tmp_path: Path, capsys) -> None:
    p = tiny_pair.paths
    rc, _, err = _main(["register", p.fixed, tmp_path / "missing.nii.gz", "-o", tmp_path / "new" / "sub" / "out"],
                       capsys)
    _assert_plain_error(rc, err, "not found")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_pair, tmp_path: Path, capsys) -> None:
    """svreg's own earlier output is replaced only with --overwrite (folders svreg did not write are
    never replaced: test_overwrite_safety.py)."""
    p = tiny_pair.paths
    out = tmp_path / "out"
    preset = tmp_path / "quick.json"
    preset.write_text(json.dumps({"parameters": {"level_spacings": [12, 6], "iterations": [3, 3], "affine": False}}))
    quick = ["--preset", preset, "--device", "cpu", "--progress", "none"]
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", out, *quick], capsys)
    assert rc == 0, err
    before = (out / "report.json").read_text()
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", out, *quick], capsys)
    _assert_plain_error(rc, err, "--overwrite")
    assert (out / "report.json").read_text() == before
    rc, stdout, err = _main(["register", p.fixed, p.moving, "-o", out, "--overwrite", *quick], capsys)
    assert rc == 0, err
    assert (out / "report.json").read_text() != before and (out / "warped.nii.gz").is_file()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out", "quick.json"]
    assert "Outputs:" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_gpu(tiny_pair, tmp_path: Path, capsys) -> None:
    p = tiny_pair.paths
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--device", "cuda"], capsys)
    _assert_plain_error(rc, err, "CUDA")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, words", [
    ({"parameters": {"lamda_max": 2.0}}, "lamda_max"),
    ({"parameters": {"similarity": "ncc"}}, "similarity"),
    ({"base": "knee-mri", "parameters": {}}, "knee-mri"),
    ("{not json", "not valid JSON"),
    ({"parameters": {"iterations": ["many", 3]}}, "iterations must be a whole number"),
])
def test_bad_preset_file(tiny_pair, tmp_path: Path, capsys, content, words: str) -> None:
    preset = tmp_path / "bad.json"
    preset.write_text(content if isinstance(content, str) else json.dumps(content))
    p = tiny_pair.paths
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--preset", preset], capsys)
    _assert_plain_error(rc, err, words)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.json"]


def test_subprocess_error_json_mode(geo, tiny_pair, tmp_path: Path) -> None:
    """The real command: exit status 2, one stderr line, and a JSON error event on stdout."""
    flat = geo.save_nifti(tiny_pair.fixed[:, :, 5], tiny_pair.fixed_affine, tmp_path / "flat.nii.gz")
    proc = _run(geo, "register", tiny_pair.paths.fixed, flat, "-o", tmp_path / "out", "--progress", "json",
                cwd=tmp_path)
    assert proc.returncode == 2
    _assert_plain_error(proc.returncode, proc.stderr, "moving image", "3-D")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events[-1]["event"] == "error" and "3-D" in events[-1]["message"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["flat.nii.gz"]


def _stages(err: str) -> set[str]:
    """The progress stages named in plain progress lines (``svreg: STAGE NN %``)."""
    return {m.group(1) for m in re.finditer(r"svreg: ([^:\n]+?) \d+ %", err)}


def _strict_json(path: Path) -> dict:
    """``path`` parsed as strict JSON (NaN / Infinity literals refused)."""
    def refuse(token: str):
        raise ValueError(f"non-standard JSON literal {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("shape", [(2, 2, 2), (46, 55, 2)])
def test_small_images_register_with_uncomputable_metrics_null(geo, tmp_path: Path, shape) -> None:
    """The issue's 2x2x2 images and 46x55x2 slab: registered (real command, default preset); NDV, which
    needs a voxel inside the one-voxel border, is null with a note; everything else is computed."""
    aff = geo.make_affine(np.diag([2.0, 2.0, 3.0]), [10.0, -20.0, 5.0])
    i, j, k = np.indices(shape, dtype=np.float64)
    fixed = np.exp(-((i - 0.45 * shape[0]) ** 2 + (j - 0.5 * shape[1]) ** 2) / (0.1 * max(shape) ** 2)) + 0.1 * k
    moving = np.exp(-((i - 0.55 * shape[0]) ** 2 + (j - 0.45 * shape[1]) ** 2) / (0.1 * max(shape) ** 2)) + 0.1 * k
    f = geo.save_nifti(fixed.astype(np.float32), aff, tmp_path / "fixed.nii.gz")
    m = geo.save_nifti(moving.astype(np.float32), aff, tmp_path / "moving.nii.gz")
    out = tmp_path / "out"
    proc = _run(geo, "register", f, m, "-o", out, "--device", "cpu", "--progress", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "NDV n/a" in proc.stdout and "Traceback" not in proc.stderr
    report = _strict_json(out / "report.json")
    metrics = report["metrics"]
    assert metrics["ndv_percent"] is None
    assert any("ndv_percent cannot be computed" in n and "3 voxels" in n for n in report["notes"])
    for key in ("folding_percent", "sdlogj", "jacobian_min", "jacobian_max"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    assert nib.load(str(out / "warped.nii.gz")).shape == shape


def test_sheared_or_singular_affine_is_a_plain_error(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """A sform that its qform contradicts, and a nearly singular affine: one line before any work."""
    data = tiny_pair.moving
    sheared = tiny_pair.moving_affine.copy()
    sheared[:3, 1] += 0.3 * sheared[:3, 0]
    geo.save_nifti(data, sheared, tmp_path / "sheared.nii.gz")  # the qform cannot hold the shear
    squashed = tiny_pair.moving_affine.copy()
    squashed[:3, 0] *= 1e-7
    nib.save(nib.Nifti1Image(data, squashed), str(tmp_path / "squashed.nii.gz"))
    p = tiny_pair.paths
    for name, words in (("sheared", ("sform and qform", "fslorient")), ("squashed", ("nearly) singular",))):
        rc, _, err = _main(["register", p.fixed, tmp_path / f"{name}.nii.gz", "-o", tmp_path / "out",
                            "--device", "cpu", "--progress", "lines"], capsys)
        _assert_plain_error(rc, err, "moving image", *words)
        assert _stages(err) <= {"load"}  # refused while reading the images
    assert not (tmp_path / "out").exists()


def test_images_apart_without_the_affine_stage_is_a_plain_error(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """A moving image whose header places it 500 mm away, with --no-affine: one line before any work."""
    far = tiny_pair.moving_affine.copy()
    far[0, 3] += 500.0
    geo.save_nifti(tiny_pair.moving, far, tmp_path / "far.nii.gz")
    rc, _, err = _main(["register", tiny_pair.paths.fixed, tmp_path / "far.nii.gz", "-o", tmp_path / "out",
                        "--no-affine", "--device", "cpu", "--progress", "lines"], capsys)
    _assert_plain_error(rc, err, "the images do not overlap", "drop --no-affine")
    assert _stages(err) <= {"load"}
    assert not (tmp_path / "out").exists()


def test_initial_transform_file_starts_the_registration(geo, tiny_pair, fast_preset, tmp_path: Path, capsys) -> None:
    """The moving image and its labels moved 500 mm to the right in their headers register with --no-affine
    from an ITK translation file written by SimpleITK (LPS: -500 mm along x); the report records the file and
    its RAS matrix, and the Dice after is that of the unmoved pair's run. A displacement-field file is refused."""
    far = tiny_pair.moving_affine.copy()
    far[0, 3] += 500.0
    moving = geo.save_nifti(tiny_pair.moving, far, tmp_path / "far.nii.gz")
    labels = geo.save_nifti(np.asarray(nib.load(str(tiny_pair.paths.moving_labels)).dataobj), far,
                            tmp_path / "far_labels.nii.gz")
    sitk.WriteTransform(sitk.TranslationTransform(3, (-500.0, 0.0, 0.0)), str(tmp_path / "shift.tfm"))
    common = ["--fixed-labels", tiny_pair.paths.fixed_labels, "--moving-labels", labels, "--preset", fast_preset,
              "--no-affine", "--device", "cpu", "--threads", "1", "--outputs", "displacement", "--progress", "none"]
    rc, _, err = _main(["register", tiny_pair.paths.fixed, moving, "-o", tmp_path / "out", "--initial-transform",
                        tmp_path / "shift.tfm", *common], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    shift = np.eye(4)
    shift[0, 3] = 500.0
    np.testing.assert_allclose(report["initial_transform"]["affine_ras"], shift, atol=1e-12)
    np.testing.assert_allclose(report["affine_ras"], shift, atol=1e-12)
    assert report["initial_transform"]["path"] == str(tmp_path / "shift.tfm")
    rc, _, err = _main(["register", tiny_pair.paths.fixed, tiny_pair.paths.moving, "-o", tmp_path / "plain",
                        *[a if a != labels else tiny_pair.paths.moving_labels for a in common]], capsys)
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert report["metrics"]["dice_mean"] == pytest.approx(plain["metrics"]["dice_mean"], abs=1e-3)
    assert report["metrics"]["dice_mean"] > plain["metrics"]["dice_mean_before"] + 0.02
    sitk.WriteTransform(sitk.DisplacementFieldTransform(sitk.Image([4, 4, 4], sitk.sitkVectorFloat64, 3)),
                        str(tmp_path / "field.h5"))
    rc, _, err = _main(["register", tiny_pair.paths.fixed, moving, "-o", tmp_path / "bad", "--initial-transform",
                        tmp_path / "field.h5", "--no-affine", "--device", "cpu", "--progress", "none"], capsys)
    _assert_plain_error(rc, err, "an initial transform must be linear")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("size_mm", [1e-7, 1e3])
def test_implausible_voxel_size_is_a_plain_error(tmp_path: Path, capsys, size_mm: float) -> None:
    """Issue 14: a 20³ image with 1e-7 mm voxels registered to itself asked the allocator for 384 GB (1e3 mm:
    161 GB). Refused while reading, one line naming the size and the range, nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    image = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([size_mm] * 3 + [1.0])), str(data / "f.nii.gz"))
    listing = sorted(tmp_path.iterdir())
    rc, out, err = _main(["register", data / "f.nii.gz", data / "f.nii.gz", "-o", tmp_path / "out", "--device", "cpu",
                          "--progress", "lines"], capsys)
    _assert_plain_error(rc, err, "fixed image has voxel sizes", f"{size_mm:.3g}, {size_mm:.3g}, {size_mm:.3g} mm",
                        "0.001 to 100 mm")
    assert _stages(err) <= {"load"}  # refused while reading the images
    assert sorted(tmp_path.iterdir()) == listing and out == ""  # no output folder, no hidden partial folder


def test_cpu_allocation_failure_counts_as_out_of_memory() -> None:
    """torch's CPU allocator failing (a grid too large for the machine) gives the one-line out-of-memory
    message, not a traceback."""
    from svreg_core.cli import _is_out_of_memory

    with pytest.raises(RuntimeError) as info:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: more than any machine's address space
    assert _is_out_of_memory(info.value)
    assert not _is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_full_disk_gives_one_plain_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """A write failing with ENOSPC (here a real one: a 16 KB disk) anywhere in a command ends it with one plain
    error line saying what to do, exit status 1, not a traceback."""
    from svreg_core import cli

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=16k")

    def write_to_a_full_disk(args) -> int:
        with open(disk / "big.bin", "wb") as f:
            f.write(bytes(1 << 20))
        return 0

    monkeypatch.setattr(cli, "run_info", write_to_a_full_disk)
    try:
        rc, _, err = _main(["info", "image.nii.gz"], capsys)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("svreg: error: the disk is full or over quota; free some space or write elsewhere, then "
                          "run the same command again")
    # an error that names its file (an open or rename failing) says which
    _, message = cli._machine_failure(OSError(errno.EDQUOT, "Disk quota exceeded", "out/warped.nii.gz"))
    assert message.startswith("the disk is full or over quota (writing out/warped.nii.gz); ")


def test_a_name_too_long_for_the_file_system_is_one_plain_line(tiny_pair, tmp_path: Path, capsys) -> None:
    """An output or input name longer than the file system allows (ENAMETOOLONG, raised even by a check whether
    the path exists) is an input error: one line, exit status 2."""
    p = tiny_pair.paths
    for argv in (["register", p.fixed, p.moving, "-o", tmp_path / ("x" * 300)],
                 ["info", tmp_path / ("y" * 300 + ".nii.gz")]):
        rc, _, err = _main(argv, capsys)
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "name too long for the file system" in err and "choose a shorter one" in err


def test_retired_seed_is_accepted_with_a_warning(tiny_pair, tmp_path: Path, capsys) -> None:
    """Registration draws no random numbers, so it has no seed: an old command line's --seed and an old
    preset file's "seed" are ignored with one warning line each, and the result is the one without them."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"base": "brain-mri", "parameters": {"seed": 5, "alpha_prime": 0.2}}))
    p = tiny_pair.paths
    common = ["--level-spacings", 12, "--iterations", 3, "--no-affine", "--device", "cpu", "--progress", "none",
              "--outputs", "displacement"]
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "a", "--preset", old, "--seed", 1, *common],
                       capsys)
    assert rc == 0 and err.splitlines() == [
        "svreg: warning: ignoring --seed (the pairwise registration is deterministic; seed had no effect).",
        "svreg: warning: ignoring retired parameter(s): seed (the pairwise registration is deterministic; seed "
        "had no effect)"], err
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"base": "brain-mri", "parameters": {"alpha_prime": 0.2}}))
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "b", "--preset", new, *common], capsys)
    assert rc == 0 and err == ""
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "seed" not in report["parameters"] and report["parameters"]["alpha_prime"] == 0.2
    a, b = (np.asarray(nib.load(str(tmp_path / d / "displacement.nii.gz")).dataobj) for d in "ab")
    assert np.array_equal(a, b)


def test_gzip_levels_change_the_files_not_their_content(tiny_pair, tmp_path: Path, capsys) -> None:
    """By default the displacement fields are stored uncompressed in their gzip container (gzip hardly shrinks
    float fields) and the images and the Jacobian map are compressed; --gzip-level sets every .nii.gz output (0, what
    the Slicer module asks for its work folder, stores them all). The NIfTI bytes never change."""
    import gzip

    p = tiny_pair.paths
    common = ["--level-spacings", 12, "--iterations", 3, "--no-affine", "--device", "cpu", "--progress", "none",
              "--outputs", "displacement", "inverse", "jacobian", "warped"]
    for name, level in (("default", []), ("stored", ["--gzip-level", 0]), ("level1", ["--gzip-level", 1])):
        assert _main(["register", p.fixed, p.moving, "-o", tmp_path / name, *level, *common], capsys)[0] == 0

    def ratio(folder: str, name: str) -> float:
        """File size over the size of the NIfTI it holds."""
        path = tmp_path / folder / name
        return path.stat().st_size / len(gzip.decompress(path.read_bytes()))

    fields, images = ("displacement.nii.gz", "inverse_displacement.nii.gz"), ("warped.nii.gz", "jacobian.nii.gz")
    for name in fields + images:
        content = {gzip.decompress((tmp_path / d / name).read_bytes()) for d in ("default", "stored", "level1")}
        assert len(content) == 1
        assert ratio("stored", name) > 1.0  # stored blocks: the NIfTI plus the container's few bytes
        assert ratio("level1", name) < 1.0
    for name in fields:
        assert ratio("default", name) == ratio("stored", name)
    for name in images:
        assert ratio("default", name) == ratio("level1", name)
    with pytest.raises(SystemExit) as info:  # argparse's usage error
        _main(["register", p.fixed, p.moving, "-o", tmp_path / "bad", "--gzip-level", 10, *common], capsys)
    assert info.value.code == 2 and "--gzip-level" in capsys.readouterr().err


def test_deterministic_flag(tiny_pair, tmp_path: Path, capsys, monkeypatch) -> None:
    """--deterministic is accepted and recorded in report.json; it sets CUBLAS_WORKSPACE_CONFIG for cuBLAS
    (a value already set is kept); on CPU the displacement is bitwise the one without it."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that the variable's state is restored afterwards
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    p = tiny_pair.paths
    common = ["--level-spacings", 12, "--iterations", 3, "--no-affine", "--device", "cpu", "--progress", "none",
              "--outputs", "displacement"]
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "plain", *common], capsys)
    assert rc == 0 and err == "", err
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "exact", "--deterministic", *common], capsys)
    assert rc == 0 and err == "", err
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    reports = {d: json.loads((tmp_path / d / "report.json").read_text()) for d in ("plain", "exact")}
    assert reports["exact"]["parameters"]["deterministic"] is True
    assert reports["plain"]["parameters"]["deterministic"] is False
    a, b = (np.asarray(nib.load(str(tmp_path / d / "displacement.nii.gz")).dataobj) for d in ("plain", "exact"))
    assert np.array_equal(a, b) and np.abs(a).max() > 0
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "kept", "--deterministic", *common], capsys)
    assert rc == 0 and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_output_under_proc_is_refused_before_any_work(tiny_pair, tmp_path: Path, capsys, unwritable_folder) -> None:
    """/proc accepts no new folder even for root (the issue: a traceback after the whole registration)."""
    p = tiny_pair.paths
    for target in (unwritable_folder / "svreg-test-out", unwritable_folder / "svreg-test" / "deeper" / "out"):
        rc, _, err = _main(["register", p.fixed, p.moving, "-o", target, "--progress", "lines"], capsys)
        _assert_plain_error(rc, err, "cannot write the output folder", str(unwritable_folder))
        assert err.count("\n") == 1  # not even the images were read
    assert not (unwritable_folder / "svreg-test-out").exists()


def test_apply_to_an_unwritable_place_is_refused_before_any_work(full_run, tiny_pair, tmp_path: Path,
                                                                 capsys) -> None:
    """``svreg apply -o`` onto a read-only disk (root may write anywhere else) or into a missing folder: one line,
    exit 2, nothing written."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "ro,size=1m")
    try:
        for target, words in ((disk / "w.nrrd", "cannot write the output file"),
                              (tmp_path / "missing" / "w.nii.gz", "does not exist")):
            rc, _, err = _main(["apply", full_run.out, tiny_pair.paths.moving, "-o", target], capsys)
            _assert_plain_error(rc, err, words, str(target.parent))
        assert list(disk.iterdir()) == [] and not (tmp_path / "missing").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_apply_of_a_linear_transform_needs_a_reference_before_the_input_is_read(tmp_path: Path, capsys) -> None:
    """A linear transform has no grid to sample on: ``--reference`` is asked for before the input is read (it was
    asked for after reading it, a whole DICOM series say; here a damaged input shows which came first)."""
    sitk.WriteTransform(sitk.TranslationTransform(3, (5.0, 0.0, 0.0)), str(tmp_path / "shift.tfm"))
    (tmp_path / "damaged.nii.gz").write_bytes(b"not an image")
    rc, _, err = _main(["apply", tmp_path / "shift.tfm", tmp_path / "damaged.nii.gz", "-o", tmp_path / "w.nii.gz"],
                       capsys)
    _assert_plain_error(rc, err, "shift.tfm has no grid of its own", "--reference IMAGE")
    assert not (tmp_path / "w.nii.gz").exists()


def _mount_tmpfs(folder: Path, options: str) -> None:
    """Mount a tmpfs at ``folder`` or skip (needs root with mount rights)."""
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")


@pytest.mark.parametrize("options, words", [("size=1m", "not enough free space"),
                                            ("ro,size=1m", "cannot write the output folder")])
def test_full_or_read_only_disk_is_refused_before_registration(tiny_pair, tmp_path: Path, capsys, options: str,
                                                               words: str) -> None:
    """A 1 MB disk (the outputs need more) and a read-only disk (root may write anywhere else): one line,
    exit 2, before the registration starts, nothing written."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, options)
    try:
        p = tiny_pair.paths
        rc, _, err = _main(["register", p.fixed, p.moving, "-o", disk / "out", "--progress", "lines"], capsys)
        _assert_plain_error(rc, err, words, str(disk))
        assert _stages(err) <= {"load"}  # at most the images were read
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("name", ["w.nii.gz", "w.nrrd", "w.mhd"])
def test_apply_to_a_disk_that_fills_up_is_a_plain_error(full_run, tiny_pair, tmp_path: Path, capsys, name: str) -> None:
    """A 16 KB disk fills while ``svreg apply`` writes: one line, exit 2, and no partial file left."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=16k")
    try:
        rc, _, err = _main(["apply", full_run.out, tiny_pair.paths.moving, "-o", disk / name], capsys)
        _assert_plain_error(rc, err, f"cannot write {disk / name}")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_apply_reproduces_the_run(full_run, tiny_pair, tmp_path: Path) -> None:
    """``svreg apply OUT moving`` gives warped.nii.gz again; with --labels, warped_labels.nii.gz."""
    p, out = tiny_pair.paths, full_run.out
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.nii.gz")]) == 0
    np.testing.assert_allclose(nib.load(str(tmp_path / "w.nii.gz")).get_fdata(),
                               nib.load(str(out / "warped.nii.gz")).get_fdata(), atol=1e-4)
    assert main(["apply", str(out), str(p.moving_labels), "-o", str(tmp_path / "l.nii.gz"), "--labels"]) == 0
    same = np.asanyarray(nib.load(str(tmp_path / "l.nii.gz")).dataobj) == \
        np.asanyarray(nib.load(str(out / "warped_labels.nii.gz")).dataobj)
    assert same.mean() > 0.999


def test_apply_writes_nrrd_like_nifti_and_refuses_other_names(full_run, tiny_pair, tmp_path: Path, capsys) -> None:
    """``svreg apply`` to a ``.nrrd`` (3D Slicer) gives the voxels and geometry of its ``.nii.gz``; an output name
    it cannot write is refused before any work, with one plain line."""
    p, out = tiny_pair.paths, full_run.out
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.nii.gz")]) == 0
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.nrrd")]) == 0
    nrrd, nifti = load_image(tmp_path / "w.nrrd"), load_image(tmp_path / "w.nii.gz")
    np.testing.assert_array_equal(nrrd.data, nifti.data)
    np.testing.assert_allclose(nrrd.affine, nifti.affine, atol=1e-5)
    capsys.readouterr()
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.txt")]) == 2
    assert "cannot write an image named w.txt: end its name in .nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "w.txt").exists()
    # a detached header's data file (w.zraw beside w.mhd) is not replaced without --overwrite either
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.mhd")]) == 0
    (tmp_path / "w.mhd").unlink()
    data = (tmp_path / "w.zraw").read_bytes()
    capsys.readouterr()
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.mhd")]) == 2
    assert "w.zraw already exists, and writing w.mhd would replace it" in capsys.readouterr().err
    assert (tmp_path / "w.zraw").read_bytes() == data and not (tmp_path / "w.mhd").exists()
    assert main(["apply", str(out), str(p.moving), "-o", str(tmp_path / "w.mhd"), "--overwrite"]) == 0
    np.testing.assert_array_equal(load_image(tmp_path / "w.mhd").data, nifti.data)


def test_dicom_folder_input_applies_like_its_nifti(full_run, tiny_pair, geo, tmp_path: Path) -> None:
    """``svreg apply`` of the run to the moving image as a DICOM series (int16, its oblique grid with the ``j`` axis
    flipped, so the slices' normal points against ``k`` and ITK stacks them in reverse) gives what the same voxels
    as NIfTI give."""
    moving = nib.load(str(tiny_pair.paths.moving))
    data = np.rint(np.asarray(moving.dataobj) * 1000).astype(np.int16)
    assert np.linalg.det(moving.affine[:3, :3]) < 0
    folder = geo.dicom_series(tmp_path / "moving_dicom", data, moving.affine)
    nifti = geo.save_nifti(data, moving.affine, tmp_path / "moving_int16.nii.gz")
    for source, name in ((folder, "a.nii.gz"), (nifti, "b.nii.gz")):
        assert main(["apply", str(full_run.out), str(source), "-o", str(tmp_path / name)]) == 0
    a, b = (nib.load(str(tmp_path / name)) for name in ("a.nii.gz", "b.nii.gz"))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), atol=0.05)  # of intensities up to 1000


def test_nrrd_inputs_register_like_their_nifti(full_run, tiny_pair, fast_preset, tmp_path: Path) -> None:
    """The tiny pair converted by ITK to NRRD (3D Slicer's format; the moving image oblique and flipped) and
    MetaImage registers to the same displacement, Dice and report geometry as the NIfTI files of ``full_run``."""
    p = tiny_pair.paths
    converted = {}
    for role, suffix in (("fixed", ".nrrd"), ("moving", ".nrrd"), ("fixed_labels", ".mha"), ("moving_labels", ".nrrd")):
        converted[role] = tmp_path / f"{role}{suffix}"
        sitk.WriteImage(sitk.ReadImage(str(getattr(p, role))), str(converted[role]))
    out = tmp_path / "out"
    assert main(["register", str(converted["fixed"]), str(converted["moving"]), "-o", str(out), "--fixed-labels",
                 str(converted["fixed_labels"]), "--moving-labels", str(converted["moving_labels"]), "--preset",
                 str(fast_preset), "--device", "cpu", "--threads", "1", "--outputs", "displacement",
                 "--progress", "none"]) == 0
    ours, reference = (nib.load(str(folder / "displacement.nii.gz")) for folder in (out, full_run.out))
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-5)
    # ITK takes the oblique moving image's rotation from the NIfTI's float32 quaternion, nibabel from its sform:
    # their affines differ by 1.4e-7, which the optimiser's Adam steps grow to 0.06 mm here (a 6 mm grid, a 5 mm
    # warp); a flipped or transposed axis would be off by millimetres
    np.testing.assert_allclose(ours.get_fdata(), reference.get_fdata(), atol=0.2)
    report, reference_report = (json.loads((folder / "report.json").read_text()) for folder in (out, full_run.out))
    assert report["metrics"]["dice_mean"] == pytest.approx(reference_report["metrics"]["dice_mean"], abs=1e-4)
    assert report["inputs"]["moving"]["orientation"] == reference_report["inputs"]["moving"]["orientation"]


def test_batch_shard_outputs_and_parameters(tiny_pair, fast_preset, tmp_path: Path, capsys) -> None:
    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    second.write_bytes(Path(p.moving).read_bytes())
    root = tmp_path / "results"
    argv = ["register-batch", "--fixed", str(p.fixed), "--fixed-labels", str(p.fixed_labels), "--moving",
            str(p.moving), str(second), "--moving-labels", str(tmp_path / "unused_seg.nii.gz"), str(p.moving_labels),
            "-o", str(root), "--shard", "1/2", "--preset", str(fast_preset),
            "--device", "cpu", "--outputs", "warped", "displacement", "--iterations", "5", "--alpha-prime", "0.3",
            "--lambda-max", "2", "--threads", "1", "--progress", "none"]
    assert main(argv) == 0
    # shard 1 of 2: the second pair only, and its summary
    assert sorted(x.name for x in root.iterdir()) == ["second", "summary_shard-1-of-2.csv"]
    files = sorted(x.name for x in (root / "second").iterdir())
    assert files == sorted(["warped.nii.gz", "displacement.nii.gz", "report.json", ".svreg-output"])
    report = json.loads((root / "second" / "report.json").read_text())
    params = report["parameters"]
    assert params["iterations"] == [5, 5] and params["alpha_prime"] == 0.3 and params["lambda_max"] == 2.0
    assert report["outputs"] == ["displacement", "warped"]
    assert report["inputs"]["moving"]["path"] == str(second)
    assert report["inputs"]["moving_labels"]["path"] == str(p.moving_labels)  # the second of --moving-labels
    assert "second" in capsys.readouterr().out
    with (root / "summary_shard-1-of-2.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["moving"], row["output"], row["status"], row["error"]) == (str(second), str(root / "second"), "ok", "")
    for key in ("folding_percent", "ndv_percent", "sdlogj"):
        assert float(row[key]) == pytest.approx(report["metrics"][key], rel=1e-9)
    assert float(row["dice_mean"]) == pytest.approx(report["metrics"]["dice_mean"], rel=1e-9)
    assert row["tre_mean_mm"] == ""  # no landmarks
    assert float(row["registration_s"]) == report["timing"]["registration_s"]
    shutil.rmtree(root / "second")  # a new batch into the same folder: the earlier summary is kept
    assert main(argv) == 2 and "summary_shard-1-of-2.csv exists" in capsys.readouterr().err


def test_a_shard_without_pairs_writes_the_summary_it_names(tiny_pair, tmp_path: Path, capsys) -> None:
    """One pair, shard 5 of 10: nothing to register, and the summary it prints is there, a header only."""
    p = tiny_pair.paths
    root = tmp_path / "r"
    rc, out, _ = _main(["register-batch", "--fixed", p.fixed, "--moving", p.moving, "-o", root, "--shard", "5/10",
                        "--device", "cpu", "--progress", "none"], capsys)
    assert rc == 0 and f"Summary of 0 pairs: {root / 'summary_shard-5-of-10.csv'}" in out
    with (root / "summary_shard-5-of-10.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [list(BATCH_SUMMARY_COLUMNS)]


def test_a_batch_refuses_corrupt_weights_before_any_pair(tiny_pair, tiny_checkpoints, tmp_path: Path, capsys) -> None:
    """The model is loaded once, before the first pair: truncated weights give one error, and no pair's output
    folder or summary is written (each pair used to read its images and then fail on the weights)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoints.plain, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    shutil.copyfile(p.moving, second)
    root = tmp_path / "r"
    rc, _, err = _main(["register-batch", "--fixed", p.fixed, "--moving", p.moving, second, "-o", root, "--model",
                        model, "--device", "cpu", "--progress", "none"], capsys)
    _assert_plain_error(rc, err, "model.safetensors")
    assert "model.safetensors" in err and not root.exists()


def test_batch_summary_gives_the_landmark_error(tiny_pair, fast_preset, tmp_path: Path) -> None:
    """Landmark columns of a pairs CSV reach the registration: the summary's TRE is the report's."""
    p = tiny_pair.paths
    points = Grid(load_image(p.fixed).shape, load_image(p.fixed).affine).world_points()[4:7, 4, 4]
    (tmp_path / "fixed_points.csv").write_text("x,y,z\n" + "".join(f"{a},{b},{c}\n" for a, b, c in points))
    (tmp_path / "moving_points.csv").write_text("x,y,z\n" + "".join(f"{a + 2},{b},{c}\n" for a, b, c in points))
    (tmp_path / "pairs.csv").write_text("fixed,moving,fixed_landmarks,moving_landmarks\n"
                                        f"{p.fixed},{p.moving},fixed_points.csv,moving_points.csv\n")
    assert main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r"), "--preset",
                 str(fast_preset), "--iterations", "5", "--outputs", "displacement", "--progress", "none"]) == 0
    report = json.loads((tmp_path / "r" / "moving" / "report.json").read_text())
    with (tmp_path / "r" / "summary.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["tre_mean_mm"]) == pytest.approx(report["metrics"]["tre"]["mean"], rel=1e-12)


def test_batch_pairs_file_that_is_not_text_is_one_plain_error(tmp_path: Path, capsys) -> None:
    """A pairs file saved in another encoding (here UTF-16, as some spreadsheet programs export) was a
    UnicodeDecodeError traceback."""
    (tmp_path / "pairs.csv").write_text("fixed,moving\na.nii.gz,b.nii.gz\n", encoding="utf-16")
    rc, _, err = _main(["register-batch", "--pairs", tmp_path / "pairs.csv", "-o", tmp_path / "r"], capsys)
    _assert_plain_error(rc, err, "pairs file", "pairs.csv is not UTF-8 text")
    assert not (tmp_path / "r").exists()


def test_batch_resumes_after_an_interruption(tiny_pair, fast_preset, tmp_path: Path, capsys) -> None:
    """A batch whose second pair never finished (its folder missing): ``--resume`` keeps the first pair's files as
    they are, registers the second and lists both in the summary; a pair folder of other images is not taken for
    finished; ``--resume`` with ``--overwrite`` is refused."""
    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    second.write_bytes(Path(p.moving).read_bytes())
    root = tmp_path / "r"
    argv = ["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), str(second), "-o", str(root),
            "--preset", str(fast_preset), "--iterations", "5", "--outputs", "displacement", "--progress", "none"]
    assert main(argv) == 0
    kept = (root / "moving" / "report.json").read_bytes()
    shutil.rmtree(root / "second")
    assert main(argv) == 2 and f"{root / 'moving'} holds a finished registration of its pair (an earlier run of " \
        "this batch?); use --resume to keep the finished pairs" in capsys.readouterr().err
    (root / "moving").rename(root / "moved")
    assert main(argv) == 2 and "use --resume to go on with that batch" in capsys.readouterr().err  # the summary
    (root / "moved").rename(root / "moving")
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"[1/2] {p.moving} -> {p.fixed}: registered before, kept" in err and "[2/2]" in err
    assert (root / "moving" / "report.json").read_bytes() == kept and (root / "second" / "report.json").is_file()
    with (root / "summary.csv").open(newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["ok", "ok"]
    # the folder "moving" holds a registration of other images: not finished for this pair, so refused
    other = json.loads(kept)
    other["inputs"]["moving"]["path"] = str(tmp_path / "someone_else.nii.gz")
    (root / "moving" / "report.json").write_text(json.dumps(other))
    assert main([*argv, "--resume"]) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--resume", "--overwrite"]) == 2 and "choose one" in capsys.readouterr().err


def test_a_finished_pair_is_recognised_from_another_working_folder(tmp_path: Path) -> None:
    """A report holding paths relative to the folder its batch ran in matches the same file names given from
    elsewhere; another file name, or an absolute path to another file, does not."""
    from svreg_core.cli import Pair, finished_report
    from svreg_core.outputs.writer import MARKER_FILE

    out = tmp_path / "r" / "sub1"
    out.mkdir(parents=True)
    (out / MARKER_FILE).write_text("")
    inputs = {"fixed": {"path": "data/atlas.nii.gz"}, "moving": {"path": "data/sub1.nii.gz"}}
    (out / "report.json").write_text(json.dumps({"inputs": inputs}))
    here = str(tmp_path / "project" / "data")
    assert finished_report(Pair(f"{here}/atlas.nii.gz", f"{here}/sub1.nii.gz", str(out))) is not None
    assert finished_report(Pair(f"{here}/atlas.nii.gz", f"{here}/sub2.nii.gz", str(out))) is None
    inputs["moving"]["path"] = str(tmp_path / "other" / "sub1.nii.gz")
    (out / "report.json").write_text(json.dumps({"inputs": inputs}))
    assert finished_report(Pair(f"{here}/atlas.nii.gz", f"{here}/sub1.nii.gz", str(out))) is None


def test_batch_summary_lists_a_failed_pair(tiny_pair, fast_preset, tmp_path: Path, capsys) -> None:
    """A pair that fails (NaN voxels) has its row with the error; the others register; exit status 2."""
    p = tiny_pair.paths
    moving = load_image(p.moving)
    broken = moving.data.copy()
    broken[1, 1, 1] = np.nan
    nan_path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(broken, moving.affine), str(nan_path))
    rc, out, err = _main(["register-batch", "--fixed", p.fixed, "--moving", nan_path, p.moving, "-o", tmp_path / "r",
                          "--preset", fast_preset, "--iterations", "5", "--outputs", "displacement", "--progress",
                          "none"], capsys)
    assert rc == 2 and "1 of 2 pairs failed (see above and summary.csv)" in err
    assert f"Summary of 2 pairs: {tmp_path / 'r' / 'summary.csv'}" in out
    with (tmp_path / "r" / "summary.csv").open(newline="") as f:
        failed, done = list(csv.DictReader(f))
    assert (failed["status"], failed["error"], failed["dice_mean"]) == (
        "failed", "moving image contains 1 NaN or infinite voxels; clean or mask them first.", "")
    assert done["status"] == "ok" and float(done["folding_percent"]) >= 0.0


def test_batch_skips_a_pair_that_runs_out_of_memory_and_stops_at_ctrl_c(tiny_pair, fast_preset, tmp_path: Path,
                                                                        capsys, monkeypatch) -> None:
    """A pair whose registration fails with an error that is not svreg's (out of memory, a bug) is recorded as failed
    with its error and the next pair registers (it ended the batch, without the pair's summary row); Ctrl-C
    still stops the batch."""
    import svreg_core.registration

    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    second.write_bytes(Path(p.moving).read_bytes())
    real, raised = svreg_core.registration.register, []

    def register(*args, **kwargs):
        if raised:
            return real(*args, **kwargs)
        raised.append(failure)
        raise failure

    monkeypatch.setattr(svreg_core.registration, "register", register)
    argv = ["register-batch", "--fixed", p.fixed, "--moving", p.moving, second, "--preset", fast_preset,
            "--iterations", "5", "--outputs", "displacement", "--threads", "1", "--progress", "none"]
    failure: BaseException = MemoryError()
    rc, _, err = _main([*argv, "-o", tmp_path / "r"], capsys)
    assert rc == 2 and f"svreg: error: {p.moving}: out of memory; crop the images" in err and "Traceback" not in err
    with (tmp_path / "r" / "summary.csv").open(newline="") as f:
        failed, done = list(csv.DictReader(f))
    assert (failed["status"], done["status"]) == ("failed", "ok") and failed["error"].startswith("out of memory")
    failure, raised = KeyboardInterrupt(), []
    rc, _, err = _main([*argv, "-o", tmp_path / "i"], capsys)
    assert rc == 130 and "interrupted" in err and not (tmp_path / "i" / "second").exists()


@pytest.mark.parametrize("extra, words", [
    (["--iterations", "1", "2", "3"], "3 numbers for 2 levels"),
    (["--level-spacings", "8", "4", "2"], "give --iterations too"),
    (["--level-spacings", "2", "4", "--iterations", "5", "5"], "--level-spacings go from coarse to fine"),
    (["--threads", "0"], "--threads"),
])
def test_parameter_errors(tiny_pair, fast_preset, tmp_path: Path, capsys, extra, words: str) -> None:
    p = tiny_pair.paths
    code = main(["register", str(p.fixed), str(p.moving), "-o", str(tmp_path / "o"), "--preset", str(fast_preset),
                 *extra])
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_alpha_prime_with_no_spr_is_named_as_ignored(capsys) -> None:
    """``--no-spr`` keeps λ ≡ 1, so α′ (the hyperprior on λ) changes nothing: a warning says so (not an error:
    scripts pass the same flags to an SPR and a uniform run); without ``--no-spr`` it is used, silently."""
    from svreg_core.cli import build_parser, registration_parameters

    parser, _ = build_parser()
    argv = ["register", "f.nii.gz", "m.nii.gz", "-o", "out", "--alpha-prime", "0.1", "--lambda-max", "2"]
    params = registration_parameters(parser.parse_args([*argv, "--no-spr"]))
    assert not params.spr and params.lambda_max == 2.0
    assert capsys.readouterr().err == ("svreg: warning: ignoring --alpha-prime: it weighs the hyperprior on the "
                                       "spatially varying λ, and --no-spr keeps λ ≡ 1 (--lambda-max sets the uniform "
                                       "regulariser's strength).\n")
    assert registration_parameters(parser.parse_args(argv)).alpha_prime == 0.1 and capsys.readouterr().err == ""


def test_control_spacing_sets_the_finest_control_grid(capsys) -> None:
    """``--control-spacing`` (new): with ``--level-spacings`` alone a small animal's velocity stayed on the preset's
    2 mm control grid (the brain pair at a tenth of its size: Dice 0.59 -> 0.0003); out-of-range values are
    refused as in a preset file."""
    from svreg_core.cli import build_parser, registration_parameters
    from svreg_core.errors import InputError

    parser, _ = build_parser()
    argv = ["register", "f.nii.gz", "m.nii.gz", "-o", "out", "--level-spacings", "0.4", "0.2"]
    params = registration_parameters(parser.parse_args([*argv, "--control-spacing", "0.2"]))
    assert params.min_control_spacing == 0.2 and params.level_spacings == (0.4, 0.2)
    assert registration_parameters(parser.parse_args(argv)).min_control_spacing == 2.0  # brain-mri's
    with pytest.raises(InputError, match="--control-spacing 0 is out of range"):
        registration_parameters(parser.parse_args([*argv, "--control-spacing", "0"]))
    assert capsys.readouterr().err == ""


def test_a_preset_file_changing_fixed_settings_is_warned_about_in_a_batch_too(fast_preset, capsys) -> None:
    """A preset file with its own pyramid (fixed settings of brain-mri): one warning, for ``svreg register`` and, as
    before only it, ``svreg register-batch``."""
    from svreg_core.cli import build_parser, registration_parameters

    parser, _ = build_parser()
    for argv in (["register", "f.nii.gz", "m.nii.gz"],
                 ["register-batch", "--fixed", "f.nii.gz", "--moving", "m.nii.gz"]):
        params = registration_parameters(parser.parse_args([*argv, "-o", "out", "--preset", str(fast_preset)]))
        assert params.level_spacings == (8.0, 4.0)
        assert capsys.readouterr().err == (f"svreg: warning: preset {fast_preset.name} changes fixed settings of the "
                                           "brain-mri preset (level_spacings, iterations); results can differ from "
                                           "the tested defaults.\n")


def test_batch_errors(tiny_pair, tmp_path: Path, capsys) -> None:
    p = tiny_pair.paths
    assert main(["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), "-o", str(tmp_path / "r"),
                 "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    (tmp_path / "pairs.csv").write_text("a,b\n1,2\n")
    assert main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r")]) == 2
    assert "needs a header line with the columns fixed, moving (missing: fixed, moving)" in capsys.readouterr().err
    # files that do not exist: all named (a repeated one once) before any work, no output folder
    (tmp_path / "pairs.csv").write_text(f"fixed,moving,moving_labels,output\n{p.fixed},{p.moving},seg_typo.nii.gz,a\n"
                                        f"{p.fixed},sub_typo.nii.gz,,b\n{p.fixed},{p.moving},seg_typo.nii.gz,c\n")
    assert main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"2 input file(s) of the batch not found (moving labels {tmp_path / 'seg_typo.nii.gz'}; moving " \
           f"{tmp_path / 'sub_typo.nii.gz'}); nothing was registered." in err and not (tmp_path / "r").exists()
    # a row without its moving image: one line before any work, no output folder
    (tmp_path / "pairs.csv").write_text(f"fixed,moving\n{p.fixed},{p.moving}\n{p.fixed},\n")
    assert main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r")]) == 2
    assert "pairs.csv, line 3: no moving image." in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_label_options_that_would_do_nothing_are_refused(tiny_pair, tmp_path: Path, capsys) -> None:
    """Fixed labels without moving labels (no Dice ran: only report.json), ``--labels`` without label maps,
    ``--outputs labels`` without moving labels, and per-pair flags given with a pairs file: one line before any
    work, no output folder."""
    p = tiny_pair.paths
    (tmp_path / "pairs.csv").write_text(f"fixed,moving,fixed_labels\n{p.fixed},{p.moving},{p.fixed_labels}\n")
    register = ["register", p.fixed, p.moving, "-o", tmp_path / "out"]
    batch = ["register-batch", "--fixed", p.fixed, "--moving", p.moving, "-o", tmp_path / "out"]
    pairs = ["register-batch", "--pairs", tmp_path / "pairs.csv", "-o", tmp_path / "out"]
    for argv, words in (
            ([*register, "--fixed-labels", p.fixed_labels], "--fixed-labels needs --moving-labels: Dice and HD95"),
            ([*register, "--labels", "1", "2"], "--labels chooses the labels Dice and HD95 score; it needs "
                                                "--fixed-labels and --moving-labels."),
            ([*register, "--outputs", "labels"], "--outputs labels writes the warped moving labels; it needs "
                                                 "--moving-labels."),
            ([*batch, "--fixed-labels", p.fixed_labels], "--fixed-labels needs --moving-labels"),
            ([*batch, "--moving", p.moving, p.moving, "--moving-labels", p.moving_labels],
             "--moving-labels gives 1 label maps for 2 moving images"),
            (pairs, f"the pair of moving image {p.moving} has fixed_labels but no moving_labels"),
            ([*pairs, "--moving-labels", p.moving_labels], "--moving-labels go(es) with --fixed and --moving")):
        rc, _, err = _main([*argv, "--device", "cpu", "--progress", "none"], capsys)
        _assert_plain_error(rc, err, words)
        assert not (tmp_path / "out").exists()


def test_batch_pairs_csv_columns(tmp_path: Path) -> None:
    """The optional columns of a pairs CSV, relative to its folder; the output folder from the moving file's name
    without its image ending (``.nii.gz``, ``.nrrd``, …) unless given."""
    from argparse import Namespace

    from svreg_core.cli import read_pairs

    (tmp_path / "pairs.csv").write_text("fixed,moving,fixed_labels,initial_transform,fixed_landmarks,moving_landmarks,"
                                        "output\nf.nii.gz,sub1.nrrd,f_seg.nii.gz,sub1_rigid.tfm,f.fcsv,sub1.csv,\n"
                                        "f.nii.gz,sub2.nii.gz,,,,,two\n")
    first, second = read_pairs(Namespace(pairs=str(tmp_path / "pairs.csv"), output=str(tmp_path / "r"), fixed=None,
                                         moving=None, fixed_labels=None, moving_labels=None, fixed_mask=None))
    assert (first.moving, first.fixed_labels, first.initial_transform, first.output) == (
        str(tmp_path / "sub1.nrrd"), str(tmp_path / "f_seg.nii.gz"), str(tmp_path / "sub1_rigid.tfm"),
        str(tmp_path / "r" / "sub1"))
    assert (first.fixed_landmarks, first.moving_landmarks) == (str(tmp_path / "f.fcsv"), str(tmp_path / "sub1.csv"))
    assert (second.fixed_labels, second.initial_transform, second.output) == (None, None, str(tmp_path / "r" / "two"))
    assert second.fixed_landmarks is None
    assert str(tmp_path / "sub1_rigid.tfm") in first.inputs()


def test_batch_output_folders_of_dicom_series(geo, tmp_path: Path, capsys) -> None:
    """A DICOM series given by one of its files or by its folder gets its folder's name as the pair's output folder
    (not the file's, ``IM0001.dcm``); two pairs that would share a folder are refused before any work, naming both
    moving images and how to tell them apart."""
    from argparse import Namespace

    from svreg_core.cli import read_pairs

    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    first = geo.dicom_series(tmp_path / "visit1", data, np.eye(4))
    second = geo.dicom_series(tmp_path / "visit2", data, np.eye(4))
    one_file = sorted(first.iterdir())[0]
    pairs = read_pairs(Namespace(pairs=None, fixed="f.nii.gz", moving=[str(one_file), str(second)],
                                 output=str(tmp_path / "r"), fixed_labels=None, moving_labels=None, fixed_mask=None))
    assert [Path(p.output).name for p in pairs] == ["visit1", "visit2"]
    fixed = tmp_path / "f.nii.gz"
    rc = main(["register-batch", "--fixed", str(fixed), "--moving", str(one_file), str(first), "-o",
               str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and f"two pairs (moving {one_file} and {first}) would write the same folder " in err
    assert "give the pairs as a CSV with an output column." in err and not (tmp_path / "r").exists()


def test_batch_output_folders_of_alike_file_names_get_their_folders_name(tmp_path: Path) -> None:
    """``sub-01/T1.nii.gz`` and ``sub-02/T1.nii.gz`` (a BIDS-like layout) register into ``sub-01_T1`` and
    ``sub-02_T1``; a file name of its own keeps its plain name, and a CSV's output column is used as given."""
    from argparse import Namespace

    from svreg_core.cli import read_pairs

    movings = [tmp_path / "sub-01" / "T1.nii.gz", tmp_path / "sub-02" / "T1.nii.gz", tmp_path / "sub-03" / "T2.nii"]
    pairs = read_pairs(Namespace(pairs=None, fixed="f.nii.gz", moving=[str(m) for m in movings],
                                 output=str(tmp_path / "r"), fixed_labels=None, moving_labels=None, fixed_mask=None))
    assert [Path(p.output).relative_to(tmp_path / "r").as_posix() for p in pairs] == ["sub-01_T1", "sub-02_T1", "T2"]
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("fixed,moving,output\nf.nii.gz,sub-01/T1.nii.gz,first\nf.nii.gz,sub-02/T1.nii.gz,\n"
                        "f.nii.gz,sub-03/T1.nii.gz,\n")
    pairs = read_pairs(Namespace(pairs=str(csv_file), fixed=None, moving=None, output=str(tmp_path / "r"),
                                 fixed_labels=None, moving_labels=None, fixed_mask=None))
    assert [Path(p.output).name for p in pairs] == ["first", "sub-02_T1", "sub-03_T1"]
    assert pairs[1].moving == str(tmp_path / "sub-02" / "T1.nii.gz")


def test_a_ct_pair_with_an_mr_preset_is_warned_about(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """Two images in Hounsfield units (air at −1000 HU) registered with the default brain-mri preset: one warning
    line naming the CT presets, also in report.json (when it stays silent: ``optim/test_parameters.py``)."""
    for name in ("fixed", "moving"):
        mr = load_image(getattr(tiny_pair.paths, name))
        geo.save_nifti(mr.data / mr.data.max() * 1040.0 - 1000.0, mr.affine, tmp_path / f"{name}_ct.nii.gz")
    rc, _, err = _main(["register", tmp_path / "fixed_ct.nii.gz", tmp_path / "moving_ct.nii.gz", "-o", tmp_path / "o",
                        "--iterations", "5", "--outputs", "displacement", "--progress", "none"], capsys)
    (line,) = [ln for ln in err.splitlines() if "look like CT" in ln]
    assert rc == 0 and line.startswith("svreg: warning: both images look like CT (Hounsfield units), but the "
                                       "brain-mri preset was tuned on MR: --preset ct (or lung-ct for the chest)")
    assert json.loads((tmp_path / "o" / "report.json").read_text())["warnings"] == [line[len("svreg: warning: "):]]


def test_a_ct_pair_with_a_shipped_model_is_warned_about(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """The same CT pair with the shipped model (trained on synthetic brain images only) gave no word: one warning
    line now, naming the CT presets, also in report.json."""
    for name in ("fixed", "moving"):
        mr = load_image(getattr(tiny_pair.paths, name))
        geo.save_nifti(mr.data / mr.data.max() * 1040.0 - 1000.0, mr.affine, tmp_path / f"{name}_ct.nii.gz")
    rc, _, err = _main(["register", tmp_path / "fixed_ct.nii.gz", tmp_path / "moving_ct.nii.gz", "-o", tmp_path / "o",
                        "--model", "default", "--no-affine", "--outputs", "displacement", "--progress", "none"],
                       capsys)
    (line,) = [ln for ln in err.splitlines() if "look like CT" in ln]
    assert rc == 0 and line.startswith("svreg: warning: both images look like CT (Hounsfield units), but the shipped "
                                       "model brain-unet-spr was trained on synthetic head images"), err
    assert json.loads((tmp_path / "o" / "report.json").read_text())["warnings"] == [line[len("svreg: warning: "):]]


def test_each_pair_of_a_batch_shows_and_records_its_own_warnings(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """A batch of two CT pairs with the MR preset: each pair's warning is printed and kept in its report.json. Before,
    Python showed a warning once per place in the code, so the second pair's (the same text) was neither printed nor
    recorded."""
    for name in ("fixed", "moving"):
        mr = load_image(getattr(tiny_pair.paths, name))
        geo.save_nifti(mr.data / mr.data.max() * 1040.0 - 1000.0, mr.affine, tmp_path / f"{name}_ct.nii.gz")
    shutil.copy(tmp_path / "moving_ct.nii.gz", tmp_path / "second_ct.nii.gz")
    rc, _, err = _main(["register-batch", "--fixed", tmp_path / "fixed_ct.nii.gz", "--moving",
                        tmp_path / "moving_ct.nii.gz", tmp_path / "second_ct.nii.gz", "-o", tmp_path / "r",
                        "--iterations", "5", "--outputs", "displacement", "--progress", "none"], capsys)
    lines = [ln for ln in err.splitlines() if "look like CT" in ln]
    assert rc == 0 and len(lines) == 2
    for name in ("moving_ct", "second_ct"):
        assert json.loads((tmp_path / "r" / name / "report.json").read_text())["warnings"] == [
            lines[0][len("svreg: warning: "):]]


def test_warnings_of_reading_the_images_are_in_each_pairs_report(tiny_pair, tmp_path: Path, capsys) -> None:
    """A fixed image that stores no orientation (NIfTI sform and qform codes 0), read once for a batch of two pairs:
    its warning is printed for each pair and kept in each report.json, where the registration's own warnings are.
    Before, warnings given while reading the images went to stderr only, once."""
    fixed = nib.load(str(tiny_pair.paths.fixed))
    unplaced = nib.Nifti1Image(np.asarray(fixed.dataobj), fixed.affine)
    unplaced.set_sform(None, code=0)
    unplaced.set_qform(None, code=0)
    nib.save(unplaced, str(tmp_path / "unplaced.nii.gz"))
    shutil.copy(tiny_pair.paths.moving, tmp_path / "second.nii.gz")
    rc, _, err = _main(["register-batch", "--fixed", tmp_path / "unplaced.nii.gz", "--moving", tiny_pair.paths.moving,
                        tmp_path / "second.nii.gz", "-o", tmp_path / "r", "--iterations", "5", "--outputs",
                        "displacement", "--progress", "none"], capsys)
    lines = [ln[len("svreg: warning: "):] for ln in err.splitlines() if "stores no orientation" in ln]
    assert rc == 0 and len(lines) == 2 and lines[0] == lines[1]
    for name in (Path(tiny_pair.paths.moving).name.split(".")[0], "second"):
        assert lines[0] in json.loads((tmp_path / "r" / name / "report.json").read_text())["warnings"]


def test_info_describes_where_images_lie(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """``svreg info``: shape, voxel size, orientation code and RAS extent of the voxel centres as nibabel gives them,
    for NIfTI and NRRD alike, and the share of the first image's foreground in each other's field of view."""
    p = tiny_pair.paths
    far = tiny_pair.moving_affine.copy()
    far[0, 3] += 500.0
    geo.save_nifti(tiny_pair.moving, far, tmp_path / "far.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(p.moving)), str(tmp_path / "moving.nrrd"))
    rc, out, _ = _main(["info", p.fixed, tmp_path / "moving.nrrd", tmp_path / "far.nii.gz", "--json"], capsys)
    assert rc == 0
    fixed, moving, far_entry = json.loads(out)
    for entry, path in ((fixed, p.fixed), (moving, p.moving)):
        nii = nib.load(str(path))
        corners = nib.affines.apply_affine(nii.affine, np.array(list(np.ndindex(2, 2, 2))) * (np.array(nii.shape) - 1))
        assert entry["shape"] == list(nii.shape) and entry["orientation"] == "".join(nib.aff2axcodes(nii.affine))
        np.testing.assert_allclose(entry["spacing_mm"], nib.affines.voxel_sizes(nii.affine), atol=1e-5)
        np.testing.assert_allclose(entry["ras_min_mm"], corners.min(0), atol=1e-3)
        np.testing.assert_allclose(entry["ras_max_mm"], corners.max(0), atol=1e-3)
        assert entry["value_max"] == pytest.approx(float(np.max(nii.get_fdata())), rel=1e-6)
    assert moving["first_foreground_inside"] > 0.9 and far_entry["first_foreground_inside"] == 0.0
    rc, out, _ = _main(["info", p.fixed, tmp_path / "far.nii.gz"], capsys)
    lines = out.strip().split("\n")
    assert rc == 0 and len(lines) == 3 and lines[0].startswith(f"{p.fixed}: {' x '.join(map(str, fixed['shape']))} "
                                                               f"voxels of 6 x 6 x 6 mm, {fixed['orientation']}")
    assert lines[2].startswith(f"0.0 % of {p.fixed}'s foreground lies in the field of view of")
    rc, _, err = _main(["info", tmp_path / "nowhere.nrrd"], capsys)
    _assert_plain_error(rc, err, "nowhere.nrrd: file not found")


def test_info_describes_an_image_whose_voxels_register_refuses(geo, tiny_pair, tmp_path: Path, capsys) -> None:
    """An image with NaN voxels or a constant one, which svreg register refuses: svreg info (the tool to find out
    why) still gives its geometry, and the reason instead of its value range."""
    p = tiny_pair.paths
    holes = np.array(tiny_pair.moving, dtype=np.float32)
    holes[0, 0, 0] = np.nan
    geo.save_nifti(holes, tiny_pair.moving_affine, tmp_path / "nan.nii.gz")
    geo.save_nifti(np.ones_like(holes), tiny_pair.moving_affine, tmp_path / "flat.nii.gz")
    rc, out, _ = _main(["info", p.fixed, tmp_path / "nan.nii.gz", tmp_path / "flat.nii.gz", p.moving, "--json"],
                       capsys)
    fixed, nan, flat, moving = json.loads(out)
    assert rc == 0 and "problem" not in fixed and "first_foreground_inside" in moving
    for entry in (nan, flat):
        assert entry["shape"] == list(holes.shape) and "value_min" not in entry
        assert "first_foreground_inside" not in entry
        np.testing.assert_allclose(entry["ras_min_mm"], moving["ras_min_mm"])
    assert "NaN" in nan["problem"]
    rc, out, _ = _main(["info", tmp_path / "nan.nii.gz", p.moving], capsys)
    first, second = out.strip().split("\n")  # no overlap line: the first image's foreground is unknown
    assert rc == 0 and first.startswith(f"{tmp_path / 'nan.nii.gz'}: ") and "; cannot be registered: " in first
    assert second.startswith(f"{p.moving}: ") and "; values " in second


def test_a_folder_without_dicom_is_refused_in_svreg_words_only(tmp_path: Path, capfd) -> None:
    """GDCM's own "No Series were found" (printed by ITK on the process's stderr) is not shown: one svreg line."""
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["info", str(tmp_path)]) == 2
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [f"svreg: error: {tmp_path.name}: {tmp_path} is a folder without a DICOM "
                                        "series; give an image file or a folder holding the DICOM files of one series."]


def test_info_describes_an_output_folder(full_run, tiny_pair, fast_preset, tmp_path: Path, capsys) -> None:
    """An svreg output folder: the images, the method and the metrics of its report.json, then the transform its
    files hold (the same steps as describing its transform file alone); a folder without report.json is not one."""
    report = json.loads((full_run.out / "report.json").read_text())
    rc, out, _ = _main(["info", full_run.out, "--json"], capsys)
    (entry,) = json.loads(out)
    assert rc == 0 and entry["svreg_output"]["method"] == "pairwise"
    assert entry["svreg_output"]["moving"] == report["inputs"]["moving"]["path"]
    assert entry["svreg_output"]["metrics"]["dice_mean"] == report["metrics"]["dice_mean"]
    rc, out, _ = _main(["info", full_run.out / "transform.h5", "--json"], capsys)
    assert [s["type"] for s in json.loads(out)[0]["transform"]] == ["displacement field", "linear"]
    assert [s["type"] for s in entry["transform"]] == ["displacement field"]  # the folder's displacement.nii.gz
    rc, out, _ = _main(["info", full_run.out], capsys)
    assert rc == 0 and out.startswith(f"{full_run.out}: svreg output: {report['inputs']['moving']['path']} "
                                      f"registered to {report['inputs']['fixed']['path']} in ")
    assert f"mean Dice {report['metrics']['dice_mean_before']:.4f} -> {report['metrics']['dice_mean']:.4f}" in out
    assert "; transform of fixed-world to moving-world points (RAS), acting in turn: displacement field on " in out
    # its displacement files alone (the ITK/ANTs layout svreg apply takes) are transforms, not 5-D images to refuse
    for name in ("displacement.nii.gz", "inverse_displacement.nii.gz"):
        rc, out, err = _main(["info", full_run.out / name, "--json"], capsys)
        field = nib.load(str(full_run.out / name))
        ((step,),) = [e["transform"] for e in json.loads(out)]
        assert rc == 0 and err == "" and step["type"] == "displacement field"
        assert step["shape"] == list(field.shape[:3])
        np.testing.assert_allclose(step["max_mm"], np.linalg.norm(field.get_fdata(), axis=-1).max(), atol=1e-4)
    rc, out, _ = _main(["info", full_run.out / "displacement.nii.gz"], capsys)
    assert rc == 0 and "displacement field on " in out and entry["transform"][0] == json.loads(
        _main(["info", full_run.out / "displacement.nii.gz", "--json"], capsys)[1])[0]["transform"][0]
    # a run that kept no transform file (--outputs warped) is still described
    p = tiny_pair.paths
    assert main(["register", str(p.fixed), str(p.moving), "-o", str(tmp_path / "w"), "--preset", str(fast_preset),
                 "--iterations", "5", "--outputs", "warped", "--progress", "none"]) == 0
    capsys.readouterr()
    rc, out, _ = _main(["info", tmp_path / "w"], capsys)
    assert rc == 0 and out.strip().endswith("; no transform file kept (the run's --outputs left them out)")
    rc, _, err = _main(["apply", tmp_path / "w", p.moving, "-o", tmp_path / "a.nii.gz"], capsys)
    _assert_plain_error(rc, err, "kept no transform (its run's --outputs left out displacement and transform)")
    # a malformed report.json (inputs not an object; metrics without NDV): one line, not a traceback
    good = json.loads((tmp_path / "w" / "report.json").read_text())
    for bad in ({**good, "inputs": []}, {**good, "metrics": {"folding_percent": 0.0}}):
        (tmp_path / "w" / "report.json").write_text(json.dumps(bad))
        rc, _, err = _main(["info", tmp_path / "w"], capsys)
        _assert_plain_error(rc, err, "its report.json is unreadable; the folder is not a complete svreg output.")


def test_info_lists_each_dicom_series_of_a_study_folder(geo, tmp_path: Path, capsys) -> None:
    """A folder of two DICOM series is described series by series, each named by a file that reads it (then given
    to ``svreg info`` alone: the same series); the JSON names each series."""
    affine = geo.make_affine(np.diag([0.8, 0.8, 2.0]), [-10.0, 20.0, 30.0])
    data = (np.arange(6 * 5 * 4).reshape(6, 5, 4) * 9 - 100).astype(np.int16)
    folder = geo.dicom_series(tmp_path / "study", data, affine, description="CT arterial")
    geo.dicom_series(folder, data[:, :, :3], affine, series="1.2.826.0.1.3680043.8.498.7", description="CT venous")
    rc, out, _ = _main(["info", folder, "--json"], capsys)
    entries = json.loads(out)
    assert rc == 0 and [(e["dicom_series"]["description"], e["shape"]) for e in entries] == [
        ("CT arterial", [6, 5, 4]), ("CT venous", [6, 5, 3])]
    assert entries[1]["dicom_series"] == {"uid": "1.2.826.0.1.3680043.8.498.7", "description": "CT venous",
                                          "modality": "CT", "files": 3}
    rc, out, _ = _main(["info", folder], capsys)
    lines = out.strip().split("\n")
    assert rc == 0 and len(lines) == 3 and lines[0].endswith("; DICOM series 'CT arterial' (CT, 4 files, e.g. "
                                                              f"{Path(entries[0]['path']).name})")
    rc, out, _ = _main(["info", entries[1]["path"], "--json"], capsys)
    assert rc == 0 and json.loads(out)[0]["shape"] == [6, 5, 3]


def test_turned_header_is_aligned_with_a_warning_in_the_report(geo, fast_preset, tmp_path: Path, capsys) -> None:
    """A moving brain whose header is turned 130° registers through the pose search: one warning line on stderr,
    the same sentence in report.json's ``warnings``, and the labels aligned; ``--no-pose-search`` leaves them
    apart."""
    shape, affine = geo.brain_grid(4.0)
    data = geo.sample_template(Grid(shape, affine).world_points(), 1.5)
    centre = Grid(shape, affine).corner_points().mean(0)
    turn = np.eye(4)
    turn[:3, :3] = geo.rotation([0.3, -1.0, 0.4], 130.0)
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    fixed = geo.save_nifti(data, affine, tmp_path / "fixed.nii.gz")
    labels = geo.save_nifti(geo.tissue_labels(data), affine, tmp_path / "labels.nii.gz")
    moving = geo.save_nifti(data, turn @ affine, tmp_path / "moving.nii.gz")
    moving_labels = geo.save_nifti(geo.tissue_labels(data), turn @ affine, tmp_path / "moving_labels.nii.gz")
    common = [fixed, moving, "--fixed-labels", labels, "--moving-labels", moving_labels, "--preset", fast_preset,
              "--progress", "none", "--outputs", "labels"]
    rc, _, err = _main(["register", *common, "-o", tmp_path / "out"], capsys)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 0 and report["metrics"]["dice_mean"] > 0.85, report["metrics"]
    (warning,) = report["warnings"]
    assert warning.startswith("the images' orientations disagree by about 130°")
    assert [line for line in err.strip().split("\n") if "fast.json" not in line] == [f"svreg: warning: {warning}"]
    rc, _, err = _main(["register", *common, "-o", tmp_path / "plain", "--no-pose-search"], capsys)
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert rc == 0 and plain["metrics"]["dice_mean"] < 0.5 and "warnings" not in plain
    assert "orientations" not in err
    assert plain["parameters"]["pose_search"] is False and report["parameters"]["pose_search"] is True


def test_info_describes_transform_files_in_ras(tmp_path: Path, capsys) -> None:
    """An ITK file holding a 30° rotation about LPS x (L) and a translation of LPS (15, -10, 5) mm, applied after a
    constant displacement of LPS (2, 0, 0) mm: in RAS the rotation is 30° about (-1, 0, 0) (x and y negated:
    R_x(30°) becomes R_x(-30°)), the translation (-15, 10, 5) mm, and the field's vectors 2 mm long."""
    euler = sitk.Euler3DTransform()
    euler.SetRotation(np.radians(30.0), 0.0, 0.0)
    euler.SetTranslation((15.0, -10.0, 5.0))
    sitk.WriteTransform(euler, str(tmp_path / "rigid.tfm"))
    field = sitk.Compose(*(sitk.Image([4, 5, 6], sitk.sitkFloat64) + v for v in (2.0, 0.0, 0.0)))
    field.SetSpacing((2.0, 2.0, 3.0))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(euler)
    composite.AddTransform(sitk.DisplacementFieldTransform(field))  # ITK applies the last added first
    sitk.WriteTransform(composite, str(tmp_path / "both.h5"))
    rc, out, _ = _main(["info", tmp_path / "rigid.tfm", tmp_path / "both.h5", "--json"], capsys)
    rigid, both = json.loads(out)
    assert rc == 0 and [step["type"] for step in both["transform"]] == ["displacement field", "linear"]
    for linear in (rigid["transform"][0], both["transform"][1]):
        assert linear["rotation_degrees"] == pytest.approx(30.0, abs=1e-3)
        np.testing.assert_allclose(linear["rotation_axis_ras"], [-1.0, 0.0, 0.0], atol=1e-4)
        np.testing.assert_allclose(linear["translation_mm"], [-15.0, 10.0, 5.0], atol=1e-4)
        np.testing.assert_allclose(linear["scales"], [1.0, 1.0, 1.0], atol=1e-5)
    moved = both["transform"][0]
    assert moved["shape"] == [4, 5, 6] and moved["spacing_mm"] == [2.0, 2.0, 3.0]
    assert moved["max_mm"] == pytest.approx(2.0) and moved["mean_mm"] == pytest.approx(2.0)
    rc, out, _ = _main(["info", tmp_path / "rigid.tfm"], capsys)
    assert rc == 0 and out.strip() == (
        f"{tmp_path / 'rigid.tfm'}: transform of fixed-world to moving-world points (RAS), acting in turn: linear: "
        "rotation 30.00° about (-1.00, 0.00, 0.00), scales 1.000 / 1.000 / 1.000, translation (-15.00, 10.00, 5.00) mm")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == "svreg 0.1.0"


def test_crop_fixed_registers_the_box_only(geo, tiny_pair, fast_preset, tmp_path) -> None:
    """``--crop-fixed``: every output on the fixed voxels inside the RAS box, read back by nibabel."""
    p = tiny_pair.paths
    fixed = nib.load(str(p.fixed))
    points = nib.affines.apply_affine(fixed.affine, np.indices(fixed.shape).reshape(3, -1).T)
    low, high = points.min(0) + 8.0, points.max(0) - 8.0  # 8 mm in from each side of the 6 mm grid
    out = tmp_path / "cropped"
    proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--fixed-labels", p.fixed_labels,
                "--moving-labels", p.moving_labels, "--preset", fast_preset, "--device", "cpu", "--progress", "none",
                "--crop-fixed", *[f"{v:g}" for v in (*high, *low)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    inside = np.all((points >= low) & (points <= high), axis=1).reshape(fixed.shape)
    index = np.argwhere(inside)
    start, stop = index.min(0), index.max(0) + 1
    expected = nib.affines.from_matvec(fixed.affine[:3, :3], nib.affines.apply_affine(fixed.affine, start))
    for name in ("warped.nii.gz", "displacement.nii.gz", "jacobian.nii.gz", "regularization.nii.gz",
                 "warped_labels.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape[:3] == tuple(stop - start), name
        np.testing.assert_allclose(img.affine, expected, atol=1e-4, err_msg=name)
    report = json.loads((out / "report.json").read_text())
    assert report["crop_fixed_ras_mm"] == [list(high), list(low)]
    assert report["inputs"]["fixed"]["shape"] == list(stop - start)
    assert tuple(stop - start) != fixed.shape
    # a box beside the image: one line before any work, nothing written
    far = _run(geo, "register", p.fixed, p.moving, "-o", tmp_path / "far", "--crop-fixed", "900", "900", "900",
               "950", "950", "950", "--progress", "none", cwd=tmp_path)
    assert far.returncode == 2 and "misses the fixed image" in far.stderr and not (tmp_path / "far").exists()


def test_landmarks_outside_their_image_are_warned_about(tiny_pair, tmp_path, capsys) -> None:
    """Fixed landmarks in LPS read as RAS (a .csv: x, y negated) land outside the fixed image: a warning says how
    many and asks for their space and frame, on stderr and in report.json; the TRE is still given."""
    p = tiny_pair.paths
    fixed = load_image(p.fixed)
    corner = nib.affines.apply_affine(fixed.affine, [1, 1, 1])
    points = np.array([corner, corner * [-1, -1, 1] + [400.0, 400.0, 0.0]])  # the second one far away
    for name in ("f.csv", "m.csv"):
        (tmp_path / name).write_text("x,y,z\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in points.tolist()))
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--fixed-landmarks", tmp_path / "f.csv",
                        "--moving-landmarks", tmp_path / "m.csv", "--iterations", "5", "--outputs", "displacement",
                        "--device", "cpu", "--progress", "none"], capsys)
    expected = [f"1 of 2 {side} landmarks lie outside the {side} image: are they in its space and frame (a .csv is "
                "read as RAS: x towards the right, y to the front)?" for side in ("fixed", "moving")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    warned = [ln.removeprefix("svreg: warning: ") for ln in err.splitlines() if "landmarks" in ln]
    assert rc == 0 and warned == expected
    assert report["warnings"] == expected and report["metrics"]["tre"]["count"] == 2


def test_crop_box_holding_none_of_the_fixed_mask_or_labels_is_named(geo, tiny_pair, tmp_path, capsys) -> None:
    """A ``--crop-fixed`` box beside the fixed mask (or every fixed label): one line saying so, before any work.
    Before, the cropped mask was refused as 'empty' (it is not), and cropped labels scored nothing."""
    p = tiny_pair.paths
    fixed = load_image(p.fixed)
    mask = np.zeros(fixed.shape, np.uint8)
    mask[:3, :3, :3] = 1  # a corner
    geo.save_nifti(mask, fixed.affine, tmp_path / "corner.nii.gz")
    geo.save_nifti(mask * 4, fixed.affine, tmp_path / "corner_labels.nii.gz")
    far = nib.affines.apply_affine(fixed.affine, np.array(fixed.shape) - 1)  # the opposite corner's centre
    near = nib.affines.apply_affine(fixed.affine, np.array(fixed.shape) - 6)
    box = [f"{v:g}" for v in (*near, *far)]
    for extra, what in ((["--fixed-mask", tmp_path / "corner.nii.gz"], "fixed mask"),
                        (["--fixed-labels", tmp_path / "corner_labels.nii.gz", "--moving-labels", p.moving_labels],
                         "fixed label map")):
        rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "out", "--crop-fixed", *box, *extra,
                            "--device", "cpu", "--progress", "none"], capsys)
        _assert_plain_error(rc, err, f"the --crop-fixed box holds none of the {what}'s non-zero voxels")
        assert not (tmp_path / "out").exists()


def test_landmarks_give_the_target_registration_error(geo, tiny_pair, fast_preset, tmp_path, capsys) -> None:
    """``--fixed-landmarks``/``--moving-landmarks``: the report's TRE, before and after, equals the distances
    computed with SimpleITK's reading of transform.h5 (LPS inside ITK files)."""
    p = tiny_pair.paths
    fixed = nib.load(str(p.fixed))
    ijk = np.random.default_rng(3).integers(2, np.asarray(fixed.shape) - 2, (12, 3))
    x = nib.affines.apply_affine(fixed.affine, ijk)
    y = x + np.random.default_rng(4).normal(0.0, 2.0, x.shape)  # the moving points: any correspondence
    (tmp_path / "f.csv").write_text("x,y,z\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in x.tolist()))
    fcsv = "# CoordinateSystem = LPS\n" + "".join(f"p{n},{a!r},{b!r},{c!r},0,0,0,1,1,1,0,p{n},,\n"
                                                   for n, (a, b, c) in enumerate(geo.lps(y).tolist()))
    (tmp_path / "m.fcsv").write_text(fcsv)
    out = tmp_path / "out"
    rc, stdout, err = _main(["register", p.fixed, p.moving, "-o", out, "--preset", fast_preset, "--device", "cpu",
                             "--progress", "none", "--fixed-landmarks", tmp_path / "f.csv",
                             "--moving-landmarks", tmp_path / "m.fcsv"], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    # the landmark files are recorded with the other inputs (they were left out)
    assert report["inputs"]["fixed_landmarks"] == {"path": str(tmp_path / "f.csv")}
    assert report["inputs"]["moving_landmarks"] == {"path": str(tmp_path / "m.fcsv")}
    h5 = sitk.ReadTransform(str(out / "transform.h5"))
    mapped = geo.lps(np.array([h5.TransformPoint(tuple(q)) for q in geo.lps(x)]))
    after, before = np.linalg.norm(mapped - y, axis=1), np.linalg.norm(x - y, axis=1)
    assert m["tre"]["count"] == m["tre_before"]["count"] == 12
    assert m["tre"]["mean"] == pytest.approx(after.mean(), abs=2e-3)
    assert m["tre"]["max"] == pytest.approx(after.max(), abs=5e-3)
    assert m["tre_before"]["mean"] == pytest.approx(before.mean(), abs=1e-9)
    assert f"mean TRE {before.mean():.2f} -> {after.mean():.2f} mm" in stdout and "landmarks lie outside" not in err
    # one point short, or one file only: one plain line before any work, nothing written
    (tmp_path / "short.csv").write_text("x,y,z\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in x[:-1].tolist()))
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "bad", "--fixed-landmarks",
                        tmp_path / "f.csv", "--moving-landmarks", tmp_path / "short.csv", "--progress", "none"], capsys)
    _assert_plain_error(rc, err, "same number", "12 fixed and 11 moving")
    rc, _, err = _main(["register", p.fixed, p.moving, "-o", tmp_path / "bad", "--fixed-landmarks",
                        tmp_path / "f.csv", "--progress", "none"], capsys)
    _assert_plain_error(rc, err, "both --fixed-landmarks and --moving-landmarks")
    assert not (tmp_path / "bad").exists()


def test_info_tells_a_header_nibabel_fixed_once_in_svregs_words(geo, tmp_path: Path) -> None:
    """An image and a displacement field with voxel sizes 0 in the header: ``svreg info`` printed nibabel's bare
    'pixdim[1,2,3] should be non-zero' line besides svreg's warning (the field's header is sniffed before it is
    read); now each file gets svreg's warning alone."""
    for name, shape in (("image", (4, 4, 4)), ("field", (4, 4, 4, 1, 3))):
        img = nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4))
        img.header["pixdim"][1:4] = 0
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
    proc = subprocess.run(geo.svreg_command("info", "image.nii.gz", "field.nii.gz"), cwd=str(tmp_path),
                          env={**geo.child_env(), "PYTHONWARNINGS": "default"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = [f"svreg: warning: {name}.nii.gz: nibabel corrected its header on reading it (pixdim[1,2,3] should "
                "be non-zero; setting 0 dims to 1); check that it reads as intended (svreg info)."
                for name in ("field", "image")]
    assert sorted(proc.stderr.splitlines()) == expected, proc.stderr
