"""Checkpoints: exact round trip, atomic replacement, and one plain error line for every broken checkpoint."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svreg_core.atomic import recover_directory
from svreg_core.errors import InputError, OutputError
from svreg_core.models import ModelInfo, UNetSPR, load_checkpoint, model_summary, read_model_info, save_checkpoint


def _info(model, **changes) -> ModelInfo:
    values = dict(architecture=model.architecture, config=model.config, network_spacing_mm=2.0,
                  size_multiple=model.size_multiple, normalization="robust_normalize", similarity="lncc",
                  lncc_window=9, prior="beta", alpha_prime=0.175, lambda_max=3.35, spr=True, integration_steps=7,
                  svreg_version="0.1.0", training={"data": "IXI 403 T1", "epochs": 3}, name="brain-test")
    values.update(changes)
    return ModelInfo(**values)


@pytest.fixture()
def saved(nets, tmp_path: Path):
    """A small U-Net whose heads are perturbed (a non-trivial prediction), saved to ``tmp_path/ckpt``."""
    model = nets.build("unet-spr", nets.SMALL_UNET)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    folder = save_checkpoint(tmp_path / "ckpt", model, _info(model))
    return model, folder


def _rewrite_json(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))


def _one_line_error(path, match: str) -> str:
    with pytest.raises(InputError, match=match) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_round_trip_gives_identical_predictions(nets, saved) -> None:
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    fixed, moving = nets.pair((16, 16, 16))
    model.eval()
    with torch.no_grad():
        expected = model(fixed, moving)
    for path in (folder, folder / "model.json", folder / "model.safetensors", str(folder)):
        loaded, info = load_checkpoint(path)
        assert isinstance(loaded, UNetSPR) and not loaded.training
        assert info == _info(model)
        with torch.no_grad():
            velocity, weight = loaded(fixed, moving)
        assert torch.equal(velocity, expected[0]) and torch.equal(weight, expected[1])
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == "svreg-checkpoint" and meta["format_version"] == 1
    assert meta["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert meta["architecture"] == "unet-spr" and meta["network_spacing_mm"] == 2.0  # flat, readable by the zoo


def test_transmorph_round_trip(nets, tmp_path: Path) -> None:
    model = nets.build("transmorph-tvf-spr", {**nets.TINY_TRANSMORPH, "time_steps": 2}).eval()
    folder = save_checkpoint(tmp_path / "tm", model, _info(model, integration_steps=7))
    loaded, info = load_checkpoint(folder)
    fixed, moving = nets.pair((32, 32, 32))
    with torch.no_grad():
        assert torch.equal(loaded(fixed, moving)[0], model(fixed, moving)[0])
    assert info.architecture == "transmorph-tvf-spr" and info.size_multiple == 32


def test_saving_again_replaces_atomically_and_refuses_foreign_folders(nets, saved, tmp_path: Path) -> None:
    model, folder = saved
    other = nets.build("unet-spr", {**nets.SMALL_UNET, "uniform": True})
    save_checkpoint(folder, other, _info(other, spr=False, name="second"))
    _, info = load_checkpoint(folder)
    assert info.name == "second" and info.config["uniform"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging or backup folder left
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a checkpoint folder"):
        save_checkpoint(foreign, model, _info(model))
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="does not describe the model"):
        save_checkpoint(tmp_path / "x", model, _info(other))


def test_a_checkpoint_is_readable_as_the_umask_allows(nets, tmp_path: Path) -> None:
    """A checkpoint saved into a shared folder gets the permissions the umask gives (group and others may read it
    under the usual 022), not a private temporary folder's 0700."""
    import os
    import stat

    model = nets.build("unet-spr", nets.SMALL_UNET)
    previous = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "shared", model, _info(model))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in folder.iterdir())


