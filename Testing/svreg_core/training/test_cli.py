"""``svreg train``: flags override the configuration file, JSON progress, one-line errors with exit status 2."""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from svreg_core.cli import main
from svreg_core.training.cli import add_train_arguments, resolve_config
from svreg_core.training.config import DataSource, TrainingConfig, load_config, save_config


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_the_configuration_file(tmp_path) -> None:
    base = TrainingConfig(epochs=50, learning_rate=3e-4, model={"encoder_features": [8, 8]},
                          data={"sources": [{"kind": "csv", "path": "pairs.csv"}]})
    config_file = save_config(base, tmp_path / "base.yaml")
    (tmp_path / "val").mkdir()
    args = _args("--config", str(config_file), "-o", "run", "--lr", "2e-4", "--grid-shape", "32", "48", "64",
                 "--no-spr", "--alpha-prime", "0.05", "--synthetic", "labels/", "--templates",
                 "--val-data", str(tmp_path / "val"), "--workers", "0", "--seed", "7", "--init", "default")
    config = resolve_config(args)
    assert (config.learning_rate, config.grid_shape, config.spr, config.alpha_prime, config.num_workers,
            config.seed, config.init_weights) == (2e-4, (32, 48, 64), False, 0.05, 0, 7, "default")
    assert config.epochs == 50 and config.model == {"encoder_features": [8, 8]}  # kept from the file
    assert config.data.sources == (DataSource("synthetic", "labels/"), DataSource("templates"))
    assert config.validation.sources == (DataSource("folder", str(tmp_path / "val")),)
    assert resolve_config(_args("--config", str(config_file), "-o", "run")) == base
    # a tab-separated pair list validates as --csv reads it for training
    tsv = _args("--config", str(config_file), "-o", "run", "--val-data", "val.tsv")
    assert resolve_config(tsv).validation.sources == (DataSource("csv", "val.tsv"),)


@pytest.mark.parametrize("argv, message", [
    ([], "no training data"),
    (["--data", "{tmp}/missing"], "training folder not found"),
    (["--atlas", "a.nii.gz"], "--atlas goes with --data"),
    (["--csv", "{tmp}/pairs.csv", "--val-data", "{tmp}/val.txt"], "validation data not found"),
    (["--synthetic", "{tmp}", "--epochs", "0"], "epochs must be at least 1"),
    (["--config", "{tmp}/missing.yaml"], "configuration file not found"),
    (["--synthetic", "{tmp}"], "holds no label maps"),
    (["--data", "{tmp}", "--val-data", "{tmp}", "--val-fraction", "0.2"], "--val-fraction holds training subjects out"),
])
def test_user_mistakes_exit_2_with_one_line_and_leave_no_folder(tmp_path, capsys, argv, message) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["train", *argv, "-o", str(tmp_path / "run"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svreg: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_json_progress_worker_processes_and_a_changed_rerun(geo, tmp_path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    ijk = np.indices((16, 16, 16)).transpose(1, 2, 3, 0) - 7.5
    seg = np.where((ijk ** 2).sum(-1) < 36, 2, 0).astype(np.int16)
    seg[(ijk ** 2).sum(-1) < 9] = 3
    geo.save_nifti(seg, np.diag([4.0, 4.0, 4.0, 1.0]), labels / "a_seg.nii.gz")
    config_file = save_config(TrainingConfig(model={"encoder_features": [4], "decoder_features": [4, 4],
                                                    "lambda_features": []},
                                             network_spacing_mm=4.0, validation={"pairs": 1}), tmp_path / "c.json")
    command = [sys.executable, "-m", "svreg_core.cli", "train", "--config", str(config_file), "--synthetic",
               str(labels), "-o", str(tmp_path / "run"), "--grid-shape", "16", "16", "16", "--epochs", "1",
               "--steps-per-epoch", "2", "--workers", "1", "--progress", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env=geo.child_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    steps = [e for e in events if e.get("stage") == "epoch 1/1"]
    assert [e["step"] for e in steps] == [1, 2]
    assert set(steps[0]["values"]) == {"total", "similarity", "regularization", "prior"}
    assert events[-1]["event"] == "done" and events[-1]["epochs"] == 1 and events[-1]["steps"] == 2
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))  # the one epoch: what "last" reports
    dice = events[-1]["last"]["val_dice"]
    assert 0.0 <= dice <= 1.0 and float(row["val_dice"]) == pytest.approx(dice, rel=1e-6)
    assert events[-1]["last"]["epoch"] == 1 and int(row["epoch"]) == 1
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.grid_shape, saved.epochs, saved.num_workers) == ((16, 16, 16), 1, 1)

    changed = subprocess.run([*command[:-2], "--lr", "1e-3", "--progress", "none"], capture_output=True, text=True,
                             env=geo.child_env(), timeout=300)
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"svreg: error: output folder {tmp_path / 'run'} holds a run with a different configuration "
        "(learning_rate: 0.0001 in the run, 0.001 now); use the same settings to resume it, or choose a new folder."]


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="finds the worker process with pgrep")
def test_a_killed_data_worker_gives_one_plain_line(geo, tmp_path) -> None:
    """A synthesis worker killed outright (as the system's out-of-memory killer does) ends ``svreg train`` with
    exit status 1 and one plain line saying how to resume, not a traceback."""
    labels = tmp_path / "labels"
    labels.mkdir()
    ijk = np.indices((16, 16, 16)).transpose(1, 2, 3, 0) - 7.5
    geo.save_nifti(np.where((ijk ** 2).sum(-1) < 36, 2, 0).astype(np.int16), np.diag([4.0, 4.0, 4.0, 1.0]),
                   labels / "a_seg.nii.gz")
    config_file = save_config(TrainingConfig(model={"encoder_features": [4], "decoder_features": [4, 4],
                                                    "lambda_features": []},
                                             network_spacing_mm=4.0, validation={"pairs": 1}), tmp_path / "c.json")
    child = subprocess.Popen([sys.executable, "-m", "svreg_core.cli", "train", "--config", str(config_file),
                              "--synthetic", str(labels), "-o", str(tmp_path / "run"), "--grid-shape", "16", "16",
                              "16", "--epochs", "1", "--steps-per-epoch", "100000", "--workers", "1", "--progress",
                              "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=geo.child_env())
    try:
        assert child.stdout is not None
        for line in child.stdout:  # the first training step: the worker is running
            if json.loads(line).get("stage") == "epoch 1/1":
                break
        children = subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the training process has no worker process"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 1, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("svreg: error: a data-loading worker process stopped (DataLoader worker (pid")
    assert "Run the same command again to resume" in lines[0]
