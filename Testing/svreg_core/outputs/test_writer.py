"""``write_outputs``: the full file set, its contents, the report, and atomic folder replacement."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svreg_core.errors import InputError, OutputError
from svreg_core.image import Image
from svreg_core.metrics import jacobian_determinant
from svreg_core.outputs import OUTPUT_FILES, write_outputs
from svreg_core.outputs.figure import to_ras_array
from svreg_core.outputs.writer import prepare_output_dir


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


def test_report_contents(written) -> None:
    out, report = written
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    m = on_disk["metrics"]
    for key in ("folding_percent", "ndv_percent", "sdlogj", "jacobian_min", "dice_mean", "dice", "hd95_mean", "hd95"):
        assert key in m, key
    assert set(m["dice"]) == {"1", "2"} and all(0 <= v <= 1 for v in m["dice"].values())
    assert 0 <= m["folding_percent"] <= 100 and m["sdlogj"] >= 0
    assert on_disk["timing"]["total_s"] >= on_disk["timing"]["outputs_s"] > 0
    assert on_disk["parameters"]["level_spacings"] == [4.0, 2.0]
    assert {"svreg_core", "torch", "numpy", "nibabel", "SimpleITK", "python"} <= set(on_disk["versions"])
    assert on_disk["device"] == "cpu" and on_disk["note"] == "synthetic"
    assert on_disk["label_interpolation"] == "linear"
    assert np.allclose(on_disk["affine_ras"], np.asarray(on_disk["affine_ras"]))


def test_refuses_to_overwrite_then_replaces(synthetic_result, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(OutputError, match="--overwrite"):
        write_outputs(synthetic_result, out)
    assert (out / "keep.txt").read_text() == "old"
    write_outputs(synthetic_result, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "report.json").is_file()
    assert _siblings(out) == ["out"]


def test_failure_leaves_no_folder_and_keeps_the_old_one(synthetic_result, tmp_path: Path, monkeypatch) -> None:
    import svreg_core.outputs.writer as writer

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "write_report_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(synthetic_result, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        write_outputs(synthetic_result, old, overwrite=True)
    assert _siblings(old) == ["old"] and (old / "keep.txt").read_text() == "old"


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
        with pytest.raises(OutputError, match="permission"):
            prepare_output_dir(parent / "out", overwrite=False)
    finally:
        parent.chmod(0o755)


def test_figure_shows_images_in_ras_order(geo) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    lps_like = np.diag([-1.0, -1.0, 1.0, 1.0])  # i runs to the left, j to the back
    np.testing.assert_array_equal(to_ras_array(Image(data, lps_like)), data[::-1, ::-1, :])
    permuted = np.eye(4)[[1, 0, 2, 3]]  # i runs anterior, j runs right
    np.testing.assert_array_equal(to_ras_array(Image(data, permuted)), data.transpose(1, 0, 2))