def test_a_sigterm_between_the_renames_comes_after_the_new_checkpoint_is_in_place(nets, saved, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Between moving the old checkpoint aside and moving the new one in, a SIGTERM (handled as Ctrl-C) waits until
    the new checkpoint has its name and the old one is deleted."""
    import os
    import signal

    from svreg_core.interrupts import sigterm_as_interrupt

    _, folder = saved
    other = nets.build("unet-spr", {**nets.SMALL_UNET, "uniform": True})
    rename = Path.rename

    def rename_then_sigterm(source: Path, target):
        moved = rename(source, target)
        if source == folder:  # the old checkpoint moved aside: the new one is not in place yet
            os.kill(os.getpid(), signal.SIGTERM)
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_sigterm)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, other, _info(other, spr=False, name="second"))
    monkeypatch.undo()
    assert load_checkpoint(folder)[1].name == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_recover_a_checkpoint_after_a_kill_between_the_renames(nets, saved, tmp_path: Path) -> None:
    """What a save killed between its renames leaves (the old checkpoint in ``.ckpt.old``, the new one still
    staged in ``.ckpt.partial-*``, no ``ckpt``): the old checkpoint comes back, predicting as before, and nothing
    hidden is left. With the checkpoint in place, only the leftovers go."""
    model, folder = saved
    folder.rename(tmp_path / ".ckpt.old")
    staged = tmp_path / ".ckpt.partial-123-x7y8z9"
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"half written")
    recover_directory(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded, _ = load_checkpoint(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    staged.mkdir()
    recover_directory(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    recover_directory(tmp_path / "missing" / "ckpt")  # nothing to do, no error


def test_missing_folder_and_files(saved, tmp_path: Path) -> None:
    _, folder = saved
    _one_line_error(tmp_path / "nowhere", "does not exist")
    (folder / "model.safetensors").unlink()
    _one_line_error(folder, "model.safetensors is missing")
    (folder / "model.json").unlink()
    _one_line_error(folder, "model.json is missing")


def test_a_training_runs_folder_points_at_its_checkpoints(nets, saved, tmp_path: Path) -> None:
    """``svreg register --model runs/mine`` (the folder given to ``svreg train -o``) said only "model.json is
    missing"."""
    model, _ = saved
    run = tmp_path / "run"
    for name in ("best", "last"):
        save_checkpoint(run / name, model, _info(model))
    message = _one_line_error(run, "is a training run's folder, not a checkpoint")
    assert message.endswith(f"use its checkpoint {run / 'best'} or {run / 'last'}")
    # its resume state holds a model.safetensors too, with no model.json: the line said only "model.json is missing"
    (run / "state").mkdir()
    (run / "state" / "model.safetensors").write_bytes((run / "last" / "model.safetensors").read_bytes())
    message = _one_line_error(run / "state", "model.json is missing; the checkpoints of its training run are")
    assert message.endswith(f"{run / 'best'} and {run / 'last'}")


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux's /proc/self/mem")
@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
def test_unreadable_files(saved, name: str) -> None:
    """A file that exists but cannot be read (another user's 0600 checkpoint; here, for root too, a link to
    /proc/self/mem, whose first bytes give an I/O error): one line, not an OSError traceback."""
    _, folder = saved
    (folder / name).unlink()
    (folder / name).symlink_to("/proc/self/mem")
    _one_line_error(folder, f"cannot read {name} \\(Input/output error\\)")


def test_truncated_weights(saved) -> None:
    _, folder = saved
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _one_line_error(folder, "model.safetensors is corrupt or truncated")


@pytest.mark.parametrize("where", ["header", "data"])
def test_flipped_bytes(saved, where: str) -> None:
    _, folder = saved
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    index = 8 + header // 2 if where == "header" else len(data) - 100
    data[index] ^= 0xFF
    weights.write_bytes(bytes(data))
    _one_line_error(folder, "model.safetensors is corrupt or truncated")


def test_unreadable_safetensors_with_matching_digest(saved) -> None:
    """A file that is not safetensors at all (here: zeros), recorded with its own digest."""
    _, folder = saved
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    _rewrite_json(folder, weights_sha256=hashlib.sha256(b"\x00" * 64).hexdigest())
    _one_line_error(folder, r"model.safetensors is corrupt or truncated \(")


@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_weights_are_named_and_never_unpickled(saved, zipped: bool) -> None:
    """A state dict saved by torch.save under the safetensors name (with or without its digest recorded) was called
    "corrupt or truncated"; it is named for what it is, and never unpickled."""
    model, folder = saved
    weights = folder / "model.safetensors"
    torch.save(model.state_dict(), weights, _use_new_zipfile_serialization=zipped)
    _one_line_error(folder, "model.safetensors is a pickled PyTorch file \\(torch.save\\), not safetensors")
    _rewrite_json(folder, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    _one_line_error(folder, "model.safetensors is a pickled PyTorch file")


def test_invalid_json(saved) -> None:
    _, folder = saved
    (folder / "model.json").write_text('{"format": "svreg-checkpoint", ')
    _one_line_error(folder, "model.json is not valid JSON")
    for text in ('{"format": "svreg-checkpoint", "training": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 '{"format": "svreg-checkpoint", "lambda_max": 1' + "0" * 5000 + "}"):
        (folder / "model.json").write_text(text)
        _one_line_error(folder, r"model.json is not valid JSON \(")


@pytest.mark.parametrize("changes, match", [
    ({"format": "something-else"}, "not an svreg checkpoint"),
    ({"format_version": 2}, "format version 2"),
    ({"lambda_max": "3"}, "'lambda_max' must be a positive number"),
    ({"spr": 1}, "'spr' must be true or false"),
    ({"integration_steps": 7.0}, "'integration_steps' must be an integer"),
    ({"colour": "red"}, "unknown field"),
    ({"weights_sha256": None}, "lacks the SHA-256"),
    ({"architecture": "voxelmorph"}, "unknown network architecture 'voxelmorph'"),
    ({"size_multiple": 32}, "size multiple 32"),
    # found only when registering before (after reading the images), or never (the normalisation)
    ({"network_spacing_mm": float("inf")}, "'network_spacing_mm' must be a positive number, got inf"),
    ({"lambda_max": 10 ** 400}, r"'lambda_max' must be a positive number, got 1000\d+\.\.\.$"),
    ({"similarity": "ncc"}, "its SPR loss cannot be used: unknown similarity 'ncc'"),
    ({"prior": "laplace"}, "its SPR loss cannot be used: unknown prior 'laplace'"),
    ({"lncc_window": 4}, "its SPR loss cannot be used: lncc_window must be an odd number"),
    ({"integration_steps": 1000}, "its SPR loss cannot be used: integration_steps 1000 is out of range"),
    ({"lambda_max": 5000.0}, "its SPR loss cannot be used: lambda_max 5000 is out of range"),
    ({"normalization": "zscore"}, "unknown input normalisation 'zscore'"),
])
def test_bad_descriptions(saved, changes: dict, match: str) -> None:
    _, folder = saved
    _rewrite_json(folder, **changes)
    _one_line_error(folder, match)


@pytest.mark.parametrize("changes, match", [
    ({"architecture": "voxelmorph"}, "unknown network architecture 'voxelmorph'"),
    ({"config": {"encoder_features": [4, 8, 8], "colour": "red"}}, r"unknown configuration key\(s\) colour for"),
])
def test_the_description_alone_refuses_an_unknown_network(saved, changes: dict, match: str) -> None:
    """The command line reads model.json alone before any image: a network of a newer svreg (an unknown architecture
    or configuration key) was found only when the weights were loaded, after the images were read (in a batch,
    those of every pair)."""
    _, folder = saved
    _rewrite_json(folder, **changes)
    with pytest.raises(InputError, match=match) as err:
        read_model_info(folder)
    assert str(err.value).startswith(f"checkpoint {folder}: ") and "\n" not in str(err.value)


def test_missing_field(saved) -> None:
    _, folder = saved
    meta = json.loads((folder / "model.json").read_text())
    del meta["network_spacing_mm"]
    (folder / "model.json").write_text(json.dumps(meta))
    _one_line_error(folder, "lacks field.*network_spacing_mm")


def test_weights_of_another_configuration(saved) -> None:
    model, folder = saved
    _rewrite_json(folder, config={**model.config, "encoder_features": [4, 8, 16]})
    message = _one_line_error(folder, "does not match architecture unet-spr")
    assert "shape mismatch" in message


def test_missing_and_unexpected_tensors(saved) -> None:
    _, folder = saved
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    name = "velocity_head.bias"
    tensors["extra.weight"] = tensors.pop(name)
    save_file(tensors, str(weights))
    _rewrite_json(folder, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    message = _one_line_error(folder, "does not match architecture unet-spr")
    assert f"missing tensor(s) {name}" in message and "unexpected tensor(s) extra.weight" in message


def test_weights_stored_in_another_float_type(saved) -> None:
    """Half-precision weights load, rounded to the network's float32; 8-bit floats (a quantised model), which torch
    cannot even check for NaN, are refused in one line naming the type, not with a NotImplementedError traceback."""
    model, folder = saved
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    for dtype in (torch.float16, torch.float8_e4m3fn):
        save_file({name: t.to(dtype) for name, t in tensors.items()}, str(weights))
        _rewrite_json(folder, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
        if dtype == torch.float16:
            loaded, _ = load_checkpoint(folder)
            assert all(p.dtype == torch.float32 for p in loaded.parameters())
            assert torch.equal(loaded.velocity_head.weight, tensors["velocity_head.weight"].half().float())
        else:
            message = _one_line_error(folder, "does not match architecture unet-spr")
            assert "type mismatch encoder.0.0.weight torch.float8_e4m3fn instead of torch.float32" in message


def test_model_info_from_dict_round_trip_and_errors(saved) -> None:
    model, _ = saved
    info = _info(model)
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    minimal = {k: v for k, v in info.to_dict().items() if k not in ("training", "name")}
    assert ModelInfo.from_dict({**minimal, "lambda_max": 3}).lambda_max == 3.0
    assert isinstance(ModelInfo.from_dict({**minimal, "lambda_max": 3}).lambda_max, float)
    with pytest.raises(InputError, match="JSON object"):
        ModelInfo.from_dict([1, 2])
    with pytest.raises(InputError, match="'size_multiple' must be a positive integer"):
        ModelInfo.from_dict({**minimal, "size_multiple": True})


def test_model_summary_is_one_informative_line(saved) -> None:
    model, _ = saved
    line = model_summary(_info(model, training={"data": "IXI 403 T1\nbrains"}))
    assert "\n" not in line
    for part in ("brain-test", "unet-spr", "2 mm", "IXI 403 T1 brains", "SPR"):
        assert part in line
    assert "unrecorded" in model_summary(_info(model, training={}, name=""))


def test_non_finite_weights_are_refused_when_loading(saved) -> None:
    """A diverged training's NaN weights: refused at load, not a NaN displacement after the whole run."""
    _, folder = saved
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["velocity_head.weight"][0, 0, 0, 0, 0] = float("nan")
    tensors["lambda_head.1.bias"] = torch.full_like(tensors["lambda_head.1.bias"], float("inf"))
    save_file(tensors, str(weights))
    _rewrite_json(folder, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    message = _one_line_error(folder, "model.safetensors holds NaN or infinite weights")
    assert "velocity_head.weight" in message and "lambda_head.1.bias" in message
