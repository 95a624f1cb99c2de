"""Study storage, creating or joining a study, and the worker loop — on Optuna's public API.

``--storage``: a path ending in ``.log`` is a :class:`~optuna.storages.JournalStorage` file (a shared file
system without a database server; no heartbeats, so a trial of a worker killed on another machine stays
RUNNING, neither counted nor retried); any other path an SQLite file; anything with ``://`` an SQLAlchemy URL
(``postgresql://user@host/db``). Databases record heartbeats: ``Study.optimize`` fails a trial whose
heartbeat is older than the grace period and :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`
queues its parameters again. A worker joining the study fails at once the trials of workers of its own host
that no longer run (:func:`fail_lost_trials`; with a database, queued again as after a stale heartbeat).

Each worker runs ``Study.optimize`` with :class:`~optuna.study.MaxTrialsCallback` until the study holds
``n_trials`` COMPLETE + PRUNED trials (W workers may end with up to ``n_trials + W - 1``) and
``TPESampler(constant_liar=True)``; the worker creating the study uses ``--seed``, a joining worker (or a
resumed run) a seed derived from it, its host and its process id, so that their random trials differ.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import socket
import sqlite3
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
import sqlalchemy
import sqlalchemy.exc as sa_exc
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url

from svreg_core.errors import InputError, OutputError
from svreg_core.interrupts import interrupts_deferred
from svreg_core.tuning.search_space import RUNTIME

#: Study user attribute holding the study's definition (objective, search space, steps...): workers must agree.
META_KEY = "svreg_tuning"
#: What ``--n-trials`` counts.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: ``enqueued`` user attribute of the base preset's own trial (see :func:`create_or_join`).
BASE_PRESET = "base preset"
#: Trial user attribute naming the process that runs it (:func:`this_worker`).
WORKER_ATTR = "worker"
#: Trial user attribute: the PID namespace of that process (Linux, :func:`pid_namespace`), set before ``worker``.
PID_NAMESPACE_ATTR = "worker_pid_namespace"
#: User attribute of a base trial queued a second time by workers joining at once, failed before it ran.
DUPLICATE_ATTR = "duplicate_of"
DEFAULT_STORAGE = "svreg-tune.db"
DEFAULT_STUDY = "svreg-tune"
#: An objective's Optuna direction.
Direction = Literal["maximize", "minimize"]


@contextlib.contextmanager
def quiet_optuna(verbose: bool | None = None) -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning in the block; with ``verbose`` given, also set Optuna's log
    level (INFO if true, else ERROR) until the block ends."""
    level = optuna.logging.get_verbosity()
    if verbose is not None:
        optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def storage_url(storage: str | Path) -> str:
    """An SQLAlchemy URL (a path becomes ``sqlite:///<absolute path>``; journal files stay paths)."""
    text = str(storage)
    if "://" not in text:
        path = Path(text).expanduser().resolve()  # characters such as ? and # are escaped in the URL
        return str(path) if path.suffix == ".log" else URL.create("sqlite", database=str(path)).render_as_string()
    try:
        url = make_url(text)
    except sa_exc.ArgumentError:
        raise InputError(f"invalid storage URL {text!r}; use a file path or e.g. postgresql://user@host/db.") from None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise InputError(f"--storage {text} is an in-memory SQLite database: it keeps no trial after the command "
                         "ends and no other worker can join it; give a file such as svreg-tune.db.")
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        url = url.set(drivername="postgresql+psycopg2")  # SQLAlchemy 2.1 defaults to psycopg 3
    return url.render_as_string(hide_password=False)


def storage_file(storage: str | Path) -> Path | None:
    """The file of a journal or SQLite storage, absolute, ``None`` for a database server: a path given as such
    with ``~`` expanded (:func:`storage_url`); an SQLite URL's as SQLite opens it (relative to the current folder,
    ``~`` a folder of that name)."""
    url = storage_url(storage)
    if url.startswith("sqlite:///"):
        return Path(make_url(url).database or "").absolute()
    return None if "://" in url else Path(url)


def describe_storage(url: str) -> str:
    """The storage with any password hidden (for messages and reports)."""
    return make_url(url).render_as_string(hide_password=True) if "://" in url else url


