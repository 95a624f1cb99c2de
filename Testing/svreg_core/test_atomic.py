"""Files written through ``replaced_when_complete`` and folders through ``replace_directory`` appear only when
complete; ``recover_directory`` undoes a swap cut by a kill."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from svreg_core.atomic import recover_directory, replace_directory, replaced_when_complete


def test_the_content_replaces_the_file_only_when_written(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("earlier")
    with replaced_when_complete(path, ".json") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.json.partial-") and tmp.suffix == ".json"
        tmp.write_text("new")
        assert path.read_text() == "earlier"  # not yet
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("stop", [RuntimeError("the content failed"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_changes_nothing(tmp_path: Path, stop: BaseException) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("earlier")
    with pytest.raises(type(stop)):
        with replaced_when_complete(path) as tmp:
            tmp.write_text("half")
            raise stop
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    with pytest.raises(RuntimeError):
        with replaced_when_complete(tmp_path / "new.csv"):
            raise RuntimeError("nothing written yet")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_a_symbolic_link_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("earlier")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with replaced_when_complete(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "target.txt"]


def test_directory_replacement_survives_an_interruption(tmp_path) -> None:
    target = tmp_path / "state"
    replace_directory(target, lambda d: (d / "a.json").write_text("1"))
    replace_directory(target, lambda d: (d / "a.json").write_text("2"))
    assert (target / "a.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["state"]

    def failing(folder):
        (folder / "a.json").write_text("3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_directory(target, failing)
    assert (target / "a.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    # killed between moving the old folder away and moving the new one in: the old one comes back
    target.rename(tmp_path / ".state.old")
    (tmp_path / ".state.partial-123").mkdir()
    recover_directory(target)
    assert (target / "a.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_symbolically_linked_folder_is_followed(tmp_path: Path) -> None:
    """A folder reached through a symbolic link (a run's checkpoint kept on other storage): the first swap
    replaced the link by a folder and left the link as ``.best.old``, and every later one failed with
    "Not a directory". Now the folder the link points to is replaced, and the link stays."""
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "best"
    real.mkdir()
    link = tmp_path / "run" / "best"
    link.parent.mkdir()
    link.symlink_to(real)
    for value in ("1", "2"):
        assert replace_directory(link, lambda folder, value=value: (folder / "a.json").write_text(value)) == link
        assert link.is_symlink() and (real / "a.json").read_text() == value
        assert [p.name for p in link.parent.iterdir()] == ["best"] and [p.name for p in real.parent.iterdir()] \
            == ["best"]
    # killed between its two renames: the link dangles until the folder it points to is back
    real.rename(real.with_name(".best.old"))
    recover_directory(link)
    assert (link / "a.json").read_text() == "2" and [p.name for p in real.parent.iterdir()] == ["best"]


def test_folder_files_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    """safetensors writes its files 0600 whatever the umask: a training run's resume state could not be read by the
    group that shares it (README: every output gets the permissions the umask gives). Files of a swapped-in folder
    get what a plain write would give them."""
    import torch
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        (folder / "state.json").write_text("{}")

    before = os.umask(0o027)
    try:
        target = replace_directory(tmp_path / "state", write)
    finally:
        os.umask(before)
    assert {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()} == {"model.safetensors": 0o640,
                                                                          "state.json": 0o640}
    assert target.stat().st_mode & 0o777 == 0o750
