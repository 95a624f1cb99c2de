"""What a training run records: TensorBoard scalars (read back with TensorBoard's own event reader) and the
training-curve figure."""
from __future__ import annotations

import time

import pytest

from svreg_core.training.history import TENSORBOARD_DIR, TensorBoardLog, curve_terms, write_curve_png


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    reader = event_accumulator.EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def test_scalars_per_epoch_grouped_by_train_and_val(tmp_path) -> None:
    log = TensorBoardLog(tmp_path)
    log.log({"epoch": 1, "train_total": -0.5, "val_dice": 0.61, "val_folding_percent": 0.0, "lr": 1e-4})
    log.log({"epoch": 2, "train_total": -0.6, "val_dice": 0.64, "val_folding_percent": float("nan"), "lr": 9e-5})
    log.close()
    scalars = _scalars(tmp_path)
    assert [s for s, _ in scalars["train/total"]] == [1, 2]
    assert [v for _, v in scalars["val/dice"]] == pytest.approx([0.61, 0.64])
    assert scalars["val/folding_percent"] == [(1, 0.0)]  # a non-finite value is left out, not written as NaN
    assert [v for _, v in scalars["lr"]] == pytest.approx([1e-4, 9e-5])


def test_resumed_run_replaces_the_epochs_an_interrupted_session_wrote(tmp_path) -> None:
    first = TensorBoardLog(tmp_path)
    for epoch, dice in ((1, 0.60), (2, 0.62), (3, 0.63)):  # epoch 3 was written, then the run was killed
        first.log({"epoch": epoch, "val_dice": dice})
    first.close()
    # a resumed session starts later: its event file's name (whole seconds, then a per-process counter that
    # sorts as text, 10 before 9) must sort after the first one's, as TensorBoard reads the files in name order
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    resumed = TensorBoardLog(tmp_path, first_epoch=3)  # the state on disk ends after epoch 2
    resumed.log({"epoch": 3, "val_dice": 0.70})
    resumed.close()
    assert _scalars(tmp_path)["val/dice"] == [(1, pytest.approx(0.60)), (2, pytest.approx(0.62)),
                                              (3, pytest.approx(0.70))]


def test_curve_draws_a_panel_per_non_zero_loss_term(tmp_path) -> None:
    history = [{"epoch": e, "train_total": -0.9 - e / 100, "train_similarity": -0.95 - e / 100,
                "train_regularization": 0.015 + e / 1000, "train_prior": 0.0, "train_labels": 0.0,
                "val_total": -0.91, "val_similarity": -0.96, "val_regularization": 0.016, "val_prior": 1e-8,
                "val_labels": 0.0, "val_dice": 0.5 + e / 100, "val_dice_identity": 0.43,
                "val_folding_percent": 0.0} for e in (1, 2, 3)]
    # a uniform network's prior and an absent label term are zero throughout: no panel of their own
    assert curve_terms(history) == ["total", "similarity", "regularization", "prior"]
    assert curve_terms([{k: (0.0 if k.endswith("prior") else v) for k, v in row.items()} for row in history]) \
        == ["total", "similarity", "regularization"]
    out = write_curve_png(history, tmp_path / "curve.png", title="run")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
