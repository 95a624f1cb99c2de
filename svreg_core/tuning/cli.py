"""``svreg tune``: arguments and entry point (wired into ``svreg_core.cli`` as a subcommand).

Examples::

    svreg tune validation/ --preset brain-mri --n-trials 50 --seed 1            # SQLite svreg-tune.db
    svreg tune pairs.csv --storage postgresql://me@db/tuning --study-name ixi     # run on several machines
    svreg tune --storage svreg-tune.db --report report/ --apply-best tuned.json   # summarise, export preset
    svreg register --preset tuned.json fixed.nii.gz moving.nii.gz -o out/

Running the same command again resumes the study until ``--n-trials`` trials are finished (COMPLETE
or PRUNED) in total; running it on several machines/processes at once makes them share the work.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator, Sequence

from svreg_core.errors import InputError, SvregError
from svreg_core.tuning.search_space import DEFAULT_SEARCH, SEARCHABLE

PROGRESS_MODES = ("auto", "bar", "json", "none")


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``svreg tune`` arguments to ``parser``."""
    from svreg_core.tuning.study import DEFAULT_STORAGE, DEFAULT_STUDY

    parser.add_argument("validation", nargs="?", default=None,
                        help="validation set: a folder of pair sub-folders (fixed, moving, fixed_labels, "
                             "moving_labels .nii.gz) or a .csv/.json pair list; omit to only --report/--apply-best")
    study = parser.add_argument_group("study")
    study.add_argument("--storage", default=DEFAULT_STORAGE,
                       help=f"SQLite file or SQLAlchemy URL, e.g. postgresql://user@host/db (default {DEFAULT_STORAGE})")
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

    space = parser.add_argument_group("search space and fixed parameters")
    space.add_argument("--preset", default="brain-mri",
                       help="preset name or preset JSON file the trials start from; sets the default ranges")
    space.add_argument("--search", nargs="+", choices=SEARCHABLE, default=list(DEFAULT_SEARCH),
                       help="parameters to search (default: alpha_prime lambda_max)")
    space.add_argument("--alpha-prime-range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                       help="α′ range (default per preset: brain MRI 0.01-0.2, CT 0.001-0.1; log scale)")
    space.add_argument("--lambda-max-range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                       help="λ_max range (default per preset: brain MRI 0.5-5, CT 0.8-3)")
    space.add_argument("--level-spacings", nargs="+", type=float, metavar="MM", default=None,
                       help="fixed working-grid spacings of every trial (coarse to fine)")
    space.add_argument("--iterations", nargs="+", type=int, metavar="N", default=None,
                       help="fixed iterations per level of every trial")
    space.add_argument("--no-affine", action="store_true", help="skip the affine stage (pairs pre-aligned)")
    space.add_argument("--device", default=None, help="auto, cpu or cuda (default: the preset's)")

    objective = parser.add_argument_group("objective")
    objective.add_argument("--max-folding", type=float, default=None, metavar="PERCENT",
                           help="reject (prune) a trial as soon as a pair's folding (%% of |J| <= 0) exceeds this")
    objective.add_argument("--labels", nargs="+", type=int, default=None,
                           help="labels scored by Dice (default: every non-zero label present in both maps)")
    objective.add_argument("--label-interpolation", choices=("linear", "nearest"), default="linear",
                           help="warping of the moving labels: one-hot trilinear + argmax (default) or nearest")
    objective.add_argument("--pruner-startup-trials", type=int, default=5,
                           help="trials finished before median pruning starts (default 5)")
    objective.add_argument("--pruner-warmup-steps", type=int, default=1,
                           help="pairs evaluated before a trial may be pruned, minus one (default 1: after 2 pairs)")
    objective.add_argument("--no-pruning", action="store_true", help="never prune on the median")

    workers = parser.add_argument_group("workers")
    workers.add_argument("--heartbeat-interval", type=int, default=10,
                         help="seconds between heartbeats of a running trial (default 10)")
    workers.add_argument("--grace-period", type=int, default=60,
                         help="a running trial without heartbeat for this long is failed and retried (default 60)")
    workers.add_argument("--max-retry", type=int, default=1, help="re-runs of a trial lost with its worker (default 1)")

    out = parser.add_argument_group("output")
    out.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                     help="auto: progress bar on a terminal, quiet in pipes; json: one JSON object per line on stdout")
    out.add_argument("--report", metavar="DIR", default=None,
                     help="write summary.md, trials.csv, summary.json and figures of the study into DIR")
    out.add_argument("--apply-best", metavar="PATH", default=None,
                     help="write the best parameters as a preset JSON file (for svreg register --preset PATH)")
    out.add_argument("--verbose", action="store_true", help="show Optuna's own log lines")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (the running trial is recorded as failed, finished ones are kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _optuna_verbosity(verbose: bool) -> Iterator[None]:
    import optuna

    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old)


def _check_args(args: argparse.Namespace) -> None:
    if args.validation is None and not args.report and not args.apply_best:
        raise InputError("give a validation set to tune on, or --report DIR / --apply-best PATH for an existing study.")
    if args.n_trials < 1:
        raise InputError("--n-trials must be at least 1.")
    if args.max_failures < 0 or args.max_retry < 0:
        raise InputError("--max-failures and --max-retry must not be negative.")
    if args.heartbeat_interval < 1 or args.grace_period < 1:
        raise InputError("--heartbeat-interval and --grace-period must be at least 1 second.")
    if args.grace_period <= args.heartbeat_interval:
        raise InputError("--grace-period must be longer than --heartbeat-interval.")
    if args.max_folding is not None and args.max_folding < 0:
        raise InputError("--max-folding must not be negative.")
    if args.pruner_startup_trials < 0 or args.pruner_warmup_steps < 0 or args.startup_trials < 0:
        raise InputError("--pruner-startup-trials, --pruner-warmup-steps and --startup-trials must not be negative.")


def _tune(args: argparse.Namespace, reporter: Any) -> tuple[Any, Any, int]:
    """Run the tuning loop; returns (study, storage label, exit code)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from svreg_core.tuning.objective import Objective, PairwiseDiceEvaluator
    from svreg_core.tuning.pairs import discover_pairs
    from svreg_core.tuning.runner import TuningRunner
    from svreg_core.tuning.search_space import build_search_space
    from svreg_core.tuning.study import (StudyLock, describe_storage, open_storage, prepare_study,
                                         storage_url)

    pairs = discover_pairs(args.validation)
    overrides: dict[str, Any] = {"level_spacings": args.level_spacings, "iterations": args.iterations,
                                 "affine": False if args.no_affine else None}
    space = build_search_space(args.preset, search=args.search, overrides=overrides,
                               alpha_prime_range=args.alpha_prime_range, lambda_max_range=args.lambda_max_range)
    evaluator = PairwiseDiceEvaluator(pairs, labels=args.labels, label_mode=args.label_interpolation,
                                      device=args.device)
    meta = {"version": 1, "objective": evaluator.name, "aggregate": "mean", "search_space": space.to_dict(),
            "steps": evaluator.step_labels(), "max_folding": args.max_folding, "labels": args.labels,
            "label_mode": args.label_interpolation}
    url = storage_url(args.storage)
    label = describe_storage(url)
    schema_lock = StudyLock(url, "")  # creating Optuna's tables must not race with another worker
    try:
        with schema_lock:
            storage = open_storage(url, heartbeat_interval=args.heartbeat_interval,
                                   grace_period=args.grace_period, max_retry=args.max_retry)
    finally:
        schema_lock.dispose()
    lock = StudyLock(url, args.study_name)
    pruner: optuna.pruners.BasePruner
    if args.no_pruning:
        pruner = optuna.pruners.NopPruner()
    else:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=args.pruner_startup_trials,
                                             n_warmup_steps=args.pruner_warmup_steps, interval_steps=1)
    try:
        study, _ = prepare_study(storage, args.study_name, meta, lock, seed=args.seed, pruner=pruner,
                                 default_params=None if args.no_default_trial else space.default_values(),
                                 max_folding=args.max_folding, n_startup_trials=args.startup_trials)
        objective = Objective(space, evaluator, aggregate="mean", max_folding=args.max_folding)
        runner = TuningRunner(study, objective, n_trials=args.n_trials, lock=lock, reporter=reporter,
                              timeout=args.timeout, max_failures=args.max_failures,
                              grace_period=float(args.grace_period))
        summary = runner.run()
    except SQLAlchemyError as exc:  # the database went away mid-run (network, server restart, disk full)
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise InputError(f"the study storage {label} failed: {detail[0] if detail else exc.__class__.__name__}; "
                         f"finished trials are kept, run the same command again to resume.") from None
    finally:
        lock.dispose()
    if summary.reason == "max_failures":
        raise InputError(f"stopped after {args.max_failures} failed trials in a row; last error: {summary.last_error}")
    return study, label, 130 if summary.reason == "interrupted" else 0


def run_tune(args: argparse.Namespace, reporter: Any = None) -> int:
    """Run ``svreg tune`` for parsed ``args``; return the exit code (0 ok, 130 interrupted).

    ``reporter`` (optional) replaces the one chosen by ``--progress``: any callable taking a
    :class:`~svreg_core.tuning.progress.TuneEvent` (e.g. a GUI running the tuning in-process).
    User errors raise :class:`InputError` / :class:`OutputError` (one-line messages).
    """
    from svreg_core.tuning.progress import CallbackReporter, TuneEvent, make_reporter
    from svreg_core.tuning.report import best_parameters, write_best_preset, write_report
    from svreg_core.tuning.study import (count_finished, describe_storage, load_study, open_storage,
                                         quiet_optuna, storage_url)

    _check_args(args)
    json_mode = args.progress == "json" or reporter is not None
    if reporter is None:
        reporter = make_reporter(args.progress)
    elif not hasattr(reporter, "close"):
        reporter = CallbackReporter(reporter)
    code = 0
    study = None
    label = describe_storage(storage_url(args.storage))
    try:
        with _optuna_verbosity(args.verbose), quiet_optuna(), _sigterm_as_interrupt():
            try:
                if args.validation is not None:
                    study, label, code = _tune(args, reporter)
                else:
                    storage = open_storage(args.storage, heartbeat_interval=None, grace_period=None, create=False)
                    study = load_study(storage, args.study_name)
            finally:
                reporter.close()
            if code == 130:
                if not json_mode:
                    print("tuning interrupted; finished trials are kept, run the same command to resume.",
                          file=sys.stderr)
                return code
            if args.validation is not None and not json_mode:
                _print_summary(study)
            finished = count_finished(study)
            if args.report:
                paths = write_report(study, args.report, label)
                _announce(json_mode, reporter, TuneEvent("report", study.study_name, finished=finished,
                                                         n_trials=args.n_trials, message=str(paths[0].parent)),
                          f"report written to {paths[0].parent}")
            if args.apply_best:
                path = write_best_preset(study, args.apply_best, label)
                params, best = best_parameters(study)
                _announce(json_mode, reporter,
                          TuneEvent("apply_best", study.study_name, trial=best.number, value=best.value,
                                    params=dict(best.params), best_value=best.value,
                                    best_params=dict(best.params), best_trial=best.number, finished=finished,
                                    n_trials=args.n_trials, message=str(path)),
                          f"best parameters (trial {best.number}) written to {path}")
    except KeyboardInterrupt:
        return 130
    return code


def _announce(json_mode: bool, reporter: Any, event: Any, text: str) -> None:
    if json_mode:
        reporter(event)
    else:
        print(text)


def _print_summary(study: Any) -> None:
    from svreg_core.tuning.study import best_trial, count_trials

    counts = count_trials(study)
    best = best_trial(study)
    line = (f"study {study.study_name}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed trials")
    if best is not None:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        fold = best.user_attrs.get("folding_percent")
        line += f"; best mean Dice {best.value:.4f} (trial {best.number}: {params}"
        line += f", folding {fold:.3g}%)" if isinstance(fold, (int, float)) else ")"
    print(line)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m svreg_core.tuning.cli``)."""
    parser = argparse.ArgumentParser(prog="svreg tune", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tune_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return run_tune(args)
    except SvregError as exc:
        print(f"svreg tune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