def first_line(exc: BaseException) -> str:
    """First line of an error's message (of the database's own error for an SQLAlchemy error)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _check_file(path: Path, must_exist: bool, sqlite: bool) -> None:
    """A storage file: its folder created, writable, and (SQLite) not damaged (``PRAGMA quick_check`` reads
    every page: a fraction of a second for thousands of trials)."""
    if path.is_dir():
        raise InputError(f"the study storage {path} is a folder; give a file name (an SQLite file, or a journal "
                         "file ending in .log).")
    if must_exist and not path.is_file():
        raise InputError(f"no study storage at {path}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of the study storage {path} ({exc.strerror}).") from None
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise OutputError(f"the study storage {path} is not writable.")
    if not sqlite or not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
        if rows == [("ok",)]:
            return
        # e.g. "*** in database main ***\nPage 3: btreeInitPage() returns error code 11"
        text = " ".join(str(r[0]) for r in rows[:2]).replace("*** in database main ***", " ")
        problem = " ".join(text.split())[:200]
    except sqlite3.OperationalError:  # e.g. locked by another worker for longer than the timeout: not damage
        return
    except sqlite3.DatabaseError as exc:  # "database disk image is malformed", "file is not a database"
        problem = str(exc)
    raise InputError(f"the study storage {path} is damaged ({problem}); restore it from a backup, or give "
                     "another --storage file to start a new study.")


def _lock_on_begin(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction of ``engine`` take the write lock when it begins (``BEGIN IMMEDIATE``).

    Optuna pops a queued trial by reading it as WAITING, then writing RUNNING; SQLite ignores ``SELECT ...
    FOR UPDATE``, so two workers could both pop it (optuna issue 4621). SQLAlchemy's recipe for pysqlite.
    """
    @sqlalchemy.event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections opened before the listeners


