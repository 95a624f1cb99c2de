"""Training of a learned SPR network (METHOD §3): one function, :func:`train`, resumable and DDP-ready.

Each step the network predicts a velocity and λ for a batch of pairs on the network grid and THE
SPR loss (:class:`svreg_core.losses.spr.SPRLoss`, the same object the pairwise optimiser evaluates)
turns them into loss terms (:func:`training_step`). AdamW (AMSGrad, no weight decay) steps with a
learning rate that decays polynomially per epoch.

A run folder holds::

    config.yaml          the resolved configuration (a later run in this folder must match it once an epoch has
                         finished, but for where the data are when data.json shows they are the same files)
    data.json            counts and a digest of the pairs the run began with (a resumed run must find them again;
                         one stopped before its first epoch ended starts over on other data)
    alignments.json      affine pre-alignment of every real pair (computed once, reused on resume)
    metrics.csv          one row per epoch (svreg_core.training.history.COLUMNS)
    training_curve.png   loss terms and validation Dice / folding per epoch
    tensorboard/         scalars, when the tensorboard package is installed
    best/  last/         model checkpoints (svreg_core.models.checkpoint): best validation, latest epoch
    state/               resume state (svreg_core.training.state), replaced atomically every epoch

A hyper network (``config.hyper``) gets one code pair ``(α′, λ_max)`` per step and process, drawn
log-uniformly from the configured ranges by a generator seeded from ``(seed, epoch, rank)``; the step's
loss uses the same codes. Validation runs at the configuration's own ``alpha_prime``/``lambda_max``.

Running :func:`train` again on the same folder resumes after the last finished epoch with identical
state, so an interruption (Ctrl-C, kill, power loss) loses at most the epoch in progress.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import svreg_core
from svreg_core.atomic import recover_directory, replaced_when_complete
from svreg_core.errors import InputError, SvregError
from svreg_core.models import ModelInfo, SPRNetwork, build_model, load_checkpoint, save_checkpoint
from svreg_core.models.zoo import resolve_model
from svreg_core.outputs.writer import check_output_file, prepare_output_dir
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress
from svreg_core.training import distributed
from svreg_core.training.config import TrainingConfig, load_config, save_config
from svreg_core.training.history import (
    CURVE_FILE,
    CURVE_INTERVAL_S,
    METRICS_FILE,
    TensorBoardLog,
    write_curve_png,
    write_metrics_csv,
)
from svreg_core.training.loaders import (
    FILE_IDENTITY,
    STREAM_MODEL,
    TrainingData,
    build_data,
    check_pair_files,
    data_fingerprint,
    epoch_loader,
    load_alignments,
    prepare_alignments,
    relocate_alignments,
    steps_per_epoch,
    validation_loader,
)
from svreg_core.training.state import (
    STATE_DIR,
    TrainingState,
    epoch_seed,
    has_state,
    load_state,
    save_state,
)
from svreg_core.training.step import TERMS, training_step
from svreg_core.training.validation import ValidationSums, validate

#: Random stream of the codes of a hyper network (``svreg_core.training.loaders`` uses streams 0-4).
STREAM_CODES = 5

CONFIG_FILE = "config.yaml"
#: The pairs the run began with (:func:`~svreg_core.training.loaders.data_fingerprint`), which a resumed run must find.
DATA_FILE = "data.json"
ALIGNMENTS_FILE = "alignments.json"
BEST_DIR = "best"
LAST_DIR = "last"
#: Intensity normalisation of the network inputs (recorded in checkpoints).
NORMALIZATION = "robust_normalize"


@dataclass
class TrainingSummary:
    """Outcome of :func:`train`.

    Attributes:
        run_dir: the run folder.
        epochs: epochs finished in total (over all sessions).
        resumed_from: epochs already finished when this call started.
        steps: optimiser steps in total.
        best_epoch: 1-based epoch of the ``best/`` checkpoint (0: none).
        best_metric: ``"dice"`` (validation mean Dice), ``"-loss"`` (minus the validation loss) or
            ``"-train_loss"`` (no validation pairs).
        best_value: its value.
        last: the metrics row of the last finished epoch (empty if none).
        parameters: trainable parameters of the network.
        step_seconds: mean wall time of one training step in this call (data loading included).
    """

    run_dir: Path
    epochs: int
    resumed_from: int
    steps: int
    best_epoch: int
    best_metric: str
    best_value: float
    last: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    step_seconds: float = float("nan")


def build_network(config: TrainingConfig, *, initial_weights: bool = True) -> SPRNetwork:
    """The network of ``config`` (a hyper network with ``config.hyper``) before training: initialised from
    the run's seed (global RNG left untouched), then given the weights of ``config.init_weights`` unless
    ``initial_weights`` is off (a resumed run loads its own)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(config.seed, 0, STREAM_MODEL))
        hyper = {} if config.hyper is None else {"hyper": config.hyper}
        model = build_model(config.architecture, {**config.model, "uniform": not config.spr, **hyper})
    multiple = model.size_multiple
    if any(n % multiple for n in config.grid_shape):
        shape = " ".join(map(str, config.grid_shape))
        raise InputError(f"grid shape {shape} must be a multiple of {multiple} (the {config.architecture} network's "
                         f"size multiple) along every axis.")
    if initial_weights and config.init_weights is not None:
        _load_initial_weights(model, config)
    return model


