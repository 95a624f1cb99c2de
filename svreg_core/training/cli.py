"""``svreg train``: arguments and entry point (wired into ``svreg_core.cli`` as a subcommand).

Examples::

    svreg train --data subjects/ --atlas atlas.nii.gz -o runs/ixi          # atlas-to-subject pairs
    svreg train --synthetic synthseg_labels/ --epochs 100 -o runs/synth     # SynthMorph-style synthesis
    svreg train --config train.yaml --lr 2e-4 -o runs/a                     # a config file, one override
    svreg train --config scripts/brain-unet-spr.yaml --data subjects/ --init default -o runs/tuned  # fine-tune
    svreg train --templates --hyper-alpha-prime 0.05 0.5 --hyper-lambda-max 0.5 10 -o runs/hyper  # HyperSPR
    torchrun --nproc_per_node 4 -m svreg_core.cli train --config train.yaml -o runs/ddp

Running the same command again resumes the run after its last finished epoch. The flags override the
configuration file; the resolved configuration is saved as ``RUN_DIR/config.yaml``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svreg_core.errors import InputError, SvregError
from svreg_core.interrupts import interrupted_status
from svreg_core.training.config import DataSource, TrainingConfig, load_config

if TYPE_CHECKING:
    from svreg_core.training.trainer import TrainingSummary

PROGRESS_MODES = ("auto", "bar", "json", "none")

#: Seconds a torchrun process other than rank 0 waits before reporting an error of its own. Every rank checks the same
#: inputs, so rank 0 usually stops with the same error: it prints it, torchrun then ends the other processes, and the
#: error is printed once. A process still running after this long had an error rank 0 did not (a file missing on
#: its node only) and prints it.
PEER_REPORT_DELAY_S = 30.0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``svreg train`` arguments to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="training configuration, YAML or JSON (flags override it)")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR",
                        help="run folder: checkpoints best/ and last/, metrics.csv, training_curve.png, resume "
                             "state; an existing run folder with the same settings is resumed")
    data = parser.add_argument_group("training data (several are mixed with equal weights; they replace the "
                                     "configuration file's data sources)")
    data.add_argument("--data", metavar="FOLDER", help="folder of images (sub01.nii.gz + sub01_seg.nii.gz, or one "
                                                       "sub-folder per subject): all inter-subject pairs")
    data.add_argument("--atlas", metavar="IMAGE", help="with --data: atlas-to-subject pairs, the atlas fixed")
    data.add_argument("--dataset-json", metavar="FILE", help="a Learn2Reg / Decathlon dataset.json")
    data.add_argument("--csv", metavar="FILE", help="a CSV pair list: fixed,moving[,fixed_labels,moving_labels]")
    data.add_argument("--synthetic", metavar="LABEL_DIR",
                      help="SynthMorph-style pairs synthesised from the label maps in this folder")
    data.add_argument("--templates", action="store_true",
                      help="randomly deformed and augmented copies of the installed brain templates")
    val = parser.add_argument_group("validation (mean Dice and folding after every epoch)")
    val.add_argument("--val-data", metavar="PATH",
                     help="validation pairs: a folder of images (atlas-to-subject pairs when the training folder has "
                          "an --atlas), a dataset.json or a CSV (.csv, or tab-separated .tsv) pair list")
    val.add_argument("--val-fraction", type=float, metavar="F",
                     help="share of the training subjects held out for validation when --val-data is not given "
                          "(default 0.1; 0 turns validation off)")
    model = parser.add_argument_group("network and loss")
    model.add_argument("--architecture", help="network: unet-spr (default, CPU-friendly) or transmorph-tvf-spr "
                       "(its grid must be a multiple of 32 along every axis, e.g. --grid-shape 96 96 96)")
    model.add_argument("--alpha-prime", type=float, help="hyperprior strength α′ (default 0.175)")
    model.add_argument("--lambda-max", type=float, help="weight λ_max of the λ-weighted diffusion (default 3.35)")
    model.add_argument("--hyper-alpha-prime", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="train a HyperSPR network over this α′ range (sampled log-uniformly per step); "
                            "the regularisation can then be chosen at registration (svreg register --alpha-prime)")
    model.add_argument("--hyper-lambda-max", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="the same for λ_max; a code without a range stays fixed at --alpha-prime/--lambda-max")
    model.add_argument("--label-weight", type=float, metavar="W",
                       help="add W x the label maps' soft Dice to the loss (SynthMorph's objective; every pair "
                            "needs label maps; default 0)")
    model.add_argument("--no-spr", action="store_true",
                       help="uniform regulariser (λ ≡ 1, no λ head) instead of the learned λ(x)")
    model.add_argument("--init", metavar="MODEL",
                       help="fine-tune: start from this checkpoint's weights (a shipped model's name, 'default', or "
                            "a checkpoint folder) instead of a random initialisation; its architecture and "
                            "options must match this run's (a plain model may start a hyper run)")
    model.add_argument("--init-fresh", nargs="+", metavar="MODULE",
                       help="with --init: these submodules keep a fresh initialisation instead of the checkpoint's "
                            "weights (e.g. lambda_head, when its λ has saturated at 1)")
    model.add_argument("--spacing", type=float, metavar="MM", help="network grid voxel size in mm (default 2)")
    model.add_argument("--grid-shape", type=int, nargs=3, metavar=("I", "J", "K"),
                       help="network grid shape in voxels (default 80 96 96)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, help="training epochs (default 300)")
    opt.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: one pass over the pairs)")
    opt.add_argument("--batch-size", type=int, help="pairs per step and process (default 1)")
    opt.add_argument("--lr", type=float, help="initial AdamW learning rate (default 1e-4, polynomial decay 0.9)")
    opt.add_argument("--workers", type=int, help="data-loading worker processes (default 2)")
    opt.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto (CUDA when present), cpu or cuda")
    opt.add_argument("--seed", type=int, help="seed of initialisation, sampling, augmentation and synthesis")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="progress bar on a terminal (auto), JSON lines on stdout, or none")


def _generated_source(config: TrainingConfig, kind: str, path: str | None = None) -> DataSource:
    """The source of ``--synthetic PATH`` or ``--templates`` (``kind``): the flag replaces the path of the configuration
    file's source of that kind and keeps its pairs per epoch (``length``) and synthesis options."""
    previous = next((s for s in config.data.sources if s.kind == kind), None)
    if previous is None:
        return DataSource(kind, path)
    return DataSource(kind, path, length=previous.length, synthesis=previous.synthesis)


