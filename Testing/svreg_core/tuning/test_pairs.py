"""Validation pairs of ``svreg tune``: folders, list files, landmarks, and their errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from svreg_core.errors import InputError
from svreg_core.tuning.pairs import discover_pairs

ROLES = ("fixed", "moving", "fixed_labels", "moving_labels")

# ----------------------------------------------------------------------------------------- pairs


def _fake_pair(folder: Path, stems: tuple[str, ...] = ROLES, suffix: str = ".nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in stems:
        (folder / f"{s}{suffix}").write_bytes(b"x")
    return folder


def test_pairs_from_folder_list_files_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "val"
    _fake_pair(root / "b")
    _fake_pair(root / "a", ("fixed_image", "moving_image", "fixed_seg", "moving_seg"))
    (root / ".hidden").mkdir()
    (root / "notes").mkdir()
    pairs = discover_pairs(root)
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].fixed_labels.name == "fixed_seg.nii.gz"
    assert [p.name for p in discover_pairs(root / "b")] == ["b"]  # a folder that is itself one pair
    slicer = _fake_pair(tmp_path / "slicer", ROLES, ".NRRD")  # NRRD (3D Slicer's format), any case
    (slicer / "fixed_labels.NRRD").rename(slicer / "fixed_labels.mha")  # MetaImage
    (slicer / "volume.raw").write_bytes(b"x")  # a detached header's data: not an image
    (pair,) = discover_pairs(slicer)
    assert (pair.fixed.name, pair.fixed_labels.name) == ("fixed.NRRD", "fixed_labels.mha")

    csv = tmp_path / "list.csv"
    csv.write_text("fixed,moving,fixed_labels,moving_labels\n"
                   "val/a/fixed_image.nii.gz,val/a/moving_image.nii.gz,val/a/fixed_seg.nii.gz,val/a/moving_seg.nii.gz\n")
    (listed,) = discover_pairs(csv)
    assert listed.name == "pair001" and listed.moving == tmp_path / "val/a/moving_image.nii.gz"
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"pairs": [{"name": "x", **{r: str(root / "b" / f"{r}.nii.gz") for r in ROLES}}]}))
    assert [p.name for p in discover_pairs(js)] == ["x"]

    with pytest.raises(InputError, match="not found"):
        discover_pairs(tmp_path / "nowhere")
    _fake_pair(root / "c", ("fixed", "moving", "fixed_labels"))
    with pytest.raises(InputError, match=r"pair folder .*c lacks moving_labels"):
        discover_pairs(root)
    shutil.rmtree(root / "c")
    (root / "b" / "moving.nii.gz").unlink()
    with pytest.raises(InputError, match=r"pair 'x': moving file not found"):
        discover_pairs(js)
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,moving\na,b\n")
    with pytest.raises(InputError, match="missing: fixed_labels, moving_labels"):
        discover_pairs(bad)
    with pytest.raises(InputError, match="holds no pairs"):
        discover_pairs(tmp_path / "val" / "notes")


def test_pairs_with_landmarks(tmp_path: Path) -> None:
    root = tmp_path / "val"
    _fake_pair(root / "a", ("fixed", "moving"))
    (root / "a" / "fixed_points.csv").write_text("x,y,z\n1,2,3\n4,5,6\n")
    (root / "a" / "moving_landmarks.csv").write_text("x,y,z\n1.5,2,3\n4,5.5,6\n")
    (pair,) = discover_pairs(root, needs="landmarks")
    assert pair.fixed_landmarks.name == "fixed_points.csv" and pair.fixed_labels is None
    with pytest.raises(InputError, match=r"pair folder .*a lacks fixed_labels\.nii\.gz or fixed_label\.nii\.gz"):
        discover_pairs(root)  # the Dice objective needs label maps
    csv = tmp_path / "list.csv"
    csv.write_text("name,fixed,moving,fixed_landmarks,moving_landmarks\n"
                   "p,val/a/fixed.nii.gz,val/a/moving.nii.gz,val/a/fixed_points.csv,val/a/moving_landmarks.csv\n")
    (listed,) = discover_pairs(csv, needs="landmarks")
    assert listed.moving_landmarks == root / "a" / "moving_landmarks.csv" and listed.moving_labels is None
    with pytest.raises(InputError, match="missing: fixed_labels, moving_labels"):
        discover_pairs(csv)
    (root / "a" / "moving_landmarks.csv").unlink()
    with pytest.raises(InputError, match="lacks moving_landmarks.csv or moving_points.csv"):
        discover_pairs(root, needs="landmarks")


def test_landmark_files_must_correspond(demo_pairs: Path, tmp_path: Path) -> None:
    from svreg_core.tuning.pairs import load_pair

    pair = tmp_path / "p"
    shutil.copytree(demo_pairs / "pair01", pair)
    loaded = load_pair(discover_pairs(pair, needs="landmarks")[0])
    assert loaded.fixed_landmarks.shape == loaded.moving_landmarks.shape == (32, 3)
    lines = (pair / "moving_landmarks.csv").read_text().splitlines()
    (pair / "moving_landmarks.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match=r"pair 'p': .* same number .* \(found 32 fixed and 31 moving\)"):
        load_pair(discover_pairs(pair, needs="landmarks")[0])


def test_label_maps_in_another_axis_order_are_reordered_others_refused(demo_pairs: Path, tmp_path: Path) -> None:
    """A pair's moving label map stored with its axes reversed (its affine adjusted, so the same voxels) loads onto
    the moving grid unchanged; one shifted by a voxel is refused, naming the pair."""
    import nibabel as nib
    import numpy as np

    from svreg_core.tuning.pairs import load_pair

    pair = tmp_path / "p"
    shutil.copytree(demo_pairs / "pair01", pair)
    original = load_pair(discover_pairs(pair)[0])
    nii = nib.load(str(pair / "moving_labels.nii.gz"))
    data = np.asarray(nii.dataobj)
    flip = np.array([[-1.0, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # i -> n - 1 - i
    nib.save(nib.Nifti1Image(data[::-1].copy(), nii.affine @ flip), str(pair / "moving_labels.nii.gz"))
    reordered = load_pair(discover_pairs(pair)[0])
    np.testing.assert_array_equal(reordered.moving_labels.data, original.moving_labels.data)
    np.testing.assert_allclose(reordered.moving_labels.affine, original.moving.affine, atol=1e-4)
    shifted = nii.affine.copy()
    shifted[:3, 3] += nii.affine[:3, 0]
    nib.save(nib.Nifti1Image(data, shifted), str(pair / "moving_labels.nii.gz"))
    with pytest.raises(InputError, match=r"pair 'p': the moving labels .* is not on the grid of the moving image"):
        load_pair(discover_pairs(pair)[0])