def open_storage(storage: str | Path, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 1, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """Open (or create) a journal file (``.log``), an SQLite file or an SQLAlchemy URL.

    Database storages: a heartbeat every ``heartbeat_interval`` s (``None``: none); a RUNNING trial without
    one for ``grace_period`` s is failed and its parameters queued again up to ``max_retry`` times.
    ``must_exist``: a missing file is an error (``--report`` / ``--apply-best``).
    """
    url, path = storage_url(storage), storage_file(storage)
    sqlite = url.startswith("sqlite:///")
    if path is not None:
        _check_file(path, must_exist, sqlite)
        if not sqlite:
            return _journal(path)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    # Two workers creating Optuna's tables in an empty database at once can collide (PostgreSQL: an
    # IntegrityError or ProgrammingError; SQLite: "table ... already exists", sqlalchemy issue 4936): retry.
    for attempt in range(4):
        try:
            with quiet_optuna():
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                 heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                                 heartbeat_stale_trial_callback=retry)
            if sqlite:
                _lock_on_begin(rdb.engine)
            return rdb
        except ImportError as exc:
            raise InputError(f"no database driver for {describe_storage(url)} ({exc}); "
                             f"for PostgreSQL install psycopg2-binary.") from None
        except Exception as exc:  # noqa: BLE001 - sqlalchemy errors become one-line user errors
            collided = isinstance(exc, (sa_exc.IntegrityError, sa_exc.ProgrammingError)) or "already exists" in str(exc)
            if not collided or attempt == 3:
                raise InputError(f"cannot open the study storage {describe_storage(url)}: {first_line(exc)}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal file storage; a file that is not an Optuna journal, or a damaged one, is a one-line error."""
    from optuna.storages.journal import JournalFileBackend

    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:  # Optuna replays every line when opening
        raise InputError(f"the study storage {path} is not a readable Optuna journal file ({first_line(exc)}); "
                         "restore it from a backup, or give another --storage file to start a new study.") from None


def load_study(storage: optuna.storages.BaseStorage, name: str, **kwargs: Any) -> optuna.Study:
    """Load an existing study or raise :class:`InputError` naming the studies that exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        there = f"studies there: {', '.join(names)}" if names else "the storage holds no study"
        raise InputError(f"no study named {name!r} ({there}).") from None


def study_meta(study: optuna.Study) -> dict[str, Any]:
    """The study definition stored by :func:`create_or_join` (empty for other studies)."""
    meta = study.user_attrs.get(META_KEY)
    return dict(meta) if isinstance(meta, dict) else {}


def _comparable(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` without the settings that may differ between machines (:data:`~.search_space.RUNTIME`)."""
    space = meta.get("search_space")
    if not isinstance(space, dict):
        return meta
    base = {k: v for k, v in dict(space.get("base", {})).items() if k not in RUNTIME}
    return {**meta, "search_space": {**space, "base": base}}


def create_or_join(storage: optuna.storages.BaseStorage, name: str, meta: dict[str, Any], *,
                   default_params: dict[str, Any] | None, direction: Direction = "maximize",
                   wait_s: float = 30.0) -> tuple[optuna.Study, bool]:
    """Create the study (``created=True``) or join it, checking that ``meta`` and the objective's
    ``direction`` (``"maximize"`` or ``"minimize"``) agree with the stored ones.

    The creator stores ``meta``, then enqueues ``default_params`` (the base's own values) as the first trial;
    a joining worker waits up to ``wait_s`` s for ``meta``, fails the trials of killed workers of this host
    (:func:`fail_lost_trials`) and, with ``default_params``, queues the base's trial again when it was stopped
    (:func:`requeue_default`).
    """
    try:
        # a stop request between creating the study and storing its settings left a study that every later run
        # refused ("not created by svreg tune"): it is held back until both are stored
        with interrupts_deferred():
            study = optuna.create_study(storage=storage, study_name=name, direction=direction)
            study.set_user_attr(META_KEY, meta)  # first: a worker joining meanwhile waits for it, not for a trial
            if default_params:
                study.enqueue_trial(default_params, user_attrs={"enqueued": BASE_PRESET})
    except optuna.exceptions.DuplicatedStudyError:
        study = load_study(storage, name)
        deadline = time.monotonic() + wait_s
        while not study_meta(study) and time.monotonic() < deadline and not study.trials:
            time.sleep(0.2)
        if not study_meta(study):
            raise InputError(f"study {name!r} exists but was not created by svreg tune.") from None
        if study.direction.name.lower() != direction:
            raise InputError(f"study {name!r} already exists with the other objective direction "
                             f"({study.direction.name.lower()}); choose another --study-name.") from None
        stored, mine = _comparable(study_meta(study)), _comparable(meta)
        differ = sorted(k for k in stored if stored[k] != mine.get(k))  # keys added later are not compared
        if differ:
            raise InputError(f"study {name!r} already exists with a different {', '.join(differ)} "
                             f"(objective, search ranges, validation data or constraint); "
                             f"choose another --study-name or the same settings.") from None
        if default_params:
            requeue_default(study, default_params, storage)
        else:
            fail_lost_trials(study, storage)
        return study, False
    return study, True


def _default_trials(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    """The base preset's trials (its first and its re-queued attempts), without duplicates never run."""
    return [t for t in study.get_trials(deepcopy=False, states=states)
            if t.user_attrs.get("enqueued") == BASE_PRESET and DUPLICATE_ATTR not in t.user_attrs]


def this_worker() -> str:
    """``host:pid`` of this process: the ``worker`` user attribute of each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_namespace() -> str | None:
    """This process's PID namespace (Linux: ``pid:[4026531836]``; ``None`` elsewhere): containers sharing the host's
    name (``docker run --network host``) each have their own, in which the others' process ids do not exist."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _worker_gone(worker: object, namespace: object = None) -> bool:
    """Whether ``worker`` (:func:`this_worker` of a trial) was a process of this host that no longer runs
    (POSIX: ``kill(pid, 0)``; elsewhere, for other hosts, and for a process of another PID ``namespace``
    (:data:`PID_NAMESPACE_ATTR`: a container with the host's name) only the heartbeat's grace period tells)."""
    host, _, pid = worker.rpartition(":") if isinstance(worker, str) else ("", "", "")
    if os.name != "posix" or host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    if namespace is not None and namespace != pid_namespace():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. a process of another user: it runs
        return False
    return False


def _lost_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The RUNNING trials whose worker was a process of this host that no longer runs (:func:`_worker_gone`)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if _worker_gone(t.user_attrs.get(WORKER_ATTR), t.user_attrs.get(PID_NAMESPACE_ATTR))]


def fail_lost_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail the trials of killed workers: those whose heartbeat is older than the grace period
    (``fail_stale_trials``) and, at once, those of workers of this host that no longer run (their numbers are
    returned); with a database storage, the latter are queued again as the former (its
    ``RetryHeartbeatStaleTrialCallback``, ``--max-retry``).
    Without this a resume straight after a kill (a journal file: any resume) left the killed trial RUNNING: never
    counted, never re-run, kept by the sampler's constant liar and listed as running in the report."""
    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    failed: list[int] = []
    for trial in _lost_trials(study):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker joining at once failed it first
            pass
    retry = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if retry is not None:
        with quiet_optuna():
            for trial_id in failed:
                retry(study, copy.deepcopy(storage.get_trial(trial_id)))  # as fail_stale_trials: it edits them
    return [storage.get_trial(trial_id).number for trial_id in failed]


def requeue_default(study: optuna.Study, default_params: dict[str, Any], storage: optuna.storages.BaseStorage) -> bool:
    """Queue the base's trial again when every attempt of it failed and the last one was stopped from
    outside (Ctrl-C / SIGTERM: ``interrupted``; a killed worker: no ``error``); return whether it was queued.
    One that failed by itself (an ``error``) is not rerun. A killed worker's trial is failed first
    (:func:`fail_lost_trials`: a resume straight after a kill would otherwise find the study finished without the
    base trial, still RUNNING); with a database storage its retry is that attempt's re-run (nothing more is queued).
    """
    fail_lost_trials(study, storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    attempts = _default_trials(study)
    last = attempts[-1].user_attrs if attempts else {}
    queued = bool(attempts) and all(t.state == TrialState.FAIL for t in attempts) and (
        bool(last.get("interrupted")) or "error" not in last)
    if queued:
        study.enqueue_trial(default_params, user_attrs={"enqueued": BASE_PRESET})
    _drop_duplicates(study, storage, study_id)
    return queued


def _drop_duplicates(study: optuna.Study, storage: optuna.storages.BaseStorage, study_id: int) -> None:
    """Fail every queued base trial but the first: two workers joining at once can both find the base's
    attempts failed and both queue it (reading and queueing are two transactions). Each is claimed as a
    worker pops a trial (WAITING -> RUNNING, atomic in the storage), so one already taken by a worker runs, and
    one the other worker has failed meanwhile (both drop the same copy) is left as it is."""
    waiting = _default_trials(study, (TrialState.WAITING,))
    for trial in waiting[1:]:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            claimed = storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except optuna.exceptions.UpdateFinishedTrialError:  # finished since it was read
            claimed = False
        if claimed:
            storage.set_trial_user_attr(trial_id, DUPLICATE_ATTR, waiting[0].number)
            storage.set_trial_user_attr(trial_id, "error", f"not run: the base preset was queued twice by workers "
                                                           f"joining at once (trial {waiting[0].number} runs it)")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)


def make_sampler(seed: int | None, created: bool, n_startup_trials: int = 10) -> optuna.samplers.TPESampler:
    """Multivariate TPE with the constant liar; the seed rule of the module docstring."""
    if seed is not None and not created:
        seed = (seed + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())) % 2**32
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=n_startup_trials)


