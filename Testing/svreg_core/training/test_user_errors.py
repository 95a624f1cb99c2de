"""``svreg train`` as a user runs it: mistakes and failures end in one plain line, found before long work starts."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from svreg_core.cli import main
from svreg_core.errors import InputError
from svreg_core.progress import ProgressEvent
from svreg_core.training.cli import add_train_arguments, resolve_config
from svreg_core.training.config import DataSource, TrainingConfig, load_config, save_config
from svreg_core.training.datasets import pairs_from_folder
from svreg_core.training.loaders import build_data, check_pair_files, prepare_alignments
from svreg_core.training.sources import synthseg_label_maps
from svreg_core.training.trainer import train

#: A network small enough for a step on a 16³ grid to take milliseconds.
TINY = {"encoder_features": [4], "decoder_features": [4, 4], "lambda_features": []}


def write_subjects(geo, folder: Path, count: int = 2) -> None:
    """``count`` subjects ``subN.nii.gz`` + ``subN_seg.nii.gz``: 16³ voxels of 4 mm, a sphere (label 2) around a
    smaller one (label 3), shifted a little per subject."""
    folder.mkdir(parents=True)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -30.0
    for index in range(count):
        ijk = np.indices((16, 16, 16)).transpose(1, 2, 3, 0) - 7.5 - 0.5 * index
        seg = np.where((ijk ** 2).sum(-1) < 36, 2, 0).astype(np.int16)
        seg[(ijk ** 2).sum(-1) < 9] = 3
        geo.save_nifti(seg * np.float32(0.3), affine, folder / f"sub{index}.nii.gz")
        geo.save_nifti(seg, affine, folder / f"sub{index}_seg.nii.gz")


def real_pairs_config(train_folder: Path, val_folder: Path, **changes) -> TrainingConfig:
    """One epoch of one step on the subjects of ``train_folder``, validated on those of ``val_folder``."""
    values = {"model": TINY, "network_spacing_mm": 4.0, "grid_shape": (16, 16, 16), "epochs": 1,
              "steps_per_epoch": 1, "num_workers": 0,
              "data": {"sources": [{"kind": "folder", "path": str(train_folder)}], "prealign": False},
              "validation": {"sources": [{"kind": "folder", "path": str(val_folder)}], "pairs": 1}}
    return TrainingConfig(**{**values, **changes})


def test_a_file_failing_in_a_data_loading_worker_is_one_plain_line(geo, tmp_path) -> None:
    """A label map that disappears while training runs (a network drive, a cleanup job) fails in a DataLoader worker
    process: the error is svreg's one line naming the file, not the worker's traceback."""
    write_subjects(geo, tmp_path / "train")
    write_subjects(geo, tmp_path / "val")
    doomed = tmp_path / "val" / "sub0_seg.nii.gz"

    def remove_at_the_first_step(event: ProgressEvent) -> None:
        if event.stage.startswith("epoch ") and doomed.exists():
            doomed.unlink()  # the validation pair is loaded after the epoch's steps, in a worker

    with pytest.raises(InputError) as caught:
        train(real_pairs_config(tmp_path / "train", tmp_path / "val", num_workers=1), tmp_path / "run",
              progress=remove_at_the_first_step)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith(f"file not found: {doomed}")


def test_an_unusable_label_map_is_refused_before_any_training_step(geo, tmp_path) -> None:
    """A validation pair's label map holding fractions (a probability map) is read only after the first epoch's
    steps: it is refused before the first step, and no run folder is left."""
    write_subjects(geo, tmp_path / "train")
    write_subjects(geo, tmp_path / "val")
    bad = tmp_path / "val" / "sub1_seg.nii.gz"
    geo.save_nifti(np.full((16, 16, 16), 0.25, np.float32), np.eye(4), bad)
    events: list[ProgressEvent] = []
    where = re.escape(str(tmp_path / "val"))
    with pytest.raises(InputError, match=rf"^label map sub1_seg\.nii\.gz in {where} \(sub1_seg\.nii\.gz\) holds "
                                         "values that are not"):
        train(real_pairs_config(tmp_path / "train", tmp_path / "val"), tmp_path / "run", progress=events.append)
    assert not [e for e in events if e.stage.startswith("epoch")]
    assert not (tmp_path / "run").exists()
    # an image with NaN voxels, read here when not pre-aligned, was refused as 'image in FOLDER contains 27 NaN ...':
    # which of the folder's images was not said
    write_subjects(geo, tmp_path / "other")
    values = np.full((16, 16, 16), 0.5, np.float32)
    values[:3, :3, :3] = np.nan
    geo.save_nifti(values, np.diag([4.0, 4.0, 4.0, 1.0]), tmp_path / "other" / "sub1.nii.gz")
    with pytest.raises(InputError, match=r"^image sub1\.nii\.gz in .*other contains 27 NaN or infinite voxels"):
        train(real_pairs_config(tmp_path / "train", tmp_path / "other"), tmp_path / "run")


def test_a_run_folder_below_a_file_is_refused_before_the_data_are_read(tmp_path, capsys) -> None:
    """``-o notes.txt/run`` crashed with a NotADirectoryError traceback once the data were read and pre-aligned: it
    is one line, and comes before the (here missing) label map folder is even looked at."""
    (tmp_path / "notes.txt").write_text("not a folder")
    run = tmp_path / "notes.txt" / "run"
    assert main(["train", "--synthetic", str(tmp_path / "missing"), "-o", str(run), "--progress", "none"]) == 2
    assert capsys.readouterr().err == f"svreg: error: cannot create {run}: {tmp_path / 'notes.txt'} is a file, not a " \
                                      "folder.\n"


def test_validation_folder_pairs_follow_the_training_atlas(geo, tmp_path) -> None:
    """``--data D --atlas A --val-data V`` trains atlas-to-subject pairs: the validation folder's pairs are too (they
    were every inter-subject pair of V, another task, whose Dice chose the best checkpoint)."""
    write_subjects(geo, tmp_path / "train")
    write_subjects(geo, tmp_path / "val", count=3)
    atlas = tmp_path / "train" / "sub0.nii.gz"
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "train"), "--atlas", str(atlas), "--val-data",
                              str(tmp_path / "val"), "-o", str(tmp_path / "run")])
    validation = build_data(resolve_config(args)).validation
    assert validation is not None
    pairs = validation.dataset.pairs
    assert [(p.fixed, p.moving.name) for p in pairs] == [(atlas, f"sub{i}.nii.gz") for i in range(3)]
    assert {p.fixed_labels for p in pairs} == {tmp_path / "train" / "sub0_seg.nii.gz"}


def test_synthetic_and_templates_flags_keep_the_files_pairs_per_epoch(tmp_path) -> None:
    """The shipped configurations say "the path is replaced by --synthetic": the file's length (pairs per epoch, and
    so the steps of an epoch) was silently reset to 100, and ``--templates`` lost its synthesis options too."""
    synthesis = {"same_map_probability": 1.0, "velocity_std_max": 1.5}
    config_file = save_config(TrainingConfig(data={"sources": [
        {"kind": "synthetic", "path": "labels/", "length": 500, "synthesis": synthesis},
        {"kind": "templates", "length": 40, "synthesis": {"noise_std_max": 0.01}}]}), tmp_path / "train.yaml")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--config", str(config_file), "--synthetic", "other/", "--templates", "-o", "run"])
    assert resolve_config(args).data.sources == (
        DataSource("synthetic", "other/", length=500, synthesis=synthesis),
        DataSource("templates", length=40, synthesis={"noise_std_max": 0.01}))


def test_json_progress_of_a_finished_run_is_strict_json(geo, tmp_path, capsys) -> None:
    """Running a finished run again ("nothing to do") ended its JSON lines with ``"step_seconds": NaN``, which strict
    JSON readers (JavaScript, jq, Go, …) refuse: it is null."""
    write_subjects(geo, tmp_path / "train")
    config_file = save_config(real_pairs_config(tmp_path / "train", tmp_path / "train", validation={"pairs": 0}),
                              tmp_path / "train.yaml")
    argv = ["train", "--config", str(config_file), "-o", str(tmp_path / "run"), "--progress", "json"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    events = [json.loads(line, parse_constant=refuse) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["step_seconds"] is None and events[-1]["epochs"] == 1


def test_prealignment_progress_counts_training_and_validation_pairs_together(geo, tmp_path) -> None:
    """The pre-alignment progress reached 100 % with the training pairs, then started again from 0 for the
    validation pairs: it counts every registration once (here the training pairs' one to their hub image and the
    validation pair's own), to 100 % at the last."""
    write_subjects(geo, tmp_path / "train")
    write_subjects(geo, tmp_path / "val")
    config = real_pairs_config(tmp_path / "train", tmp_path / "val",
                               data={"sources": [{"kind": "folder", "path": str(tmp_path / "train")}]})
    known = {(str(tmp_path / f / f"sub{i}.nii.gz"), str(tmp_path / f / f"sub{1 - i}.nii.gz")): np.eye(4)
             for f in ("train", "val") for i in (0, 1)}  # every pair aligned already: only the progress is made
    events: list[ProgressEvent] = []
    prepare_alignments(build_data(config, known), tmp_path / "alignments.json", write=False, progress=events.append)
    assert [(e.stage, e.step, e.total, e.fraction) for e in events] == [
        ("prealign", 1, 2, 0.5), ("prealign", 2, 2, 1.0)]


def test_label_maps_named_unlike_their_images_are_reported(geo, tmp_path) -> None:
    """``img0.nii.gz`` + ``seg0.nii.gz`` (a common naming) matched no label map: the run trained and validated
    without labels (no Dice, best/ chosen by the loss) and said nothing. It still runs without them, with a warning
    naming the files and the naming that works."""
    write_subjects(geo, tmp_path / "cohort")
    for index in range(2):
        (tmp_path / "cohort" / f"sub{index}.nii.gz").rename(tmp_path / "cohort" / f"img{index}.nii.gz")
        (tmp_path / "cohort" / f"sub{index}_seg.nii.gz").rename(tmp_path / "cohort" / f"seg{index}.nii.gz")
    with pytest.warns(UserWarning, match=r"the label map\(s\) seg0\.nii\.gz, seg1\.nii\.gz match no image"):
        pairs = pairs_from_folder(tmp_path / "cohort")
    assert [(p.fixed.name, p.fixed_labels) for p in pairs] == [("img0.nii.gz", None), ("img1.nii.gz", None)]
    write_subjects(geo, tmp_path / "named")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(p.fixed_labels is not None for p in pairs_from_folder(tmp_path / "named"))
    # a second label map of an image (aseg and aparc+aseg) is not one that "matches no image"
    shutil.copy(tmp_path / "named" / "sub0_seg.nii.gz", tmp_path / "named" / "sub0_seg_aparc.nii.gz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = pairs_from_folder(tmp_path / "named")
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "sub0.nii.gz has several label maps; sub0_seg.nii.gz (the shortest name) is used, not sub0_seg_aparc.nii.gz."]
    assert pairs[0].fixed_labels.name == "sub0_seg.nii.gz"


def test_hidden_files_in_data_folders_are_not_images(geo, tmp_path) -> None:
    """macOS copies ``._sub0.nii.gz`` (resource data, not an image) next to every file it writes on a USB or network
    disk: they were taken for subjects and label maps and stopped the run as unreadable images."""
    write_subjects(geo, tmp_path / "cohort")
    for name in ("sub0.nii.gz", "sub0_seg.nii.gz"):
        (tmp_path / "cohort" / f"._{name}").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource data")
    pairs = pairs_from_folder(tmp_path / "cohort")
    assert {p.fixed.name for p in pairs} == {"sub0.nii.gz", "sub1.nii.gz"}
    assert {p.fixed_labels.name for p in pairs if p.fixed_labels} == {"sub0_seg.nii.gz", "sub1_seg.nii.gz"}
    assert [p.name for p in synthseg_label_maps(tmp_path / "cohort")] == [
        "sub0.nii.gz", "sub0_seg.nii.gz", "sub1.nii.gz", "sub1_seg.nii.gz"]


def test_resuming_on_changed_data_is_refused(geo, tmp_path) -> None:
    """A subject added to the data folder of a run (same flags, same configuration) was resumed without a word: the
    epochs drew other pairs and a held-out validation split could move trained subjects into validation."""
    write_subjects(geo, tmp_path / "train")
    config = real_pairs_config(tmp_path / "train", tmp_path / "train", validation={"pairs": 0})
    train(config, tmp_path / "run")
    train(config, tmp_path / "run")  # the same data: resumed (here: nothing left to do)
    write_subjects(geo, tmp_path / "more", count=3)
    (tmp_path / "more" / "sub2.nii.gz").rename(tmp_path / "train" / "sub2.nii.gz")
    with pytest.raises(InputError, match=r"^the data of the run in .* changed since it began \(6 training and 0 "
                                         r"validation pairs now, 2 and 0 when it began: "):
        train(config, tmp_path / "run")


def test_resuming_with_relative_paths_from_another_folder_is_refused(geo, tmp_path, monkeypatch) -> None:
    """The same relative data path given in another folder names other files: a run begun in one project folder and
    resumed from another (both with a ``train/`` folder of the same names) went on training on the other cohort.
    Data that moved with the run (a renamed project folder, a copy on a cluster's scratch disk) still resumes."""
    for project in ("a", "b"):
        write_subjects(geo, tmp_path / project / "train")
    noise = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)  # another subject, same name
    geo.save_nifti(noise, np.diag([4.0, 4.0, 4.0, 1.0]), tmp_path / "b" / "train" / "sub0.nii.gz")
    config = real_pairs_config(Path("train"), Path("train"), validation={"pairs": 0})
    monkeypatch.chdir(tmp_path / "a")
    train(config, Path("run"))
    train(config, Path("run"))  # the same files: resumed (here: nothing left to do)
    (tmp_path / "a").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    train(config, Path("run"))  # the project folder renamed, data and run together: the same files
    shutil.copytree(tmp_path / "moved" / "run", tmp_path / "b" / "run")
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(InputError, match=r"changed since it began \(as many pairs, of other files: .* relative paths "
                                         r"read in another folder\)"):
        train(config, Path("run"))


