"""TensorBoard scalars of a training run, read back with TensorBoard's own event reader."""
from __future__ import annotations

import pytest

from svreg_core.training.history import TENSORBOARD_DIR, TensorBoardLog

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
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
    resumed = TensorBoardLog(tmp_path, first_epoch=3)  # the state on disk ends after epoch 2
    resumed.log({"epoch": 3, "val_dice": 0.70})
    resumed.close()
    assert _scalars(tmp_path)["val/dice"] == [(1, pytest.approx(0.60)), (2, pytest.approx(0.62)),
                                              (3, pytest.approx(0.70))]