def _data_sources(args: argparse.Namespace, config: TrainingConfig) -> tuple[DataSource, ...]:
    """The data flags as sources; ``--synthetic`` and ``--templates`` keep the length and synthesis options of the
    file's source of their kind (:func:`_generated_source`)."""
    if args.atlas and not args.data:
        raise InputError("--atlas goes with --data FOLDER (atlas-to-subject pairs).")
    sources = []
    if args.data:
        sources.append(DataSource("folder", args.data, atlas=args.atlas))
    if args.dataset_json:
        sources.append(DataSource("dataset_json", args.dataset_json))
    if args.csv:
        sources.append(DataSource("csv", args.csv))
    if args.synthetic:
        sources.append(_generated_source(config, "synthetic", args.synthetic))
    if args.templates:
        sources.append(_generated_source(config, "templates"))
    return tuple(sources)


def _validation_source(path: str, sources: tuple[DataSource, ...]) -> DataSource:
    """``--val-data PATH`` as a source; a folder gives atlas-to-subject pairs when the training ``sources``' folders
    do (with their one atlas), the pairs the network learns, else all inter-subject pairs."""
    p = Path(path)
    if p.is_dir():
        atlases = {s.atlas for s in sources if s.kind == "folder"}
        return DataSource("folder", path, atlas=atlases.pop() if len(atlases) == 1 else None)
    if p.suffix.lower() == ".json":
        return DataSource("dataset_json", path)
    if p.suffix.lower() in (".csv", ".tsv"):  # read as --csv reads them (a .tsv tab-separated)
        return DataSource("csv", path)
    if not p.exists():
        raise InputError(f"validation data not found: {p}")
    raise InputError(f"--val-data {p} is neither a folder, a .json dataset description nor a .csv/.tsv pair list.")


