"""Flags of the ``svreg`` commands that the other arguments would make do nothing: each is refused in one plain
line naming it, before any image is read."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import SimpleITK as sitk

from svreg_core.cli import main


def _error_line(argv: list, capsys) -> str:
    """The one ``svreg: error:`` line of a refused command (status 2, no traceback)."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip("\n").split("\n") if not re.match(r"svreg: [^:]+ \d+ %", ln)]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("svreg: error: "), err
    return lines[0]


@pytest.mark.parametrize(("name", "flags", "named"), [
    ("p.csv", ["--labels"], "--labels"),
    ("p.csv", ["--interpolation", "nearest"], "--interpolation"),
    ("p.csv", ["--reference", "damaged.nii.gz"], "--reference"),
    ("p.fcsv", ["--coordinates", "lps"], "--coordinates"),
    ("damaged.nii.gz", ["--coordinates", "lps", "--reference", "damaged.nii.gz"], "--coordinates"),
])
def test_apply_refuses_flags_the_input_kind_ignores(tmp_path: Path, capsys, name: str, flags: list,
                                                   named: str) -> None:
    """Points were mapped whatever --labels, --interpolation or --reference said, and an image was resampled whatever
    --coordinates said (a .fcsv's frame is its own): silently. The flag is now named, before anything is read (the
    damaged image shows it)."""
    sitk.WriteTransform(sitk.TranslationTransform(3, (5.0, 0.0, 0.0)), str(tmp_path / "shift.tfm"))
    (tmp_path / "p.csv").write_text("x,y,z\n0,0,0\n")
    (tmp_path / "p.fcsv").write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
                                     "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                                     "1,0,0,0,0,0,0,1,1,1,0,F-1,,\n")
    (tmp_path / "damaged.nii.gz").write_bytes(b"not an image")
    out = tmp_path / ("out" + name[1:] if not name.startswith("damaged") else "out.nii.gz")
    line = _error_line(["apply", tmp_path / "shift.tfm", tmp_path / name, "-o", out,
                        *[tmp_path / f if f.endswith(".nii.gz") else f for f in flags]], capsys)
    assert f"{named} is for" in line and f"leave {named} out" in line, line
    assert not out.exists()


def test_apply_maps_csv_points_in_the_frame_coordinates_gives(tmp_path: Path, capsys) -> None:
    sitk.WriteTransform(sitk.TranslationTransform(3, (5.0, 0.0, 0.0)), str(tmp_path / "shift.tfm"))
    (tmp_path / "p.csv").write_text("x,y,z\n0,0,0\n")
    for frame, x in (("ras", "-5"), ("lps", "5")):  # the file's LPS shift of +5 in x is -5 in RAS x
        out = tmp_path / f"{frame}.csv"
        assert main(["apply", str(tmp_path / "shift.tfm"), str(tmp_path / "p.csv"), "-o", str(out),
                     "--coordinates", frame]) == 0
        assert float(out.read_text().splitlines()[1].split(",")[0]) == pytest.approx(float(x))
        assert capsys.readouterr().out == f"Mapped 1 point: {out}\n"  # not "1 points"


def test_register_refuses_a_label_interpolation_without_moving_labels(tmp_path: Path, capsys) -> None:
    """``--label-interpolation nearest`` without ``--moving-labels`` (a script's flag for another cohort) did nothing,
    silently; now refused, before the images are read (damaged here)."""
    for name in ("f.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"not an image")
    line = _error_line(["register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "-o", tmp_path / "out",
                        "--label-interpolation", "nearest"], capsys)
    assert "--label-interpolation chooses how the moving labels are warped; it needs --moving-labels" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--fixed-labels", "FL"], "--fixed-labels needs --moving-labels"),
    (["--labels", "1"], "--labels chooses the labels Dice and HD95 score; it needs --fixed-labels and --moving-labels"),
    (["--fixed-labels", "FL", "--labels", "1", "2"], "--fixed-labels needs --moving-labels"),
    (["--label-interpolation", "nearest"], "--label-interpolation chooses how the moving labels are warped"),
])
def test_preview_refuses_label_flags_that_would_do_nothing(tiny_pair, tiny_checkpoints, capsys, flags: list,
                                                           words: str) -> None:
    """``svreg preview`` took ``--labels`` without label maps, fixed labels without moving labels (read, cropped,
    then never usable: every label_metrics request refused) and ``--label-interpolation`` without moving labels
    silently; refused as ``svreg register`` refuses them, before the images are read."""
    p = tiny_pair.paths
    argv = ["preview", p.fixed, p.moving, "--model", tiny_checkpoints.hyper, "--device", "cpu",
            *[p.fixed_labels if f == "FL" else f for f in flags]]
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip("\n").split("\n")
    assert rc == 2 and len(lines) == 1 and words in lines[0], captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [e["event"] for e in events] == ["error"], events  # no "load" (reading images) first