def test_a_run_resumes_on_its_data_moved_to_a_folder_given_anew(geo, tmp_path) -> None:
    """A configuration with absolute data paths, resumed after the data folder moved and the new folder was given,
    was refused as a run with a different configuration ('data, validation differ') although its files were the same;
    the same files in their new place resume (the run folder's configuration then names them), other files do not."""
    write_subjects(geo, tmp_path / "old" / "train")
    train(real_pairs_config(tmp_path / "old" / "train", tmp_path / "old" / "train"), tmp_path / "run")
    (tmp_path / "old").rename(tmp_path / "new")
    moved = real_pairs_config(tmp_path / "new" / "train", tmp_path / "new" / "train")
    assert train(moved, tmp_path / "run").resumed_from == 1  # the same files: resumed (nothing left to do)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert [s.path for s in (*saved.data.sources, *saved.validation.sources)] == [str(tmp_path / "new" / "train")] * 2
    write_subjects(geo, tmp_path / "other" / "train")
    noise = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)  # another subject, same name
    geo.save_nifti(noise, np.diag([4.0, 4.0, 4.0, 1.0]), tmp_path / "other" / "train" / "sub0.nii.gz")
    with pytest.raises(InputError, match=r"changed since it began \(as many pairs, of other files"):
        train(real_pairs_config(tmp_path / "other" / "train", tmp_path / "other" / "train"), tmp_path / "run")