def resolve_config(args: argparse.Namespace) -> TrainingConfig:
    """The configuration file (or the defaults) with the command-line overrides applied."""
    config = load_config(args.config) if args.config else TrainingConfig()
    flags = {"architecture": args.architecture, "alpha_prime": args.alpha_prime, "lambda_max": args.lambda_max,
             "label_weight": args.label_weight,
             "network_spacing_mm": args.spacing, "grid_shape": args.grid_shape, "epochs": args.epochs,
             "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
             "learning_rate": args.lr, "num_workers": args.workers, "device": args.device, "seed": args.seed,
             "init_weights": args.init, "init_fresh": args.init_fresh}
    changes = {k: v for k, v in flags.items() if v is not None}
    if args.no_spr:
        changes["spr"] = False
    if args.hyper_alpha_prime or args.hyper_lambda_max:
        fixed = {name: [changes.get(name, getattr(config, name))] * 2 for name in ("alpha_prime", "lambda_max")}
        hyper = dict(config.hyper or fixed)
        for name, flag in (("alpha_prime", args.hyper_alpha_prime), ("lambda_max", args.hyper_lambda_max)):
            if flag:
                hyper[name] = list(flag)
        changes["hyper"] = hyper
    sources = _data_sources(args, config)
    if sources:
        changes["data"] = dataclasses.replace(config.data, sources=sources)
    validation: dict[str, Any] = {}
    if args.val_fraction is not None and (args.val_data or config.validation.sources):
        given = "--val-data" if args.val_data else f"the validation sources of {args.config}"
        raise InputError(f"--val-fraction holds training subjects out for validation when there is no validation data "
                         f"of its own, and {given} is: it would do nothing; give one of the two (validation pairs: 0 "
                         "in a configuration file turns validation off).")
    if args.val_data:
        validation["sources"] = (_validation_source(args.val_data, changes.get("data", config.data).sources),)
    if args.val_fraction is not None:
        validation["fraction"] = args.val_fraction
    if validation:
        changes["validation"] = dataclasses.replace(config.validation, **validation)
    return config.replace(**changes) if changes else config


def _summary_line(summary: TrainingSummary, seconds: float) -> str:
    if summary.resumed_from == summary.epochs:
        return f"The run in {summary.run_dir} has already finished its {summary.epochs} epoch(s); nothing to do."
    done = f"Trained {summary.epochs} epoch(s) in {seconds:.1f} s"
    if summary.resumed_from:  # the time is this session's: say which epochs it ran
        first = summary.resumed_from + 1
        ran = f"epoch {first}" if first == summary.epochs else f"epochs {first}-{summary.epochs}"
        done = f"Trained {ran} of {summary.epochs} in {seconds:.1f} s (resumed after epoch {summary.resumed_from})"
    if summary.step_seconds == summary.step_seconds:
        done += f", {summary.step_seconds:.2f} s/step"
    last = summary.last
    if last.get("val_dice") is not None:
        done += f"; last val Dice {last['val_dice']:.4f} (before registration {last['val_dice_identity']:.4f})"
    if last.get("val_folding_percent") is not None:
        done += f", folding {last['val_folding_percent']:.3f} %"
    if summary.best_epoch:
        done += f"; best epoch {summary.best_epoch}"
    return done


def _other_rank_stops(exc: SvregError | KeyboardInterrupt) -> int:
    """The exit status of a torchrun process other than rank 0 stopped by ``exc``, which rank 0 reports: Ctrl-C or
    SIGTERM (130, 143: :func:`~svreg_core.interrupts.interrupted_status`),
    or a peer that stopped (2, :class:`~svreg_core.training.distributed.PeerStopped`). An error of its own (2) is
    raised again, to be printed, only when the job is still running :data:`PEER_REPORT_DELAY_S` later."""
    from svreg_core.training.distributed import PeerStopped

    if isinstance(exc, KeyboardInterrupt):
        return interrupted_status(exc)
    if not isinstance(exc, PeerStopped):
        try:
            time.sleep(PEER_REPORT_DELAY_S)
        except KeyboardInterrupt:  # torchrun ending the job: rank 0 stopped, with this error
            return 2
        raise exc
    return 2


def run_train(args: argparse.Namespace) -> int:
    """Run ``svreg train``; user mistakes raise :class:`InputError` (exit status 2 in the CLI)."""
    from svreg_core.progress import ProgressPrinter, emit_json
    from svreg_core.training.distributed import is_main_process
    from svreg_core.training.trainer import BEST_DIR, LAST_DIR, train

    t0 = time.perf_counter()
    main = is_main_process()
    printer = ProgressPrinter(args.progress if main else "none")
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    try:
        summary = train(resolve_config(args), args.output, progress=printer, command=command)
    except (SvregError, KeyboardInterrupt) as exc:
        if main:
            raise
        return _other_rank_stops(exc)
    finally:
        printer.close()
    if not main:
        return 0
    out = summary.run_dir
    if args.progress == "json":
        emit_json({"event": "done", "run_dir": str(out), "epochs": summary.epochs, "steps": summary.steps,
                    "best_epoch": summary.best_epoch, "best_metric": summary.best_metric,
                    "best_value": summary.best_value if summary.best_epoch else None, "last": summary.last,
                    "parameters": summary.parameters,
                    # NaN when this call took no step (a finished run): null, as JSON has no NaN
                    "step_seconds": summary.step_seconds if math.isfinite(summary.step_seconds) else None})
    else:
        print(_summary_line(summary, time.perf_counter() - t0))
        print(f"Checkpoints: {out / BEST_DIR}/ (best), {out / LAST_DIR}/ (last); metrics: {out / 'metrics.csv'}")
    return 0