def _load_initial_weights(model: SPRNetwork, config: TrainingConfig) -> None:
    """Copy the weights of the checkpoint ``config.init_weights`` into ``model`` (fine-tuning).

    A plain checkpoint may start a hyper run whose other options are the checkpoint's: its weights fill
    the shared network and the FiLM conditioning keeps its seeded initialisation, so the run starts from
    the plain network up to modulations of order ``FILM_INIT_STD`` and learns what the codes change. A
    hyper checkpoint may start a hyper run over other code ranges: every weight is copied, and since the
    FiLM sees the codes normalised over the run's ranges, it relearns what each code means. The
    submodules named in ``config.init_fresh`` keep their seeded initialisation.

    Raises:
        InputError: the checkpoint is unusable, or its architecture or options differ from ``model``'s.
    """
    assert config.init_weights is not None  # the caller's condition
    network, info = load_checkpoint(resolve_model(config.init_weights))
    plain_to_hyper = network.config.get("hyper") is None and model.config.get("hyper") is not None
    ignored = {"hyper"} if model.config.get("hyper") is not None else set()
    differing = sorted(k for k in set(network.config) | set(model.config)
                       if k not in ignored and _options(network.config.get(k)) != _options(model.config.get(k)))
    if not math.isclose(info.network_spacing_mm, config.network_spacing_mm, rel_tol=1e-6):
        raise InputError(f"cannot start from checkpoint {config.init_weights!r}: it was trained on a "
                         f"{info.network_spacing_mm:g} mm network grid and this run's is "
                         f"{config.network_spacing_mm:g} mm (its velocities are in voxels of its grid); train "
                         f"with --spacing {info.network_spacing_mm:g}, or the checkpoint's configuration (its "
                         "model.json).")
    if info.architecture != config.architecture or differing:
        what = (f"architecture {info.architecture} differs from this run's {config.architecture}"
                if info.architecture != config.architecture
                else f"options {', '.join(differing)} differ from this run's")
        raise InputError(f"cannot start from checkpoint {config.init_weights!r}: its {what}; train with the "
                         "checkpoint's architecture and options (see its model.json) to fine-tune it.")
    fresh = {}
    for module in config.init_fresh:
        try:
            fresh.update({f"{module}.{k}": v.clone() for k, v in model.get_submodule(module).state_dict().items()})
        except AttributeError:
            modules = ", ".join(name for name, _ in model.named_children())
            raise InputError(f"init fresh: the {config.architecture} network has no submodule {module!r} (its modules: "
                             f"{modules}; a part of one as e.g. decoder.0).") from None
    missing, unexpected = model.load_state_dict(network.state_dict(), strict=not plain_to_hyper)
    if unexpected or any(not name.startswith("film.") for name in missing):
        raise InputError(f"cannot start from checkpoint {config.init_weights!r}: its weights do not fit this "
                         f"run's network ({len(missing)} missing, {len(unexpected)} unexpected tensors).")
    model.load_state_dict(fresh, strict=False)


