"""``svreg info`` of the files an ``svreg register`` run writes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from svreg_core.cli import main


def test_info_tells_that_the_inverse_field_maps_moving_to_fixed(tiny_pair, tmp_path: Path, capsys) -> None:
    """``svreg info OUT/inverse_displacement.nii.gz`` called it a "transform of fixed-world to moving-world points",
    as the forward field: the wrong way round for a clinician reading where a moving point lands."""
    p = tiny_pair.paths
    out = tmp_path / "out"
    assert main(["register", str(p.fixed), str(p.moving), "-o", str(out), "--level-spacings", "12", "--iterations",
                 "3", "--no-affine", "--device", "cpu", "--outputs", "displacement", "inverse",
                 "--progress", "none"]) == 0
    capsys.readouterr()
    forward, inverse = (str(out / name) for name in ("displacement.nii.gz", "inverse_displacement.nii.gz"))
    assert main(["info", forward, inverse]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{forward}: transform of fixed-world to moving-world points (RAS), acting in turn: ")
    assert lines[1].startswith(f"{inverse}: transform of moving-world to fixed-world points (RAS; the registration's "
                               "inverse), acting in turn: displacement field on ")
    assert main(["info", forward, inverse, "--json"]) == 0
    assert [e["maps"] for e in json.loads(capsys.readouterr().out)] == ["fixed to moving", "moving to fixed"]


def test_info_help_says_what_the_json_list_holds(capsys) -> None:
    """``svreg info --help`` said --json prints "one object per image"; transforms and output folders have theirs
    too, after the images'."""
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "print a JSON list: one object per image, then one per transform file or output folder" in text


def test_info_gives_a_headers_warning_once_for_an_image_it_cannot_use(tmp_path: Path, capsys) -> None:
    """An image in metres (NIfTI xyzt_units) whose voxels svreg refuses (NaN): its geometry is still described, read
    a second time, and the conversion warning was printed twice."""
    import nibabel as nib
    import numpy as np

    data = np.ones((6, 6, 6), np.float32)
    data[0, 0, 0] = np.nan
    image = nib.Nifti1Image(data, np.diag([0.001, 0.001, 0.001, 1.0]))
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "m.nii.gz")
    assert main(["info", str(tmp_path / "m.nii.gz")]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("gives its voxel sizes and position in meters") == 1, captured.err
    assert captured.out.startswith(f"{tmp_path / 'm.nii.gz'}: 6 x 6 x 6 voxels of 1 x 1 x 1 mm, RAS;")
    assert "cannot be registered: m.nii.gz contains 1 NaN or infinite voxels" in captured.out, captured.out