def test_an_unusable_validation_folder_is_named_a_validation_folder(geo, tmp_path) -> None:
    """``--val-data`` naming a folder of one subject was refused as a 'training folder' holding 1 image, although the
    training folder was fine."""
    write_subjects(geo, tmp_path / "train")
    write_subjects(geo, tmp_path / "val", count=1)
    with pytest.raises(InputError, match=rf"^validation folder {re.escape(str(tmp_path / 'val'))} holds 1 image\(s\)"):
        build_data(real_pairs_config(tmp_path / "train", tmp_path / "val"))
    with pytest.raises(InputError, match=r"^validation folder not found: "):
        build_data(real_pairs_config(tmp_path / "train", tmp_path / "missing"))


def test_a_run_stopped_before_its_first_epoch_starts_over_on_corrected_data(geo, tmp_path) -> None:
    """An unusable image is refused by the affine pre-alignment, after the run folder was begun; the user removed it
    and ran the same command again, and was refused because the data 'changed since the run began', although no
    epoch had been trained. A run without a finished epoch starts over on the data it finds."""
    write_subjects(geo, tmp_path / "train", count=3)
    bad = tmp_path / "train" / "sub9.nii.gz"
    geo.save_nifti(np.zeros((16, 16), np.float32), np.eye(4), bad)
    config = real_pairs_config(tmp_path / "train", tmp_path / "train", validation={"pairs": 0},
                               data={"sources": [{"kind": "folder", "path": str(tmp_path / "train")}]})
    with pytest.raises(InputError, match=r"sub9\.nii\.gz"):
        train(config, tmp_path / "run")
    assert (tmp_path / "run" / "data.json").is_file()  # the run was begun
    bad.unlink()
    assert train(config, tmp_path / "run").epochs == 1
    assert json.loads((tmp_path / "run" / "data.json").read_text())["training_pairs"] == 6


