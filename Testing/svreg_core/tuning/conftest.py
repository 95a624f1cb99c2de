"""Fixtures of the tuning tests: a tiny real labelled validation set and helpers to run ``svreg tune``.

The validation set is built from the MNI152 template and tissue maps bundled inside nilearn
(6 mm grid, ~28x34x28 voxels, labels GM/WM; moving = template pulled through a known smooth field).
Registration parameters are chosen so one pair registers in about a second on one CPU thread.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nilearn", reason="the tuning tests build their data from nilearn's bundled MNI152 template")

#: Fixed registration settings of every test trial (fast: two coarse levels, 10 iterations each).
FAST = ["--level-spacings", "12", "6", "--iterations", "10", "10", "--no-affine", "--device", "cpu"]

#: Keys every JSON progress line must carry.
JSON_KEYS = {"event", "trial", "state", "value", "params", "best_value", "best_params", "elapsed_s", "folding"}


@pytest.fixture(scope="session")
def demo_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with two pair sub-folders (pair01, pair02)."""
    from svreg_core.tuning.demo import make_demo_pairs

    folder = tmp_path_factory.mktemp("validation")
    make_demo_pairs(folder, n_pairs=2, spacing=6.0, amplitude_mm=6.0, seed=0)
    return folder


@pytest.fixture(scope="session")
def one_pair_list(demo_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV pair list holding only pair01 (absolute paths) — for the multi-process tests."""
    p = demo_pairs / "pair01"
    path = tmp_path_factory.mktemp("lists") / "pairs.csv"
    path.write_text("name,fixed,moving,fixed_labels,moving_labels\n"
                    f"p1,{p / 'fixed.nii.gz'},{p / 'moving.nii.gz'},{p / 'fixed_labels.nii.gz'},"
                    f"{p / 'moving_labels.nii.gz'}\n")
    return path


def parse_args(*argv: str) -> Any:
    """``svreg tune ARGV`` parsed by the real command-line parser."""
    from svreg_core.cli import build_parser

    return build_parser()[0].parse_args(["tune", *[str(a) for a in argv]])


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "svreg_core.cli", "tune", *[str(a) for a in argv]]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def start_cli(*argv: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_command(*argv), cwd=str(cwd), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)


def read_json_until(proc: subprocess.Popen, stop: Callable[[dict], bool], timeout: float = 120.0) -> list[dict]:
    """Read JSON lines from ``proc.stdout`` until ``stop(event)`` is true (or the process ends)."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        events.append(json.loads(line))
        if stop(events[-1]):
            return events
    raise AssertionError(f"condition not reached; events: {[e['event'] for e in events]}; "
                         f"stderr: {proc.stderr.read() if proc.poll() is not None and proc.stderr else ''}")


def wait_for_heartbeat(db: Path, number: int, timeout: float = 60.0) -> None:
    """Wait until Optuna has recorded the first heartbeat of trial ``number`` in the SQLite file ``db``.

    Optuna records it from a thread started with the trial: a worker killed before that leaves a
    RUNNING trial without any heartbeat, which no storage can tell from a live one, so the tests kill
    only after it.
    """
    import contextlib
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            (count,) = con.execute("SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id "
                                   "WHERE t.number = ?", (number,)).fetchone()
        if count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no heartbeat of trial {number} within {timeout} s")


def kill_mid_trial(proc: subprocess.Popen, db: Path, stop: Callable[[dict], bool]) -> list[dict]:
    """Read ``proc``'s JSON events until ``stop``, wait for the last event's trial to have a heartbeat in
    ``db``, then SIGKILL the worker (it is killed in any case). Returns the events read."""
    import signal

    try:
        events = read_json_until(proc, stop)
        wait_for_heartbeat(db, events[-1]["trial"])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    return events


def load(storage: str | Path, name: str) -> Any:
    from svreg_core.tuning.study import load_study, open_storage

    return load_study(open_storage(storage, must_exist=True), name)


@pytest.fixture(scope="session")
def helpers() -> Any:
    """The helper functions above (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(FAST=FAST, JSON_KEYS=JSON_KEYS, parse_args=parse_args, cli_command=cli_command,
                           child_env=child_env, start_cli=start_cli, read_json_until=read_json_until, load=load,
                           wait_for_heartbeat=wait_for_heartbeat, kill_mid_trial=kill_mid_trial)
