"""Training a tiny unet-spr end to end: the loss falls, Dice beats the identity, the run folder is complete."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from svreg_core.errors import InputError
from svreg_core.models import load_checkpoint
from svreg_core.progress import ProgressEvent
from svreg_core.training import trainer
from svreg_core.training.config import TrainingConfig
from svreg_core.training.history import CURVE_FILE
from svreg_core.training.trainer import build_network, train

TINY = {"encoder_features": [8, 8], "decoder_features": [8, 8, 8], "lambda_features": [4]}
#: Synthesis without random deformation or intensity corruption: pairs differ only in their label maps'
#: shapes and in their random label intensities, so a few steps of training show.
PLAIN = {"velocity_std_max": 0.0, "noise_std_max": 0.0, "bias_std_max": 0.0, "label_std_max": 0.0,
         "gamma_std": 0.0, "blur_sigma": [0.5, 0.5], "skull_strip_probability": 0.0}


def blob_labels(n: int, radii: tuple[float, float, float], inner: tuple[float, float, float]) -> np.ndarray:
    """An ellipsoid (labels 2 and 3, split along j) holding a sphere (label 4) offset by ``inner`` voxels."""
    ijk = np.indices((n, n, n), dtype=np.float64).transpose(1, 2, 3, 0) - (n - 1) / 2
    labels = np.zeros((n, n, n), np.int16)
    outer = ((ijk / np.asarray(radii)) ** 2).sum(-1) < 1
    labels[outer] = 2
    labels[outer & (ijk[..., 1] > 0)] = 3
    labels[((ijk - np.asarray(inner)) ** 2).sum(-1) < (n / 8) ** 2] = 4
    return labels


def grid_affine(n: int, spacing: float) -> np.ndarray:
    """A RAS grid of ``n³`` voxels of ``spacing`` mm centred on the origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (n - 1) / 2
    return affine