def _options(value: Any) -> str:
    """A network option (or all of them) in a canonical form, so lists and tuples compare equal."""
    return json.dumps(value, sort_keys=True)


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with the config's learning rate, weight decay and AMSGrad setting."""
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                             amsgrad=config.amsgrad)


def check_run_dir(run_dir: Path, config: TrainingConfig, *, resume: bool) -> bool:
    """Whether ``run_dir`` continues an earlier run with the same configuration (``True``) or is new.

    Raises:
        InputError: ``run_dir`` is a file, a non-empty folder that is not a training run, a run with a
            different configuration that has finished an epoch (one that has not starts over with ``config``), or
            an earlier run while ``resume`` is off.
        OutputError: a new ``run_dir`` cannot be created or written (below a file, on a read-only disk).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"output {run_dir} exists and is not a folder.")
    if not run_dir.exists():  # a folder (and its parents) to create: not below a file, on a writable disk
        prepare_output_dir(run_dir, overwrite=False, create_parent=False)
        return False
    if not any(run_dir.iterdir()):
        check_output_file(run_dir / CONFIG_FILE)
        return False
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise InputError(f"output folder {run_dir} is not empty and holds no training run; choose a new folder.")
    if not resume:
        raise InputError(f"output folder {run_dir} already holds a training run; resume it or choose a new folder.")
    try:
        previous = load_config(saved)
    except InputError as exc:
        raise InputError(f"the run folder's {saved.name} is unusable ({exc}); choose a new folder.") from None
    # the data's locations may change when the data they began with is recorded (DATA_FILE), which _train compares
    changed = config.differences(previous, data_locations=_data_began(run_dir) is None)
    # a run that finished no epoch (stopped while pre-aligning, or in its first epoch) has nothing to lose: it starts
    # over with the new settings and keeps its pre-alignments (a resume state killed while being replaced is .state.old)
    finished = has_state(run_dir) or (run_dir / f".{STATE_DIR}.old").is_dir()
    if changed == ["epochs"] and finished:  # more (or fewer) epochs: its learning rate decays over its own epochs
        raise InputError(f"output folder {run_dir} holds a run of {previous.epochs} epoch(s), not {config.epochs}: "
                         "its learning rate decays over its own epochs, so their number cannot change; resume it with "
                         f"--epochs {previous.epochs}, or go on from its weights in a new folder (--init "
                         f"{run_dir / LAST_DIR}).")
    if changed and finished:
        before, now = previous.to_dict(), config.to_dict()

        def shown(name: str) -> str:  # a setting's two values when they are short, else its name
            old, new = json.dumps(before[name]), json.dumps(now[name])
            return f"{name}: {old} in the run, {new} now" if len(old) + len(new) <= 60 else f"{name} differs"

        raise InputError(f"output folder {run_dir} holds a run with a different configuration "
                         f"({'; '.join(shown(name) for name in changed)}); use the same settings to resume it, or "
                         "choose a new folder.")
    return True


def _data_began(run_dir: Path) -> tuple[int, int, str] | None:
    """The training and validation pair counts and the digest of the data a run began with (``DATA_FILE``; ``None``
    for a run folder without one, with an unreadable one, or with one whose files were identified otherwise than by
    :data:`~svreg_core.training.loaders.FILE_IDENTITY`, by an earlier svreg: then it is written anew)."""
    try:
        began = json.loads((run_dir / DATA_FILE).read_text())
        if began["files"] != FILE_IDENTITY:
            return None
        return int(began["training_pairs"]), int(began["validation_pairs"]), str(began["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_same_data(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Raise :class:`InputError` when the pairs of a resumed run differ from those it began with (:func:`_data_began`;
    a run folder without a record is not checked)."""
    then = _data_began(run_dir)
    if then is None or then[2] == fingerprint["sha256"]:
        return
    now = fingerprint["training_pairs"], fingerprint["validation_pairs"]
    counts = ("as many pairs, of other files" if now == then[:2] else
              f"{now[0]} training and {now[1]} validation pairs now, {then[0]} and {then[1]} when it began")
    raise InputError(f"the data of the run in {run_dir} changed since it began ({counts}: subjects or label maps "
                     "added, removed or renamed, or relative paths read in another folder), so resuming would not "
                     "continue the same training; restore its data, or train into a new folder "
                     f"(--init {run_dir / LAST_DIR} starts from its weights).")