def test_register_refuses_the_landmarks_of_one_image_before_reading_the_images(tmp_path: Path, capsys) -> None:
    """``--fixed-landmarks`` without ``--moving-landmarks`` was refused only after the images were read (damaged
    here: they came first)."""
    for name in ("f.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"not an image")
    (tmp_path / "l.csv").write_text("x,y,z\n0,0,0\n")
    line = _error_line(["register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "-o", tmp_path / "out",
                        "--moving-landmarks", tmp_path / "l.csv"], capsys)
    assert "give both --fixed-landmarks and --moving-landmarks (corresponding points), or neither" in line, line
    assert not (tmp_path / "out").exists()


def test_an_empty_output_path_is_refused(tiny_pair, tmp_path: Path, capsys, monkeypatch) -> None:
    """``-o ""`` (an unset variable in a script): register-batch wrote its pair folders and summary into the current
    folder, and apply said "output file . already exists"; both now say the path is empty, and write nothing."""
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    line = _error_line(["register-batch", "--fixed", p.fixed, "--moving", p.moving, "-o", "", "--level-spacings", "12",
                        "--iterations", "3", "--no-affine", "--device", "cpu"], capsys)
    assert "the output folder path (-o) is empty" in line, line
    sitk.WriteTransform(sitk.TranslationTransform(3, (5.0, 0.0, 0.0)), str(tmp_path / "shift.tfm"))
    line = _error_line(["apply", tmp_path / "shift.tfm", p.moving, "-o", "", "--reference", p.fixed], capsys)
    assert "the output file path (-o) is empty" in line, line
    assert sorted(f.name for f in tmp_path.iterdir()) == ["shift.tfm"]


@pytest.mark.parametrize("bad", ["--initial-transform", "--fixed-landmarks"])
def test_a_bad_transform_or_point_file_is_refused_before_the_images_are_read(tmp_path: Path, capsys,
                                                                            bad: str) -> None:
    """An unreadable --initial-transform or landmark file was refused only after the images were read (a whole DICOM
    series, say); the small files are now read first (the damaged images show which came first)."""
    for name in ("f.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"not an image")
    (tmp_path / "l.csv").write_text("x,y,z\n0,0,0\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bad.tfm").write_text("not a transform\n")
    files = {"--initial-transform": ["--initial-transform", tmp_path / "bad.tfm"],
             "--fixed-landmarks": ["--fixed-landmarks", tmp_path / "bad.csv", "--moving-landmarks", tmp_path / "l.csv"]}
    line = _error_line(["register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "-o", tmp_path / "out",
                        "--device", "cpu", *files[bad]], capsys)
    assert "bad." in line and "f.nii.gz" not in line, line


@pytest.mark.parametrize(("flags", "words"), [
    (["--iterations", "0"], "--iterations 0 is out of range"),
    (["--level-spacings", "-4", "--iterations", "3"], "--level-spacings -4 is out of range"),
    (["--control-spacing", "0"], "--control-spacing 0 is out of range"),
    (["--alpha-prime", "-1"], "--alpha-prime -1 is out of range"),
    (["--lambda-max", "-1"], "--lambda-max -1 is out of range"),
])
def test_an_out_of_range_value_is_named_by_its_flag(tmp_path: Path, capsys, flags: list, words: str) -> None:
    """``--control-spacing 0`` was refused as "min_control_spacing 0 is out of range", ``--passes 0`` as
    "prediction_passes 0": the parameters' internal names, which the user never typed. The flag is named now; a
    preset file's value keeps the name it has there."""
    for name in ("f.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"not an image")
    line = _error_line(["register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "-o", tmp_path / "out",
                        "--device", "cpu", *flags], capsys)
    assert line.startswith(f"svreg: error: {words}: it must lie in"), line
    (tmp_path / "preset.json").write_text(json.dumps({"parameters": {"min_control_spacing": 0}}))
    line = _error_line(["register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "-o", tmp_path / "out",
                        "--device", "cpu", "--preset", tmp_path / "preset.json"], capsys)
    assert "min_control_spacing 0 is out of range" in line and "--control-spacing" not in line, line


def test_preview_names_the_passes_flag(tiny_pair, tiny_checkpoints, capsys) -> None:
    p = tiny_pair.paths
    rc = main([str(a) for a in ("preview", p.fixed, p.moving, "--model", tiny_checkpoints.hyper, "--device", "cpu",
                                "--passes", "0")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("svreg: error: --passes 0 is out of range"), err


@pytest.mark.parametrize("command", ["register", "preview"])
def test_affine_and_no_affine_together_are_refused(tmp_path: Path, capsys, command: str) -> None:
    """``--affine --no-affine`` ran with whichever came last, without a word (a script appending a flag to a
    user's); the two are now refused together in argparse's one error line, before anything is read."""
    with pytest.raises(SystemExit) as exit_:
        main([command, str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "o"),
              "--affine", "--no-affine"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines()[-1] == (
        f"svreg {command}: error: argument --no-affine: not allowed with argument --affine"), err
    assert sorted(tmp_path.iterdir()) == []