def write_label_maps(geo, folder, n: int = 32, spacing: float = 2.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    affine = grid_affine(n, spacing)
    for name, radii, inner in (("a", (0.28, 0.28, 0.28), (-3, 0, 0)), ("b", (0.38, 0.25, 0.22), (3, 1, 0))):
        geo.save_nifti(blob_labels(n, tuple(r * n for r in radii), inner), affine, folder / f"{name}_seg.nii.gz")


def test_synthetic_training_lowers_the_loss_and_writes_the_run_folder(geo, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(trainer, "CURVE_INTERVAL_S", 0.0)  # the training curve redrawn after every epoch
    write_label_maps(geo, tmp_path / "labels")
    config = TrainingConfig(model=TINY, grid_shape=(32, 32, 32), learning_rate=3e-3, epochs=3, steps_per_epoch=6,
                            num_workers=0, seed=1, validation={"pairs": 2},
                            data={"sources": [{"kind": "synthetic", "path": str(tmp_path / "labels"), "length": 12,
                                               "synthesis": PLAIN}]})
    run = tmp_path / "run"
    events: list[ProgressEvent] = []
    curves: list[bytes] = []  # the training curve as each epoch ends

    def follow(event: ProgressEvent) -> None:
        events.append(event)
        if event.stage == "epoch":
            curves.append((run / CURVE_FILE).read_bytes())

    summary = train(config, run, progress=follow, command="svreg train --test")
    assert len(set(curves)) == 3  # drawn anew after every epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_total"]) for r in rows]
    assert losses[-1] < losses[0] - 0.02
    assert all(float(r["val_folding_percent"]) == 0.0 for r in rows)
    assert float(rows[0]["lr"]) == 3e-3 and float(rows[2]["lr"]) == pytest.approx(3e-3 * (1 / 3) ** 0.9)
    assert summary.epochs == 3 and summary.steps == 18 and summary.best_metric == "dice"
    assert (run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run / "state").iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                                "state.json"]
    model, info = load_checkpoint(run / "last")
    assert (info.architecture, info.alpha_prime, info.lambda_max, info.similarity, info.integration_steps,
            info.network_spacing_mm, info.spr) == ("unet-spr", 0.175, 3.35, "lncc", 7, 2.0, True)
    assert info.training["data"] == f"synthetic:{tmp_path / 'labels'}"
    assert info.training["command"] == "svreg train --test" and info.training["epochs"] == 3
    best_model, best_info = load_checkpoint(run / "best")
    assert best_info.training["epochs"] == summary.best_epoch
    # the progress reports per-step loss terms and one line per epoch
    steps = [e for e in events if e.stage.startswith("epoch ")]
    assert len(steps) == 18 and set(steps[0].values) == {"total", "similarity", "regularization", "prior"}
    assert [e.step for e in events if e.stage == "epoch"] == [1, 2, 3]
    assert json.loads((run / "state" / "state.json").read_text())["epoch"] == 3


def test_training_on_real_pairs_beats_the_identitys_dice(geo, tmp_path) -> None:
    # two subjects (image + label map); the training pairs are also the validation pairs
    folder = tmp_path / "subjects"
    write_label_maps(geo, folder, n=16, spacing=4.0)
    rng = np.random.default_rng(0)
    intensity = np.zeros(5, np.float32)
    intensity[[2, 3, 4]] = 0.5, 0.7, 1.0
    for name in ("a", "b"):
        labels = np.asarray(nib.load(folder / f"{name}_seg.nii.gz").dataobj)
        image = intensity[labels] + rng.normal(0, 0.02, labels.shape).astype(np.float32)
        geo.save_nifti(image, grid_affine(16, 4.0), folder / f"{name}.nii.gz")
    config = TrainingConfig(model=TINY, grid_shape=(16, 16, 16), network_spacing_mm=4.0, learning_rate=1e-2,
                            epochs=3, steps_per_epoch=30, num_workers=0,
                            data={"sources": [{"kind": "folder", "path": str(folder)}], "prealign": False,
                                  "augment": False},
                            validation={"sources": [{"kind": "folder", "path": str(folder)}]})
    summary = train(config, tmp_path / "run")
    last = summary.last
    assert last["val_dice"] > last["val_dice_identity"] + 0.05
    assert summary.best_metric == "dice" and summary.best_epoch == 3


def two_step_config(geo, tmp_path) -> TrainingConfig:
    """A tiny U-Net trained for two steps on synthetic pairs from label maps written under ``tmp_path``."""
    write_label_maps(geo, tmp_path / "labels")
    return TrainingConfig(model=TINY, grid_shape=(32, 32, 32), epochs=1, steps_per_epoch=2, num_workers=0,
                          seed=1, validation={"pairs": 0},
                          data={"sources": [{"kind": "synthetic", "path": str(tmp_path / "labels"), "length": 4,
                                             "synthesis": PLAIN}]})


def test_fine_tuning_starts_from_a_checkpoint_and_refuses_another_architecture(geo, tmp_path) -> None:
    config = two_step_config(geo, tmp_path)
    train(config, tmp_path / "first")
    trained, _ = load_checkpoint(tmp_path / "first" / "last")
    tuned = config.replace(init_weights=str(tmp_path / "first" / "last"), seed=2)
    start = build_network(tuned).state_dict()
    assert all(torch.equal(start[name], value) for name, value in trained.state_dict().items())
    assert not all(torch.equal(value, build_network(config.replace(seed=2)).state_dict()[name])
                   for name, value in start.items())
    train(tuned, tmp_path / "tuned")
    assert load_checkpoint(tmp_path / "tuned" / "last")[1].training["init_weights"] == str(tmp_path / "first" / "last")
    wider = tuned.replace(model={**TINY, "encoder_features": [8, 16]})
    with pytest.raises(InputError, match=r"options encoder_features differ .* fine-tune it\.$"):
        build_network(wider)
    with pytest.raises(InputError, match="uniform"):
        build_network(tuned.replace(spr=False))
    coarser = tuned.network_spacing_mm * 1.5  # its velocities are voxels of its own grid: not silently rescaled
    with pytest.raises(InputError, match=rf"trained on a {tuned.network_spacing_mm:g} mm network grid and this run's "
                                         rf"is {coarser:g} mm .* --spacing {tuned.network_spacing_mm:g}"):
        build_network(tuned.replace(network_spacing_mm=coarser))
    with pytest.raises(InputError, match="neither a shipped model"):
        build_network(tuned.replace(init_weights=str(tmp_path / "missing")))


def test_a_plain_or_hyper_checkpoint_starts_a_hyper_run_and_not_the_reverse(geo, tmp_path) -> None:
    plain = two_step_config(geo, tmp_path)
    train(plain, tmp_path / "plain")
    trained, _ = load_checkpoint(tmp_path / "plain" / "last")
    ranges = {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 10.0]}
    hyper = plain.replace(hyper=ranges, init_weights=str(tmp_path / "plain" / "last"), seed=2)
    network = build_network(hyper)
    start = network.state_dict()
    assert all(torch.equal(start[name], value) for name, value in trained.state_dict().items())
    film = [name for name in start if name not in trained.state_dict()]
    assert film and all(name.startswith("film.") for name in film)
    # the FiLM starts near the identity: the hyper network predicts what the plain one does at any code
    fixed, moving = torch.rand(2, 1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        velocity, lam = trained(fixed, moving)
        for codes in ([0.05, 0.5], [0.5, 10.0]):
            v, lam_codes = network(fixed, moving, torch.tensor([codes]))
            scale = velocity.abs().max()
            assert 0 < (v - velocity).abs().max() < 0.2 * scale
            assert (lam_codes - lam).abs().max() < 0.05
    train(hyper, tmp_path / "hyper")
    with pytest.raises(InputError, match=r"options hyper differ"):
        build_network(plain.replace(init_weights=str(tmp_path / "hyper" / "last")))
    # a hyper checkpoint starts a hyper run over wider ranges with every weight, the FiLM's included
    trained_hyper, _ = load_checkpoint(tmp_path / "hyper" / "last")
    wider = hyper.replace(hyper={"alpha_prime": [0.005, 0.5], "lambda_max": [0.5, 10.0]},
                          init_weights=str(tmp_path / "hyper" / "last"))
    start = build_network(wider).state_dict()
    assert start.keys() == trained_hyper.state_dict().keys()
    assert all(torch.equal(start[name], value) for name, value in trained_hyper.state_dict().items())
    # ... and with a fresh λ head: that head is the run's seeded one, the rest the checkpoint's
    fresh = build_network(wider.replace(init_fresh=("lambda_head",))).state_dict()
    seeded = build_network(wider.replace(init_weights=None)).state_dict()
    head = [name for name in fresh if name.startswith("lambda_head.")]
    assert head and all(torch.equal(fresh[name], seeded[name]) for name in head)
    assert not all(torch.equal(fresh[name], start[name]) for name in head)
    assert all(torch.equal(fresh[name], start[name]) for name in fresh if name not in head)
    with pytest.raises(InputError, match=r"no submodule 'lambda_hat' \(its modules: encoder, decoder, velocity_head, "
                                         r"lambda_head, film; a part of one as e\.g\. decoder\.0\)\.$"):
        build_network(wider.replace(init_fresh=("lambda_hat",)))


def test_a_grid_the_architecture_cannot_take_is_refused_before_the_data_are_read(tmp_path) -> None:
    """TransMorph-TVF-SPR needs grids that are multiples of 32: the default grid (80 x 96 x 96) is refused with the
    multiple before any image is read (here the data folder does not even exist; it was read first)."""
    config = TrainingConfig(architecture="transmorph-tvf-spr", data={"sources": [
        {"kind": "folder", "path": str(tmp_path / "no such folder")}]})
    with pytest.raises(InputError, match=r"grid shape 80 96 96 must be a multiple of 32"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_diverged_step_stops_with_the_way_to_go_on(geo, tmp_path, monkeypatch) -> None:
    """A non-finite loss (here injected at the first step) stops the run with one line naming the epoch, the step
    and how to go on (a new folder with a lower --lr, from the last good epoch): rerunning the same folder with
    another --lr is refused as another configuration."""
    from svreg_core.training import trainer

    real_step = trainer.training_step

    def diverging(*args, **kwargs):
        terms, fields = real_step(*args, **kwargs)
        return {**terms, "total": terms["total"] * float("nan")}, fields

    monkeypatch.setattr(trainer, "training_step", diverging)
    config = two_step_config(geo, tmp_path)
    with pytest.raises(InputError) as info:
        train(config, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("training diverged: the loss is not finite at epoch 1, step 1;")
    assert "new folder with a lower learning rate (--lr)" in message and str(tmp_path / "run" / "last") in message