def _model_info(model: SPRNetwork, config: TrainingConfig, state: TrainingState, data: TrainingData,
                command: str, name: str, row: dict[str, Any]) -> ModelInfo:
    training = {"data": data.description, "command": command, "epochs": state.epoch, "steps": state.step,
                "grid_shape": list(config.grid_shape), "batch_size": config.batch_size, "seed": config.seed,
                "learning_rate": config.learning_rate, "init_weights": config.init_weights,
                "init_fresh": list(config.init_fresh),
                "val_dice": row.get("val_dice"), "val_folding_percent": row.get("val_folding_percent")}
    return ModelInfo(architecture=config.architecture, config=dict(model.config),
                     network_spacing_mm=config.network_spacing_mm, size_multiple=model.size_multiple,
                     normalization=NORMALIZATION, similarity=config.similarity, lncc_window=config.lncc_window,
                     prior=config.prior, alpha_prime=config.alpha_prime, lambda_max=config.lambda_max,
                     spr=config.spr, integration_steps=config.integration_steps,
                     svreg_version=svreg_core.__version__, training=training, name=name)


def _score(row: dict[str, Any]) -> tuple[str, float]:
    """The value ``best/`` maximises: validation Dice, else minus the validation loss, else minus the train loss."""
    if row.get("val_dice") is not None:
        return "dice", row["val_dice"]
    if row.get("val_total") is not None:
        return "-loss", -row["val_total"]
    return "-train_loss", -row["train_total"]


def train(config: TrainingConfig, run_dir: str | Path, *, progress: ProgressCallback = no_progress,
          resume: bool = True, command: str = "") -> TrainingSummary:
    """Train (or resume training) a network as ``config`` says, writing everything into ``run_dir``.

    Under ``torchrun`` every process calls this; they split each epoch's samples, average gradients
    (DDP) and rank 0 alone writes files and reports ``progress``.

    Args:
        config: the resolved configuration.
        run_dir: the run folder (created; an existing one is resumed if its configuration matches).
        progress: receives a :class:`ProgressEvent` per step (loss terms in ``values``) and one per epoch
            (stage ``"epoch"``, the metrics row in ``values``), the latter after the epoch is saved.
        resume: continue an existing run in ``run_dir``; ``False`` requires a new or empty folder.
        command: the command line, recorded in the checkpoints.

    Raises:
        InputError: unusable data, run folder or configuration; training diverged (non-finite loss).
    """
    run_dir = Path(run_dir).absolute()
    device = distributed.resolve_device(config.device, distributed.local_rank())
    ctx = distributed.init_distributed(device)
    try:
        return _train(config, run_dir, device, ctx, progress if ctx.is_main else no_progress, resume, command)
    except SvregError as exc:
        original = worker_error(exc)
        if original is None:
            raise
        raise original from None
    finally:
        distributed.shutdown(ctx)


def worker_error(exc: SvregError) -> SvregError | None:
    """The error a data-loading worker raised, with svreg's own one-line message, or ``None`` for an error raised in
    this process.

    PyTorch raises a DataLoader worker's exception again in the main process as the same class, with the worker's
    whole traceback for its message (``Caught InputError in DataLoader worker process 0.`` / ``Original Traceback
    ...`` / ``svreg_core.errors.InputError: <message>``); its last line names the class and holds the message.
    """
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return None
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    messages = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    return type(exc)(messages[-1]) if messages else None