def count_finished(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials of all workers (what ``--n-trials`` counts)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or ``None``."""
    try:
        return study.best_trial
    except ValueError:
        return None


def run_worker(study: optuna.Study, func: Callable[[optuna.Trial], float], n_trials: int, *,
               timeout: float | None = None, max_failures: int = 5,
               callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> tuple[str, str | None]:
    """Run trials until the study holds ``n_trials`` finished ones; return (reason, last error).

    ``reason``: ``"done"``, ``"timeout"`` or ``"max_failures"`` (``max_failures`` failed trials in a row; 0:
    never). A trial that raises is recorded as FAIL (``catch``) and the loop goes on; Ctrl-C / SIGTERM fails
    the running trial and propagates. A queued base trial (:func:`requeue_default`) runs even when
    ``n_trials`` are finished already.
    """
    failures: dict[str, Any] = {"in_a_row": 0, "last": None}

    def stop_after_failures(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            failures["in_a_row"] = 0
            return
        failures.update(in_a_row=failures["in_a_row"] + 1, last=str(trial.user_attrs.get("error", "failed")))
        if max_failures and failures["in_a_row"] >= max_failures:
            study.stop()

    if count_finished(study) < n_trials or _default_trials(study, (TrialState.WAITING,)):
        # A stop request is raised only inside a trial's own code (trial_function), never while Optuna
        # creates or records a trial: a trial cut there would stay RUNNING in the storage for good.
        with interrupts_deferred():
            study.optimize(func, timeout=timeout, catch=(Exception,), gc_after_trial=True,
                           callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), stop_after_failures,
                                      *callbacks])
    if max_failures and failures["in_a_row"] >= max_failures:
        return "max_failures", failures["last"]
    return ("done" if count_finished(study) >= n_trials else "timeout"), failures["last"]
