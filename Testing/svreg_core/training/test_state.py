"""Resuming: an interrupted run continued in a new process ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from svreg_core.errors import InputError
from svreg_core.progress import ProgressEvent
from svreg_core.training import trainer
from svreg_core.training.config import TrainingConfig, save_config
from svreg_core.training.history import CURVE_FILE
from svreg_core.training.trainer import train

TINY = {"encoder_features": [4, 8], "decoder_features": [8, 8, 4], "lambda_features": [4]}


@pytest.fixture()
def config(geo, sphere_label_maps, tmp_path) -> TrainingConfig:
    sphere_label_maps(geo, tmp_path / "labels", split=True)
    # real random synthesis (deformations, intensities, noise): resuming must reproduce every draw
    return TrainingConfig(model=TINY, grid_shape=(16, 16, 16), network_spacing_mm=4.0, learning_rate=2e-3,
                          epochs=2, steps_per_epoch=3, num_workers=0, seed=5, validation={"pairs": 1},
                          data={"sources": [{"kind": "synthetic", "path": str(tmp_path / "labels"), "length": 6}]})


def _cli(config_file, run_dir, geo) -> subprocess.CompletedProcess:
    env = {**geo.child_env(), "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same threads as in here
    return subprocess.run([sys.executable, "-m", "svreg_core.cli", "train", "--config", str(config_file),
                           "-o", str(run_dir), "--progress", "none"], capture_output=True, text=True, env=env,
                          timeout=300)


def _interrupt_after_first_epoch(event: ProgressEvent) -> None:
    if event.stage == "epoch" and event.step == 1:
        raise KeyboardInterrupt  # Ctrl-C right after epoch 1 was saved


def test_interrupted_run_resumed_in_a_new_process_is_bit_identical(config, geo, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(trainer, "CURVE_INTERVAL_S", 1e9)  # the training curve drawn only as a session ends
    config_file = save_config(config, tmp_path / "train.yaml")
    straight = _cli(config_file, tmp_path / "straight", geo)
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "interrupted"
    curve_at_epoch_end: list[bool] = []

    def interrupt(event: ProgressEvent) -> None:
        if event.stage == "epoch":
            curve_at_epoch_end.append((run / CURVE_FILE).exists())
        _interrupt_after_first_epoch(event)

    with pytest.raises(KeyboardInterrupt):
        train(config, run, progress=interrupt)
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 1
    assert curve_at_epoch_end == [False] and (run / CURVE_FILE).is_file()  # drawn as the session ended
    resumed = _cli(config_file, run, geo)
    assert resumed.returncode == 0, resumed.stderr
    assert "Trained epoch 2 of 2 in " in resumed.stdout and "(resumed after epoch 1)" in resumed.stdout

    for name in ("last/model.safetensors", "state/model.safetensors", "state/optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows = [list(csv.DictReader((folder / "metrics.csv").open())) for folder in (tmp_path / "straight", run)]
    for a, b in zip(*rows):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_a_finished_run_is_not_trained_again(config, tmp_path) -> None:
    """Resuming a finished run trains nothing, and brings back a checkpoint whose save was killed between its two
    renames (``last/`` moved aside to ``.last.old``)."""
    config = config.replace(epochs=1, validation={"pairs": 0})
    run = tmp_path / "run"
    first = train(config, run)
    before = sorted(p.name for p in run.iterdir())
    (run / "last").rename(run / ".last.old")
    again = train(config, run)
    assert (first.epochs, again.epochs, again.resumed_from, again.steps) == (1, 1, 1, first.steps)
    assert sorted(p.name for p in run.iterdir()) == before


def test_run_folder_with_other_settings_or_foreign_files_is_refused(config, tmp_path) -> None:
    config = config.replace(epochs=1, validation={"pairs": 0})
    train(config, tmp_path / "run")
    # the two values of each setting (it named the settings only)
    with pytest.raises(InputError, match=re.escape(
            f"different configuration (alpha_prime: {json.dumps(config.alpha_prime)} in the run, 0.05 now; "
            f"lambda_max: {json.dumps(config.lambda_max)} in the run, 1.0 now); use the same settings")):
        train(config.replace(alpha_prime=0.05, lambda_max=1.0), tmp_path / "run")
    # more epochs for a finished run was refused as 'epochs differ', without saying how to train on
    with pytest.raises(InputError, match=r"holds a run of 1 epoch\(s\), not 3: its learning rate decays over its own "
                                         r"epochs, .* resume it with --epochs 1, or go on from its weights in a new "
                                         r"folder \(--init .*last\)\.$"):
        train(config.replace(epochs=3), tmp_path / "run")
    with pytest.raises(InputError, match="already holds a training run"):
        train(config, tmp_path / "run", resume=False)
    train(config.replace(num_workers=1), tmp_path / "run")  # runtime settings may change
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no training run"):
        train(config, tmp_path / "other")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("damage", ["truncated weights", "optimizer not safetensors", "state.json without groups",
                                    "state.json a list", "weights of another network"])
def test_a_damaged_resume_state_is_one_plain_error(config, tmp_path, damage: str) -> None:
    """Whatever part of ``state/`` is damaged, resuming says so in one line (it was a SafetensorError, KeyError
    or RuntimeError traceback) and changes nothing."""
    import json

    from safetensors.torch import save_file

    config = config.replace(validation={"pairs": 0})
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=_interrupt_after_first_epoch)
    state = tmp_path / "run" / "state"
    if damage == "truncated weights":
        (state / "model.safetensors").write_bytes((state / "model.safetensors").read_bytes()[:100])
    elif damage == "optimizer not safetensors":
        (state / "optimizer.safetensors").write_bytes(b"PK\x03\x04 a zip file")
    elif damage == "weights of another network":
        save_file({"other.weight": torch.zeros(2)}, str(state / "model.safetensors"))
    else:
        doc = json.loads((state / "state.json").read_text())
        doc.pop("optimizer_groups")
        (state / "state.json").write_text(json.dumps(doc if damage == "state.json without groups" else [doc]))
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    with pytest.raises(InputError) as info:
        train(config, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message and "resume state" in message and "delete that folder" in message
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before


def test_resuming_with_another_number_of_processes_is_refused(config, tmp_path) -> None:
    """The state records the processes the run trains with (here 1); a resume with another count (the state
    edited to say 4, as a 4-GPU run's would) is refused before training: it would change the global batch."""
    import json

    config = config.replace(validation={"pairs": 0})
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=_interrupt_after_first_epoch)
    state = tmp_path / "run" / "state" / "state.json"
    doc = json.loads(state.read_text())
    assert doc["world_size"] == 1
    state.write_text(json.dumps({**doc, "world_size": 4}))
    with pytest.raises(InputError, match=r"trained with 4 process\(es\) and this run has 1: .* resume it with 4"):
        train(config, tmp_path / "run")