def _train(config: TrainingConfig, run_dir: Path, device: torch.device, ctx: distributed.DistributedContext,
           progress: ProgressCallback, resume: bool, command: str) -> TrainingSummary:
    continuing = check_run_dir(run_dir, config, resume=resume)
    alignments_file = run_dir / ALIGNMENTS_FILE
    if continuing and ctx.is_main:
        for folder in (STATE_DIR, BEST_DIR, LAST_DIR):
            recover_directory(run_dir / folder)  # a write killed between its two renames
    distributed.barrier(ctx)
    resuming = continuing and has_state(run_dir)
    model = build_network(config, initial_weights=not resuming).to(device)
    optimizer = make_optimizer(model, config)
    state = TrainingState(seed=config.seed, world_size=ctx.world_size)
    if resuming:
        state = load_state(run_dir, model, optimizer)
        if state.world_size != ctx.world_size:
            raise InputError(f"{run_dir} was trained with {state.world_size} process(es) and this run has "
                             f"{ctx.world_size}: the global batch and the steps of an epoch would change; resume it "
                             f"with {state.world_size} (torchrun --nproc_per_node), or start a new run folder.")
    # the data after the network and the state, whose errors (a grid the architecture cannot take, an unusable
    # --init, a damaged state) need no reading of the images
    # (the data of a continued run may have moved since its configuration was saved: the cache follows them)
    alignments = (relocate_alignments(load_alignments(alignments_file), load_config(run_dir / CONFIG_FILE), config)
                  if continuing else None)
    data = build_data(config, alignments, progress)
    distributed.barrier(ctx)  # every rank has read the folder before rank 0 writes into it
    if ctx.is_main:
        fingerprint = data_fingerprint(data)
        began = _data_began(run_dir) if continuing else None
        if resuming:
            _check_same_data(run_dir, fingerprint)
        elif not continuing or (began is not None and began[2] != fingerprint["sha256"]):
            # a new run, or one stopped before its first epoch ended that finds other data (an unusable image
            # removed): it starts over, reading every file of the pairs before any long work (a resumed run read
            # them when it began)
            if continuing:  # its cached pre-alignments may be other files'
                alignments_file.unlink(missing_ok=True)
                data = build_data(config, None, progress)
            check_pair_files(data, progress, labels=config.validation.labels)
            run_dir.mkdir(parents=True, exist_ok=True)
            began = None
        save_config(config, run_dir / CONFIG_FILE)  # (a resumed run's data may have moved: where they are now)
        if began is None:  # (or a run begun by an svreg without DATA_FILE)
            with replaced_when_complete(run_dir / DATA_FILE) as tmp:
                tmp.write_text(json.dumps(fingerprint, indent=1) + "\n")
        prepare_alignments(data, alignments_file, write=True, progress=progress)
    distributed.barrier(ctx)
    if not ctx.is_main and data.pair_datasets:  # rank 0 computed the affine pre-alignments
        data = build_data(config, load_alignments(alignments_file))
    resumed_from = state.epoch
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    net = distributed.wrap_model(model, ctx, device)
    loss = config.spr_loss()
    ranges = config.code_ranges
    validation_codes = None if ranges is None else (config.alpha_prime, config.lambda_max)
    steps = steps_per_epoch(config, data, ctx.world_size)
    if resumed_from:
        progress(ProgressEvent("resume", resumed_from, config.epochs, resumed_from / config.epochs,
                               f"resuming after epoch {resumed_from} of {config.epochs}"))
    board = TensorBoardLog(run_dir, first_epoch=resumed_from + 1) if ctx.is_main else None
    step_time, step_count = 0.0, 0
    fork_devices = [device] if device.type == "cuda" else []
    curve_title = f"{run_dir.name}: {config.architecture}"
    curve_epochs, curve_drawn = len(state.history), time.perf_counter()  # redrawn once this session adds epochs

    def draw_curve() -> None:
        nonlocal curve_epochs, curve_drawn
        write_curve_png(state.history, run_dir / CURVE_FILE, title=curve_title)
        curve_epochs, curve_drawn = len(state.history), time.perf_counter()

    try:
        for epoch in range(resumed_from, config.epochs):
            started = time.perf_counter()
            lr = config.learning_rate_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            net.train()
            sums = [0.0] * (len(TERMS) + 1)
            with torch.random.fork_rng(devices=fork_devices):
                # any random draw inside the network (e.g. dropout) depends on (seed, epoch, rank) only
                torch.manual_seed(epoch_seed(config.seed, epoch, STREAM_MODEL) + ctx.rank)
                code_generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, STREAM_CODES) + ctx.rank)
                tick = time.perf_counter()
                for index, batch in enumerate(epoch_loader(data, config, epoch, steps, ctx.rank, ctx.world_size)):
                    optimizer.zero_grad(set_to_none=True)
                    codes = None if ranges is None else ranges.sample(code_generator)
                    terms, _ = training_step(net, loss, batch, config.integration_steps, config.label_weight, codes)
                    # every rank stops together (one that stopped alone left its peers in the gradient all-reduce)
                    diverged = distributed.all_reduce_sum([float(not torch.isfinite(terms["total"]))], ctx, device)
                    if diverged[0] > 0:
                        raise InputError(f"training diverged: the loss is not finite at epoch {epoch + 1}, step "
                                         f"{index + 1}; check the data, or train into a new folder with a lower "
                                         f"learning rate (--lr), starting from the last good epoch (--init "
                                         f"{run_dir / LAST_DIR}).")
                    terms["total"].backward()
                    optimizer.step()
                    state.step += 1
                    values = {t: terms[t].item() for t in TERMS}
                    sums = [s + v for s, v in zip(sums, [1.0, *values.values()])]
                    if not config.label_weight:
                        del values["labels"]
                    now = time.perf_counter()
                    step_time, step_count, tick = step_time + now - tick, step_count + 1, now
                    done = epoch * steps + index + 1
                    progress(ProgressEvent(f"epoch {epoch + 1}/{config.epochs}", index + 1, steps,
                                           done / (config.epochs * steps), values=values))
            sums = distributed.all_reduce_sum(sums, ctx, device)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "lr": lr}
            row.update({f"train_{t}": s / sums[0] for t, s in zip(TERMS, sums[1:])})
            loader = validation_loader(data, config, ctx.rank, ctx.world_size)
            if loader is not None:
                progress(ProgressEvent("validation", epoch + 1, config.epochs, (epoch + 1) / config.epochs))
                val = validate(model, loss, loader, integration_steps=config.integration_steps,
                               label_weight=config.label_weight,
                               labels=config.validation.labels,
                               label_interpolation=config.validation.label_interpolation,
                               codes=validation_codes)
                row.update(ValidationSums.from_list(distributed.all_reduce_sum(val.to_list(), ctx, device)).means())
            row["seconds"] = time.perf_counter() - started
            state.epoch = epoch + 1
            state.elapsed_s += row["seconds"]
            state.history.append(row)
            metric, value = _score(row)
            improved = math.isfinite(value) and value > state.best_value
            if improved:
                state.best_metric, state.best_value, state.best_epoch = metric, value, epoch + 1
            if ctx.is_main:
                info = _model_info(model, config, state, data, command, run_dir.name, row)
                if improved:
                    save_checkpoint(run_dir / BEST_DIR, model, info)
                save_checkpoint(run_dir / LAST_DIR, model, info)
                save_state(run_dir, model, optimizer, state)  # the epoch counts as finished from here on
                write_metrics_csv(state.history, run_dir / METRICS_FILE)
                if time.perf_counter() - curve_drawn >= CURVE_INTERVAL_S:
                    draw_curve()
                assert board is not None  # the main process has one
                board.log(row)
            distributed.barrier(ctx)
            progress(ProgressEvent("epoch", epoch + 1, config.epochs, (epoch + 1) / config.epochs,
                                   _epoch_line(row), values={k: v for k, v in row.items() if v is not None}))
    finally:
        if board is not None:
            board.close()
        if ctx.is_main and len(state.history) > curve_epochs:  # last epoch, Ctrl-C, a pruned trial
            draw_curve()
    return TrainingSummary(run_dir, state.epoch, resumed_from, state.step, state.best_epoch, state.best_metric,
                           state.best_value, state.history[-1] if state.history else {}, parameters,
                           step_time / step_count if step_count else float("nan"))


def _epoch_line(row: dict[str, Any]) -> str:
    text = f"epoch {row['epoch']}: loss {row['train_total']:.4f}"
    if row.get("val_dice") is not None:
        text += f", val Dice {row['val_dice']:.4f} (before {row['val_dice_identity']:.4f})"
    if row.get("val_folding_percent") is not None:
        text += f", folding {row['val_folding_percent']:.3f} %"
    return text + f", {row['seconds']:.1f} s"
