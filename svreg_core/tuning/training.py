"""The training objective of ``svreg tune`` (METHOD.md §5): every trial trains a network.

A trial trains :func:`svreg_core.training.trainer.train` with its α′, λ_max (and learning rate) on a short
schedule (``epochs`` per trial) in a run folder of its own, ``RUNS_DIR/trial-<number>``, reports every
epoch's validation Dice (so the median pruner stops bad trials at epoch granularity) and scores the best
epoch. A trial is never resumed: one re-run after its worker died has a new number, so a fresh folder, and
the dead trial's folder is left as it was.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from svreg_core.errors import InputError
from svreg_core.progress import ProgressEvent
from svreg_core.training.config import TrainingConfig
from svreg_core.tuning.objective import StepReporter

if TYPE_CHECKING:
    from svreg_core.tuning.study import Direction

#: ``svreg train``'s data flags that ``svreg tune`` passes on (``--templates`` too): metavar, help.
DATA_FLAGS = {"data": ("FOLDER", "folder of images: all inter-subject pairs"),
              "atlas": ("IMAGE", "with --data: atlas-to-subject pairs, the atlas fixed"),
              "dataset_json": ("FILE", "a Learn2Reg / Decathlon dataset.json"),
              "csv": ("FILE", "a CSV pair list: fixed,moving[,fixed_labels,moving_labels]"),
              "synthetic": ("LABEL_DIR", "SynthMorph-style pairs synthesised from the label maps in this folder"),
              "val_data": ("PATH", "validation pairs: a folder of images, a dataset.json or a CSV pair list"),
              "val_fraction": ("F", "share of the training subjects held out for validation (default 0.1)")}


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The base configuration of every trial: ``--train-config`` and the data flags, read by ``svreg train``'s
    own parser and :func:`~svreg_core.training.cli.resolve_config`, then ``--device``, ``--labels`` and
    ``--label-interpolation nearest`` (the validation Dice's labels and label warping); it must have
    validation pairs (checked by building the data once, before any trial)."""
    from svreg_core.training.cli import add_train_arguments, resolve_config
    from svreg_core.training.loaders import build_data

    parser = argparse.ArgumentParser(prog="svreg tune")
    add_train_arguments(parser)
    # --output is required by svreg train; the trials' own folders are under --runs-dir
    argv = ["--output", "-", *(["--config", args.train_config] if args.train_config else []),
            *(["--templates"] if args.templates else [])]
    for name in (n for n in DATA_FLAGS if getattr(args, n) is not None):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    config = resolve_config(parser.parse_args(argv))
    config = config.replace(device=args.device) if args.device else config
    validation = config.validation
    if args.labels:  # scored by the trials' validation Dice, as by a pairwise study's
        validation = dataclasses.replace(validation, labels=tuple(args.labels))
    if args.label_interpolation != "linear":  # the configuration's own unless asked (linear: svreg tune's default)
        validation = dataclasses.replace(validation, label_interpolation=args.label_interpolation)
    config = config.replace(validation=validation)
    if build_data(config).validation is None:
        raise InputError("the training objective scores the validation Dice, but the training has no validation "
                         "pairs: give --val-data or a validation fraction above 0.")
    return config


class TrainingDice:
    """Trains a network per trial in ``runs_dir/trial-NNNN`` for ``epochs`` (the learning rate decays over
    these); one step per epoch: its validation mean Dice (and folding percent)."""

    name, aggregate, value_name = "training-dice", "max", "best validation Dice"
    direction: Direction = "maximize"

    def __init__(self, runs_dir: str | Path, epochs: int) -> None:
        self.runs_dir = Path(runs_dir).absolute()
        self.epochs = epochs

    def step_labels(self) -> list[str]:
        return [f"epoch {e}" for e in range(1, self.epochs + 1)]

    def evaluate(self, settings: TrainingConfig, steps: StepReporter) -> None:
        from svreg_core.training.trainer import train

        def on_progress(event: ProgressEvent) -> None:
            if event.stage != "epoch":
                return
            if "val_dice" not in event.values:
                raise InputError("the validation pairs gave no Dice (do they carry label maps?)")
            steps.report(event.values["val_dice"], event.values.get("val_folding_percent"))

        run_dir = self.runs_dir / f"trial-{steps.trial.number:04d}"
        steps.trial.set_user_attr("run_dir", str(run_dir))
        train(settings.replace(epochs=self.epochs), run_dir, progress=on_progress, resume=False,
              command=f"svreg tune (trial {steps.trial.number})")
