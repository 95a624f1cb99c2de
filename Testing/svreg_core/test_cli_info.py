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