def test_resuming_on_other_uncompressed_files_of_the_same_names_and_sizes_is_refused(geo, tmp_path) -> None:
    """Uncompressed images (.nii) of one shape all have one size, so the data check, by file name and size, took
    another cohort's files of the same names for the run's own and resumed training on them."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    for cohort, seed in (("a", 0), ("b", 1)):
        (tmp_path / cohort).mkdir()
        for index, values in enumerate(np.random.default_rng(seed).random((2, 16, 16, 16)).astype(np.float32)):
            geo.save_nifti(values, affine, tmp_path / cohort / f"sub{index}.nii")
    assert (tmp_path / "a" / "sub0.nii").stat().st_size == (tmp_path / "b" / "sub0.nii").stat().st_size
    train(real_pairs_config(tmp_path / "a", tmp_path / "a", validation={"pairs": 0}), tmp_path / "run")
    with pytest.raises(InputError, match=r"changed since it began \(as many pairs, of other files"):
        train(real_pairs_config(tmp_path / "b", tmp_path / "b", validation={"pairs": 0}), tmp_path / "run")


def test_a_run_resumed_on_moved_data_keeps_its_pre_alignments(geo, tmp_path) -> None:
    """A run resumed on its data copied elsewhere (a cluster job's scratch disk, a new folder for every job) computed
    every affine pre-alignment again, as the cache named the files by their earlier paths; they move with the data."""
    write_subjects(geo, tmp_path / "old" / "train")
    config = real_pairs_config(tmp_path / "old" / "train", tmp_path / "old" / "train", validation={"pairs": 0},
                               data={"sources": [{"kind": "folder", "path": str(tmp_path / "old" / "train")}]})
    train(config, tmp_path / "run")
    cache = tmp_path / "run" / "alignments.json"
    (key, matrix), = json.loads(cache.read_text()).items()
    marked = [list(row) for row in matrix]
    marked[0][3] += 0.125  # a matrix no registration computes: found again below only if it was kept
    cache.write_text(json.dumps({key: marked}))
    (tmp_path / "old").rename(tmp_path / "new")
    moved = real_pairs_config(tmp_path / "new" / "train", tmp_path / "new" / "train", validation={"pairs": 0},
                              data={"sources": [{"kind": "folder", "path": str(tmp_path / "new" / "train")}]})
    train(moved, tmp_path / "run")
    assert json.loads(cache.read_text()) == {key.replace(str(tmp_path / "old"), str(tmp_path / "new")): marked}


def test_validation_pairs_of_training_subjects_are_warned_about(geo, tmp_path) -> None:
    """``--val-data`` listing subjects the network trains on was taken without a word: the validation Dice then scores
    training pairs and best/ is chosen on them. An atlas in every pair, and a held-out split, are not warned about."""
    write_subjects(geo, tmp_path / "train", count=4)
    write_subjects(geo, tmp_path / "val", count=2)
    with pytest.warns(UserWarning, match=r"^12 of the 12 validation pairs use images the network trains on \(e\.g\. "
                                         r".*sub0\.nii\.gz\): their Dice is not a held-out score"):
        build_data(real_pairs_config(tmp_path / "train", tmp_path / "train", validation={
            "sources": [{"kind": "folder", "path": str(tmp_path / "train")}], "pairs": 16}))
    atlas = str(tmp_path / "val" / "sub0.nii.gz")
    held_out = {"data": {"sources": [{"kind": "folder", "path": str(tmp_path / "train")}], "prealign": False},
                "validation": {"fraction": 0.5}}
    atlas_pairs = {"data": {"sources": [{"kind": "folder", "path": str(tmp_path / "train"), "atlas": atlas}],
                            "prealign": False},
                   "validation": {"sources": [{"kind": "folder", "path": str(tmp_path / "val"), "atlas": atlas}]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for changes in (held_out, atlas_pairs):
            assert len(build_data(real_pairs_config(tmp_path / "train", tmp_path / "val", **changes)).validation)


def test_a_run_stopped_in_its_first_epoch_starts_over_with_changed_settings(geo, tmp_path) -> None:
    """Ctrl-C in the first epoch, the settings corrected (a learning rate), the command run again: refused as 'a run
    with a different configuration' to resume, although no epoch had finished, so a new folder had to pre-align every
    pair again. It starts over with the new settings and keeps its pre-alignments; after an epoch it is refused."""
    write_subjects(geo, tmp_path / "train")
    config = real_pairs_config(tmp_path / "train", tmp_path / "train", validation={"pairs": 0},
                               data={"sources": [{"kind": "folder", "path": str(tmp_path / "train")}]})

    def ctrl_c(event: ProgressEvent) -> None:
        if event.stage == "epoch 1/1":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=ctrl_c)
    cache = tmp_path / "run" / "alignments.json"
    (key, matrix), = json.loads(cache.read_text()).items()
    marked = [list(row) for row in matrix]
    marked[0][3] += 0.125  # a matrix no registration computes: found again below only if it was kept
    cache.write_text(json.dumps({key: marked}))
    summary = train(config.replace(learning_rate=1e-3), tmp_path / "run")
    assert (summary.epochs, summary.resumed_from) == (1, 0)
    assert load_config(tmp_path / "run" / "config.yaml").learning_rate == 1e-3
    assert json.loads(cache.read_text()) == {key: marked}
    with pytest.raises(InputError, match=re.escape(f"different configuration (learning_rate: 0.001 in the run, "
                                                   f"{json.dumps(config.learning_rate)} now)")):
        train(config, tmp_path / "run")


def test_validation_labels_in_no_validation_label_map_are_refused_before_training(geo, tmp_path) -> None:
    """``validation: {labels: [...]}`` naming labels the maps do not hold (a typo, another atlas's numbers) trained
    every epoch without a validation Dice, best/ chosen by the loss, without a word; refused before any work now,
    naming the labels the maps hold. Labels of which some occur are taken."""
    write_subjects(geo, tmp_path / "train")
    write_subjects(geo, tmp_path / "val")
    config = real_pairs_config(tmp_path / "train", tmp_path / "val", validation={
        "sources": [{"kind": "folder", "path": str(tmp_path / "val")}], "labels": [999, 1000]})
    with pytest.raises(InputError, match=r"^none of the validation labels 999, 1000 occurs in the validation pairs' "
                                         r"label maps \(they hold 2, 3\), so no epoch would get a validation Dice"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    check_pair_files(build_data(config), labels=[3, 999])


def test_validation_pairs_without_label_maps_are_warned_about(geo, tmp_path) -> None:
    """An --atlas without a label map beside it gave validation pairs without labels: every epoch went without a
    validation Dice (best/ chosen by the loss) and nothing said why. A labelled atlas is not warned about."""
    write_subjects(geo, tmp_path / "train", count=3)
    (tmp_path / "atlas").mkdir()
    shutil.copy(tmp_path / "train" / "sub0.nii.gz", tmp_path / "atlas" / "atlas.nii.gz")
    atlas = str(tmp_path / "atlas" / "atlas.nii.gz")
    config = real_pairs_config(tmp_path / "train", tmp_path / "train", validation={"fraction": 0.5}, data={
        "sources": [{"kind": "folder", "path": str(tmp_path / "train"), "atlas": atlas}], "prealign": False})
    with pytest.warns(UserWarning, match=r"^no validation pair has label maps for both images \(.*atlas\.nii\.gz has "
                                         r"none\): every epoch goes without a validation Dice"):
        build_data(config)
    shutil.copy(tmp_path / "train" / "sub0_seg.nii.gz", tmp_path / "atlas" / "atlas_seg.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(build_data(config).validation)


def test_a_file_named_after_a_subject_but_not_a_label_map_is_warned_about(geo, tmp_path) -> None:
    """A brain mask beside each image (sub0_brainmask.nii.gz: not a label map by name) was taken as a subject of its
    own without a word, and the network trained on mask-to-image pairs (6 pairs of 3 subjects became 30)."""
    write_subjects(geo, tmp_path / "train", count=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(pairs_from_folder(tmp_path / "train")) == 6
    for index in range(3):
        shutil.copy(tmp_path / "train" / f"sub{index}_seg.nii.gz", tmp_path / "train" / f"sub{index}_brainmask.nii.gz")
    with pytest.warns(UserWarning, match=r"sub0_brainmask\.nii\.gz \(and 2 more\) is taken as a subject's image, "
                                         r"though its name extends sub0\.nii\.gz's: a mask or another file of that "
                                         r"subject would be trained on as an image; .* by seg, label, aseg, parc in"):
        pairs_from_folder(tmp_path / "train")
