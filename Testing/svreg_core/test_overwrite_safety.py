"""``svreg register -o FOLDER --overwrite`` never removes anything but svreg's own earlier output.

Every test surrounds the output location with canary files and compares the whole tree (names,
file contents, link targets) before and after: each refusal is one ``svreg: error:`` line with
exit status 2 and leaves every byte in place. The refusals come before any image is read, so
these runs take milliseconds; one real run checks that svreg's own output is still replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from svreg_core.cli import main
from svreg_core.errors import OutputError
from svreg_core.outputs import OUTPUT_FILES
from svreg_core.outputs.writer import MARKER_FILE, prepare_output_dir


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file content hash, link target or ``dir`` (links not followed)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _canaries(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.docx").write_text("years of work")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "data.csv").write_text("1,2,3")
    return folder


@pytest.fixture
def site(tiny_pair, tmp_path: Path) -> Path:
    """``tmp_path`` with the inputs (copies of the tiny pair) in ``data/`` next to a canary file, a
    preset in ``presets/`` next to a canary, an unrelated canary folder ``mine/`` and a home ``home/``."""
    data = _canaries(tmp_path / "data")
    for name in ("fixed", "moving"):
        shutil.copy(getattr(tiny_pair.paths, name), data / f"{name}.nii.gz")
    presets = _canaries(tmp_path / "presets")
    (presets / "quick.json").write_text(json.dumps({"parameters": {"iterations": [3, 3]}}))
    _canaries(tmp_path / "mine")
    _canaries(tmp_path / "home")
    return tmp_path


def _refused(site: Path, output: str | Path, *words: str, capsys, extra: tuple = ()) -> None:
    """Run ``svreg register`` into ``output`` with and without --overwrite: refused, nothing changed."""
    before = _tree(site)
    for overwrite in ((), ("--overwrite",)):
        rc = main(["register", str(site / "data" / "fixed.nii.gz"), str(site / "data" / "moving.nii.gz"),
                   "-o", str(output), "--device", "cpu", "--progress", "none", *extra, *overwrite])
        err = capsys.readouterr().err
        lines = err.strip("\n").split("\n")
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("svreg: error: "), err
        for w in words:
            assert w in lines[0], (w, lines[0])
    assert _tree(site) == before


def test_unrelated_folder(site: Path, capsys) -> None:
    _refused(site, site / "mine", "not written by svreg", capsys=capsys)


def test_current_folder(site: Path, capsys, monkeypatch) -> None:
    """The current folder, however named, is refused as such, also when it is an earlier svreg output (which
    --overwrite would otherwise replace, pulling the folder from under the shell standing in it)."""
    monkeypatch.chdir(site / "mine")
    for output in (".", site / "mine", "../mine", "sub/.."):
        _refused(site, output, f"output folder {site / 'mine'} is or contains the current folder", capsys=capsys)
    monkeypatch.chdir(site / "mine" / "sub")
    _refused(site, "..", "contains the current folder", capsys=capsys)
    earlier = site / "earlier"
    earlier.mkdir()
    for name in OUTPUT_FILES:  # the marker file among them
        (earlier / name).write_text("svreg wrote this")
    monkeypatch.chdir(earlier)
    _refused(site, ".", f"output folder {earlier} is or contains the current folder", capsys=capsys)


def test_empty_path(site: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(site / "mine")
    _refused(site, "", "empty", capsys=capsys)
    _refused(site, "  ", "empty", capsys=capsys)


def test_home_folder(site: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(site / "home"))
    _refused(site, site / "home", "home folder", capsys=capsys)


def test_the_inputs_folder_and_its_ancestors(site: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(site / "mine")
    _refused(site, site / "data", "contains the input", capsys=capsys)
    _refused(site, site, "contains the input", capsys=capsys)
    _refused(site, "../data", "contains the input", capsys=capsys)


def test_symlinks_to_protected_folders(site: Path, capsys) -> None:
    """A link is followed: a link to a foreign or input folder is refused like that folder."""
    links = site / "links"
    links.mkdir()
    (links / "to_mine").symlink_to(site / "mine", target_is_directory=True)
    (links / "to_data").symlink_to(site / "data", target_is_directory=True)
    _refused(site, links / "to_mine", "not written by svreg", capsys=capsys)
    _refused(site, links / "to_data", "contains the input", capsys=capsys)


def test_the_preset_files_folder(site: Path, capsys) -> None:
    _refused(site, site / "presets", "not written by svreg", capsys=capsys,
             extra=("--preset", str(site / "presets" / "quick.json")))


def test_svreg_output_with_user_files_added(site: Path, capsys) -> None:
    out = site / "out"
    out.mkdir()
    for name in OUTPUT_FILES:
        (out / name).write_text("svreg wrote this")
    (out / "my_notes.txt").write_text("mine")
    _refused(site, out, "my_notes.txt", capsys=capsys)


def test_root_and_files_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="filesystem root"):
        prepare_output_dir("/", overwrite=True)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        prepare_output_dir(tmp_path / "file.txt", overwrite=True)
    assert (tmp_path / "file.txt").read_text() == "x"


def test_svreg_output_is_replaced_and_nothing_else_touched(geo, site: Path) -> None:
    """Two real runs of the command into the same folder: the second replaces the first's output
    (and only it), leaving every canary and input as it was."""
    preset = site / "fast.json"
    preset.write_text(json.dumps({"parameters": {"level_spacings": [12, 6], "iterations": [3, 3],
                                                 "affine": False}}))
    out = site / "mine" / "result"
    argv = ["register", site / "data" / "fixed.nii.gz", site / "data" / "moving.nii.gz", "-o", out,
            "--preset", preset, "--device", "cpu", "--progress", "none"]
    for extra in ((), ("--overwrite",)):
        before = {k: v for k, v in _tree(site).items() if not k.startswith("mine/result")}
        proc = subprocess.run(geo.svreg_command(*argv, *extra), cwd=str(site / "mine"), env=geo.child_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        after = _tree(site)
        assert {k: v for k, v in after.items() if not k.startswith("mine/result")} == before
        assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
        assert (out / MARKER_FILE).is_file()
