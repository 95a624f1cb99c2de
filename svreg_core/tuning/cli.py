"""``svreg tune``: arguments and entry point (a subcommand of ``svreg_core.cli``).

Examples::

    svreg tune validation/ --preset brain-mri --n-trials 50 --seed 1            # SQLite svreg-tune.db
    svreg tune pairs.csv --storage postgresql://me@db/tuning --study-name ixi     # several machines
    svreg tune pairs.csv --storage /shared/tuning.log --study-name ixi           # shared file system
    svreg tune --storage svreg-tune.db --report report/ --apply-best tuned.json   # summarise, export preset
    svreg register --preset tuned.json fixed.nii.gz moving.nii.gz -o out/
    svreg tune --train-config train.yaml --synthetic labels/ --epochs-per-trial 20 --storage unet.db  # training
    svreg tune validation/ --model runs/hyper/best --storage codes.db --apply-best codes.json   # a hyper model's codes
    svreg tune landmark_pairs/ --objective tre --preset lung-ct --storage lung.db     # minimise the landmark error

Running the same command again resumes the study until ``--n-trials`` trials are finished (COMPLETE or
PRUNED) in total; running it on several machines/processes at once makes them share the work.
With ``--train-config`` or training data flags, each trial trains a network (:mod:`.training`); with
``--model``, each trial runs a learned model at the trial's codes (α′, λ_max) on the validation pairs
(:mod:`.codes`); otherwise each trial registers the validation pairs (:mod:`.objective`) and scores the mean
Dice of their label maps (maximised) or, with ``--objective tre``, the mean target registration error of their
landmarks (minimised).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from svreg_core.errors import InputError, OutputError
from svreg_core.image.sampling import LABEL_INTERPOLATIONS
from svreg_core.interrupts import interrupted_status, sigterm_as_interrupt
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.registration import resolve_device
from svreg_core.tuning.codes import ModelCodeDice, ModelCodeTRE, code_search_space, model_reference
from svreg_core.tuning.objective import Objective, PairObjective, PairwiseDice, PairwiseTRE, trial_function
from svreg_core.tuning.pairs import ValidationPair, discover_pairs
from svreg_core.tuning.progress import TuneEvent, TuneProgress, make_sink
from svreg_core.tuning.pruner import make_pruner
from svreg_core.tuning.report import (
    check_preset_export,
    format_params,
    write_best_preset,
    write_report,
    write_summary,
)
from svreg_core.tuning.search_space import DEFAULT_SEARCH, SEARCHABLE, SearchSpace, build_search_space
from svreg_core.tuning.study import (
    DEFAULT_STORAGE,
    DEFAULT_STUDY,
    FINISHED,
    best_trial,
    count_finished,
    create_or_join,
    describe_storage,
    first_line,
    load_study,
    make_sampler,
    open_storage,
    quiet_optuna,
    run_worker,
    storage_file,
    storage_url,
    study_meta,
)
from svreg_core.tuning.training import DATA_FLAGS, TrainingDice, training_config


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``svreg tune`` arguments to ``parser``."""
    parser.add_argument("validation", nargs="?", default=None,
                        help="validation set: a folder of pair sub-folders (fixed, moving, fixed_labels, "
                             "moving_labels .nii.gz; with --objective tre fixed_landmarks, moving_landmarks .csv/"
                             ".fcsv/.mrk.json instead of the labels) or a .csv/.json pair list; omit to only "
                             "--report/--apply-best")
    study = parser.add_argument_group("study")
    study.add_argument("--storage", default=DEFAULT_STORAGE,
                       help="SQLite file, a journal file ending in .log (shared file system, no database "
                            "server) or an SQLAlchemy URL such as postgresql://user@host/db "
                            f"(default {DEFAULT_STORAGE})")
    study.add_argument("--study-name", default=DEFAULT_STUDY, help=f"study name (default {DEFAULT_STUDY})")
    study.add_argument("--n-trials", type=int, default=50,
                       help="finished (complete + pruned) trials the study should hold in total (default 50)")
    study.add_argument("--seed", type=int, default=None, help="seed of the TPE sampler (reproducible runs)")
    study.add_argument("--timeout", type=float, default=None, help="stop starting new trials after SECONDS")
    study.add_argument("--max-failures", type=int, default=5,
                       help="stop after this many failed trials in a row (0: never; default 5)")
    study.add_argument("--startup-trials", type=int, default=10,
                       help="random trials before TPE models the results (default 10)")
    study.add_argument("--no-default-trial", action="store_true",
                       help="do not run the preset's own values as the first trial of a new study")

    space = parser.add_argument_group("search space and fixed settings of every trial")
    space.add_argument("--preset", default="brain-mri",
                       help="preset name or preset JSON file the trials start from; sets the default ranges")
    space.add_argument("--search", nargs="+", choices=SEARCHABLE, default=list(DEFAULT_SEARCH),
                       help="parameters to search (default: alpha_prime lambda_max)")
    space.add_argument("--alpha-prime-range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                       help="α′ range (default per preset: brain MRI 0.01-0.2, CT 0.001-0.3; log scale)")
    space.add_argument("--lambda-max-range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                       help="λ_max range (default per preset: brain MRI 0.5-5, CT 0.1-4)")
    space.add_argument("--level-spacings", nargs="+", type=float, metavar="MM", default=None,
                       help="working-grid spacings of every trial, coarse to fine (not written by --apply-best)")
    space.add_argument("--iterations", nargs="+", type=int, metavar="N", default=None,
                       help="iterations per level of every trial (not written by --apply-best)")
    space.add_argument("--no-affine", action="store_true", help="skip the affine stage (pairs pre-aligned)")
    space.add_argument("--device", default=None, help="auto, cpu or cuda (default: the preset's)")

    codes = parser.add_argument_group("code search of a learned model (with validation pairs: each trial runs the "
                                      "network at the trial's α′, λ_max; no training)")
    codes.add_argument("--model", help="a hyper model (shipped name or checkpoint): search its codes, by default "
                                       "over the ranges it was trained on")
    codes.add_argument("--refine", type=int, default=0, metavar="N",
                       help="with --model: N pairwise iterations at the trial's codes after each prediction "
                            "(default 0; a plain model needs them: its codes then set only the refinement's loss)")

    objective = parser.add_argument_group("objective")
    objective.add_argument("--objective", choices=("dice", "tre"), default="dice",
                           help="what a pairwise trial scores: the mean Dice of the pairs' label maps (maximised, "
                                "default) or the mean target registration error of their landmarks in mm "
                                "(minimised; pairs with fixed_landmarks and moving_landmarks files)")
    objective.add_argument("--max-folding", type=float, default=None, metavar="PERCENT",
                           help="reject (prune) a trial as soon as a pair's folding (%% of |J| <= 0) exceeds this")
    objective.add_argument("--labels", nargs="+", type=int, default=None,
                           help="labels scored by Dice (default: every non-zero label present in both maps)")
    objective.add_argument("--label-interpolation", choices=LABEL_INTERPOLATIONS, default="linear",
                           help="warping of the moving labels: one-hot trilinear + argmax (default) or nearest")
    objective.add_argument("--pruner-startup-trials", type=int, default=5,
                           help="complete trials (not pruned or failed) before median pruning starts (default 5)")
    objective.add_argument("--pruner-warmup-steps", type=int, default=1,
                           help="steps (pairs or epochs) of a trial before it may be pruned, minus one (default 1)")
    objective.add_argument("--pruner-interval", type=int, default=1,
                           help="steps between pruning checks (default 1; the paper: warm-up 30, every 10 epochs)")
    objective.add_argument("--no-pruning", action="store_true", help="never prune on the median")

    train = parser.add_argument_group("training objective (instead of validation pairs: each trial trains a network "
                                      "and scores its best validation Dice)")
    train.add_argument("--train-config", metavar="FILE",
                       help="training configuration of every trial, YAML or JSON as for svreg train --config")
    for flag, (metavar, text) in DATA_FLAGS.items():
        train.add_argument(f"--{flag.replace('_', '-')}", metavar=metavar, help=text,
                           type=float if flag == "val_fraction" else str)
    train.add_argument("--templates", action="store_true", help="augmented copies of the installed brain templates")
    train.add_argument("--epochs-per-trial", type=int, metavar="N",
                       help="training epochs of a trial (default: the configuration's)")
    train.add_argument("--runs-dir", metavar="DIR",
                       help="folder of the trials' run folders trial-NNNN (default: STUDY-runs next to the "
                            "storage file, or in the current folder)")

    workers = parser.add_argument_group("workers (database storages)")
    workers.add_argument("--heartbeat-interval", type=int, default=10,
                         help="seconds between heartbeats of a running trial (default 10)")
    workers.add_argument("--grace-period", type=int, default=60,
                         help="a running trial without heartbeat for this long is failed and retried (default 60)")
    workers.add_argument("--max-retry", type=int, default=1, help="re-runs of a trial lost with its worker (default 1)")

    out = parser.add_argument_group("output")
    out.add_argument("--progress", choices=("auto", "bar", "lines", "json", "none"), default="auto",
                     help="auto: progress bar on a terminal, else one plain line per finished trial on stderr (lines); "
                          "json: one JSON object per line on stdout")
    out.add_argument("--report", metavar="DIR", default=None,
                     help="write summary.json (also after every trial), summary.md, trials.csv and figures into DIR")
    out.add_argument("--apply-best", metavar="PATH", default=None,
                     help="write the best trial's searched parameters as a preset file (svreg register --preset "
                          "PATH); of a code search, the model and its best codes as JSON (and the register command)")
    out.add_argument("--include-fixed-settings", action="store_true",
                     help="--apply-best also writes the study's fixed settings (pyramid, iterations, affine...)")
    out.add_argument("--verbose", action="store_true", help="show Optuna's own log lines")


def _training(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for the training objective."""
    return bool(args.train_config or args.templates or any(getattr(args, f) is not None for f in DATA_FLAGS))


def _check_args(args: argparse.Namespace) -> None:
    training = _training(args)
    if args.validation is None and not training and not args.report and not args.apply_best:
        raise InputError("give a validation set to tune on, a training configuration (--train-config), or "
                         "--report DIR / --apply-best PATH for an existing study.")
    if args.validation is not None and training:
        raise InputError("give either validation pairs (pairwise tuning) or training settings, not both.")
    if training and (args.level_spacings or args.iterations or args.no_affine):
        raise InputError("--level-spacings, --iterations and --no-affine apply to pairwise tuning only.")
    if not training and (args.epochs_per_trial is not None or args.runs_dir):
        raise InputError("--epochs-per-trial and --runs-dir apply to the training objective only (--train-config or "
                         "training data such as --synthetic).")
    if args.refine and not args.model or args.refine < 0:
        raise InputError("--refine N (0 or more) refines a learned model's predictions: it needs --model.")
    if args.model and args.iterations:  # the study's report listed them as its settings
        raise InputError("--iterations does not apply with --model: --refine N sets the refinement's iterations "
                         "per level.")
    if args.model and args.level_spacings and not args.refine:
        raise InputError("--level-spacings only applies to a refinement of the learned model's predictions "
                         "(--refine N); the network alone does not use it.")
    if args.model and args.validation is None:
        raise InputError("a code search (--model) needs validation pairs to score the codes on.")
    if args.objective == "tre" and (training or args.labels):
        raise InputError("--objective tre scores the landmarks of registrations of validation pairs: it does not "
                         "combine with training or --labels.")
    if args.n_trials < 1 or (args.epochs_per_trial is not None and args.epochs_per_trial < 1):
        raise InputError("--n-trials and --epochs-per-trial must be at least 1.")
    if min(args.max_failures, args.max_retry, args.startup_trials, args.pruner_startup_trials,
           args.pruner_warmup_steps) < 0 or args.pruner_interval < 1:
        raise InputError("--max-failures, --max-retry, --startup-trials and the pruner settings must not be negative "
                         "(--pruner-interval at least 1).")
    if args.heartbeat_interval < 1 or args.grace_period <= args.heartbeat_interval:
        raise InputError("--heartbeat-interval must be at least 1 s and --grace-period longer than it.")
    for code in ("alpha_prime", "lambda_max"):
        if getattr(args, f"{code}_range") is not None and code not in args.search:
            flag = f"--{code.replace('_', '-')}-range"
            raise InputError(f"{flag} sets the search range of {code}, which --search leaves out "
                             f"({' '.join(args.search)}): add {code} to --search, or drop {flag}.")
    if not args.study_name.strip():
        raise InputError("--study-name must not be empty (a name every worker of the study gives).")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise InputError(f"--seed must be a whole number from 0 to {2**32 - 1}, not {args.seed}.")
    if args.timeout is not None and not args.timeout > 0:
        raise InputError("--timeout must be a number of seconds above 0.")
    if args.max_folding is not None and not 0 <= args.max_folding < math.inf:
        raise InputError("--max-folding must be a percentage of 0 or more.")
    _check_output_paths(args)


def _check_output_paths(args: argparse.Namespace) -> None:
    """Before any trial: ``--apply-best`` names a file that is not one the command reads (:func:`_input_files`),
    ``--report`` a folder, and files can be created where both go (the folders on the way are created when they
    are written)."""
    if args.report and Path(args.report).expanduser().exists() and not Path(args.report).expanduser().is_dir():
        raise InputError(f"--report needs a folder; {args.report} is a file.")
    if args.report:
        _check_writable(Path(args.report).expanduser() / "summary.json", "--report")
    if not args.apply_best:
        return
    target = Path(args.apply_best).expanduser()
    if target.is_dir():
        raise InputError(f"--apply-best needs a file name, {target} is a folder.")
    for what, path in _input_files(args).items():  # the study storage also before this run creates it
        if (path.is_file() or what == STORAGE) and target.resolve() == path.resolve():
            raise InputError(f"--apply-best {target} is the {what}; write the tuned settings to another file.")
    _check_writable(target, "--apply-best")


#: What :func:`_input_files` calls the study storage.
STORAGE = "study storage"


def _input_files(args: argparse.Namespace) -> dict[str, Path]:
    """What the command reads, by what it is: the study storage, the --preset and --train-config files, the
    validation pair list and the training data's list files (those that are files)."""
    given = {STORAGE: storage_file(args.storage), "--preset file the study starts from": args.preset,
             "--train-config file": args.train_config, "validation pair list": args.validation,
             **{f"--{flag.replace('_', '-')} file": getattr(args, flag) for flag in DATA_FLAGS
                if flag != "val_fraction"}}
    return {what: Path(path).expanduser() for what, path in given.items() if path is not None}


def _check_writable(path: Path, flag: str) -> None:
    """:class:`OutputError` naming ``flag`` unless ``path`` can be written, its missing folders created
    (:func:`~svreg_core.outputs.writer.check_output_file`)."""
    from svreg_core.outputs.writer import check_output_file

    try:
        check_output_file(path, missing_folders=True)
    except OutputError as exc:
        raise OutputError(f"{flag}: {exc}") from None


def _objective(args: argparse.Namespace) -> tuple[SearchSpace, Objective, Path | None]:
    """The search space and the objective ``args`` describe, and the training trials' runs folder."""
    ranges = {"search": args.search, "alpha_prime_range": args.alpha_prime_range,
              "lambda_max_range": args.lambda_max_range}
    if not _training(args):
        # a learned model's refinement runs --refine N iterations per level (refinement_parameters)
        iterations = [args.refine] * len(args.level_spacings) if args.model and args.level_spacings else args.iterations
        overrides = {"level_spacings": args.level_spacings, "iterations": iterations,
                     "affine": False if args.no_affine else None, "device": args.device}
        if args.model:
            space = code_search_space(args.model, args.refine, args.preset, overrides=overrides, **ranges)
            model = {"model": args.model, "device": space.base.device, "refine": args.refine}
            return space, (ModelCodeTRE(discover_pairs(args.validation, needs="landmarks"), **model)
                           if args.objective == "tre" else
                           ModelCodeDice(discover_pairs(args.validation), **model, labels=args.labels,
                                         label_mode=args.label_interpolation)), None
        objective = (PairwiseTRE(discover_pairs(args.validation, needs="landmarks")) if args.objective == "tre" else
                     PairwiseDice(discover_pairs(args.validation), labels=args.labels,
                                  label_mode=args.label_interpolation))
        space = build_search_space(args.preset, overrides=overrides, **ranges)
        assert isinstance(space.base, RegistrationParameters)  # built over a preset
        resolve_device(space.base.device)  # an unknown device, or CUDA on a machine without, fails now: not 5 trials
        _check_preset_modality(args.preset, space, objective.pairs[0])
        return space, objective, None
    config = training_config(args)
    from svreg_core.training.distributed import resolve_device as training_device

    training_device(config.device)  # CUDA on a machine without fails now, as for pairwise tuning: not every trial
    storage = storage_file(args.storage)  # absolute; None for a database server: the current folder
    runs = Path(args.runs_dir or (Path() if storage is None else storage.parent) / f"{args.study_name}-runs")
    runs = runs.expanduser()
    return build_search_space(config, **ranges), TrainingDice(runs, args.epochs_per_trial or config.epochs), runs


def _check_preset_modality(preset: str, space: SearchSpace, first: ValidationPair) -> None:
    """Before any trial: warn when an MR preset is to be tuned on CT images (its first pair's, read once;
    :func:`~svreg_core.optim.parameters.preset_modality_warning`)."""
    import warnings

    from svreg_core.image import load_image
    from svreg_core.optim.parameters import MR_PRESETS, preset_modality_warning

    if preset not in MR_PRESETS or not isinstance(space.base, RegistrationParameters):
        return  # nothing to read: only the MR presets are checked
    try:
        images = [load_image(path, name=f"pair {first.name!r} {role}") for role, path in
                  (("fixed", first.fixed), ("moving", first.moving))]
    except InputError:
        return  # an unusable pair fails its trials, which say why (the study's failure handling)
    note = preset_modality_warning(preset, space.base.similarity, images[0].data, images[1].data)
    if note:
        warnings.warn(note, stacklevel=2)


def _tune(args: argparse.Namespace, label: str, sink: Callable[[Any], None]) -> tuple[optuna.Study, str]:
    """Create or join the study and run trials; return it and why the trials stopped (``"done"`` or
    ``"timeout"``, :func:`~svreg_core.tuning.study.run_worker`); raise :class:`InputError` after too many
    failures."""
    space, objective, runs = _objective(args)
    if args.apply_best and not args.model:  # what would refuse to write the preset after the last trial
        check_preset_export(space, args.include_fixed_settings)
    # every pair read once before the storage is opened: an unusable file is refused before any trial, and
    # the pairs' fingerprints keep a resumed study on the same images
    data = objective.read_pairs() if isinstance(objective, PairObjective) else None
    storage = open_storage(args.storage, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                           max_retry=args.max_retry)
    if runs and runs.is_dir() and any(runs.iterdir()) and args.study_name not in optuna.get_all_study_names(storage):
        raise InputError(f"{runs} holds the trial runs of another study; give another --runs-dir.")
    meta = {"objective": objective.name, "value_name": objective.value_name, "search_space": space.to_dict(),
            "steps": objective.step_labels(), "max_folding": args.max_folding, "labels": args.labels,
            "label_mode": args.label_interpolation}
    if data is not None:
        meta["validation_data"] = data
    if args.model:
        meta.update(model=model_reference(args.model), refine=args.refine)
    study, created = create_or_join(storage, args.study_name, meta, direction=objective.direction,
                                    default_params=None if args.no_default_trial else space.default_values())
    pruner = make_pruner(not args.no_pruning, args.pruner_startup_trials, args.pruner_warmup_steps,
                         args.pruner_interval)
    study = load_study(storage, args.study_name, sampler=make_sampler(args.seed, created, args.startup_trials),
                       pruner=pruner)
    progress = TuneProgress(study, args.n_trials, sink)
    callbacks: list[Any] = [progress] + ([lambda s, t: write_summary(s, args.report, label)] if args.report else [])
    func = trial_function(space, objective, max_folding=args.max_folding, progress=progress)
    progress.emit("start", message=f"{count_finished(study)} of {args.n_trials} trials already finished")
    reason, error = "interrupted", None
    try:
        reason, error = run_worker(study, func, args.n_trials, timeout=args.timeout, max_failures=args.max_failures,
                                   callbacks=callbacks)
    finally:
        if args.report:  # also after Ctrl-C / SIGTERM: readers of summary.json see the interrupted trial
            write_summary(study, args.report, label)
        progress.emit("end", message=reason, error=error if reason == "max_failures" else None)
    if reason == "max_failures":
        raise InputError(f"stopped after {args.max_failures} failed trials in a row; last error: {error}")
    return study, reason


def run_tune(args: argparse.Namespace, reporter: Callable[[Any], None] | None = None) -> int:
    """Run ``svreg tune`` for parsed ``args``; return the exit code (0 ok, 130 or 143 interrupted:
    :func:`~svreg_core.interrupts.interrupted_status`).

    ``reporter`` (optional) replaces the sink chosen by ``--progress``: any callable taking a
    :class:`~svreg_core.tuning.progress.TuneEvent`. User errors raise :class:`InputError` /
    :class:`OutputError` with one-line messages.
    """
    _check_args(args)
    json_mode = args.progress == "json" or reporter is not None
    sink = reporter or make_sink(args.progress)
    label = describe_storage(storage_url(args.storage))

    def announce(event: TuneEvent, text: str) -> None:
        if json_mode:
            sink(event)
        else:
            print(text)

    try:
        with quiet_optuna(verbose=args.verbose), sigterm_as_interrupt():
            try:
                if args.validation is not None or _training(args):
                    study, reason = _tune(args, label, sink)
                    if not json_mode:
                        _print_summary(study)
                        if reason == "timeout":
                            print(f"stopped by --timeout with {count_finished(study)} of {args.n_trials} trials "
                                  "finished; run the same command to go on.")
                else:
                    study = load_study(open_storage(args.storage, must_exist=True), args.study_name)
            finally:
                getattr(sink, "close", lambda: None)()
            if args.report:
                folder = write_report(study, args.report, label)[0].parent
                announce(TuneEvent("report", study.study_name, message=str(folder)), f"report written to {folder}")
            if args.apply_best:
                path, params = write_best_preset(study, args.apply_best, include_fixed=args.include_fixed_settings,
                                                 storage_label=label)
                best, shown = study.best_trial, {k: v for k, v in params.items() if k != "command"}
                announce(TuneEvent("apply_best", study.study_name, trial=best.number, value=best.value, params=params,
                                   message=str(path)),
                         f"best trial {best.number} written to {path}: {format_params(shown)}"
                         + (f"\nregister with it: {params['command']}" if "command" in params else ""))
    except KeyboardInterrupt as exc:
        if not json_mode:
            print("tuning interrupted; finished trials are kept, run the same command to resume.", file=sys.stderr)
        return interrupted_status(exc)
    except (SQLAlchemyError, StorageInternalError) as exc:  # the database went away or broke mid-run
        raise InputError(f"the study storage {label} failed: {first_line(exc.__cause__ or exc)}; "
                         "run the same command again to resume (finished trials are kept unless the storage "
                         "itself is damaged, which that run reports).") from None
    return 0


def _print_summary(study: optuna.Study) -> None:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    line = (f"study {study.study_name}: " + ", ".join(f"{states.count(s.name)} {s.name.lower()}" for s in FINISHED)
            + f", {states.count('FAIL')} failed trials")
    best = best_trial(study)
    if best is not None:
        name = study_meta(study).get("value_name", "mean Dice")  # "best validation Dice" of a training study
        line += (f"; {name if name.startswith('best ') else 'best ' + name} {best.value:.4f} "
                 f"(trial {best.number}: {format_params(best.params)})")
    print(line)
