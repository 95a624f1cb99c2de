"""Study storage, creation/resume, worker coordination and stale-trial handling.

* Storage: a file path means an embedded SQLite database (created with its folder); anything with
  ``://`` is an SQLAlchemy URL (``postgresql://user@host/db`` for several machines). Optuna's
  :class:`~optuna.storages.RDBStorage` is used with a heartbeat and a stale-trial callback that
  re-enqueues the lost trial's parameters.
* Several workers (processes started with the same storage and study name) cooperate: a study lock
  (a file lock next to an SQLite database, ``pg_advisory_lock`` on PostgreSQL, ``GET_LOCK`` on MySQL)
  makes "count the trials, then ask for a new one" atomic, so the study ends with exactly ``n_trials``
  COMPLETE + PRUNED trials.
* Stale trials: a RUNNING trial is failed when its heartbeat is older than the grace period, or at once
  (SQLite, same machine) when the worker process that runs it no longer exists.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from svreg_core.errors import InputError, OutputError

#: Study user attribute holding the study's definition (search space, objective, pairs...).
META_KEY = "svreg_tuning"
#: Study user attribute counting the workers that have joined (gives each a distinct sampler seed).
WORKERS_KEY = "svreg_workers_joined"
#: Trial user attribute naming the worker (``{"host": ..., "pid": ...}``).
WORKER_ATTR = "worker"
#: Meta keys that must agree between cooperating workers.
META_MUST_MATCH = ("objective", "search_space", "steps", "max_folding", "labels", "label_mode", "aggregate")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

DEFAULT_STORAGE = "svreg-tune.db"
DEFAULT_STUDY = "svreg-tune"


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's experimental/deprecation warnings (heartbeat, constraints, multivariate TPE)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # ask/tell with heartbeats is what the runner does on purpose (it records heartbeats itself)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def storage_url(storage: str | Path) -> str:
    """An SQLAlchemy URL for ``storage`` (a path becomes ``sqlite:///<absolute path>``)."""
    text = str(storage)
    if "://" in text:
        from sqlalchemy.engine import make_url

        try:
            url = make_url(text)
        except Exception:  # noqa: BLE001 - sqlalchemy.exc.ArgumentError and friends
            raise InputError(f"invalid storage URL {text!r}; use a file path or e.g. "
                             f"postgresql://user@host/database.") from None
        if url.drivername == "postgresql" and not _importable("psycopg") and _importable("psycopg2"):
            # SQLAlchemy >= 2.1 defaults to psycopg 3; the project installs psycopg2-binary
            return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        return text
    return "sqlite:///" + str(Path(text).expanduser().resolve())


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL (``None`` for in-memory or other back ends)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def describe_storage(url: str) -> str:
    """The URL with any password hidden (for messages and reports)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never fail while describing an error
        return "<storage>"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def open_storage(storage: str | Path, *, heartbeat_interval: int | None = 10, grace_period: int | None = 60,
                 max_retry: int = 1, create: bool = True) -> optuna.storages.RDBStorage:
    """Open (or create) the RDB storage.

    Args:
        storage: SQLite file path or SQLAlchemy URL.
        heartbeat_interval: seconds between heartbeats of a running trial (``None``: no heartbeat).
        grace_period: a RUNNING trial whose last heartbeat is older than this is failed.
        max_retry: how often a stale (lost) trial's parameters are re-run.
        create: create a missing SQLite file (``False`` for reports: a missing file is an error).
    """
    url = storage_url(storage)
    path = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        if not create and not path.is_file():
            raise InputError(f"no study database at {path}.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the folder of the study database {path} ({exc.strerror}).") from None
        if path.exists() and not os.access(path, os.W_OK) and create:
            raise OutputError(f"the study database {path} is not writable.")
        if not path.exists() and not os.access(path.parent, os.W_OK):
            raise OutputError(f"cannot create the study database in {path.parent}: folder not writable.")
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    callback_kw = _stale_callback_kwarg()
    # Two processes creating Optuna's tables in an empty database at the same moment can collide
    # (PostgreSQL: duplicate pg_type entry); the tables exist once the other one is done, so retry.
    attempts = 4
    for attempt in range(attempts):
        try:
            with quiet_optuna():
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period, **{callback_kw: RetryStaleTrial(max_retry)})
        except ImportError as exc:
            raise InputError(f"no database driver for {describe_storage(url)} ({exc}); "
                             f"for PostgreSQL install psycopg2-binary.") from None
        except Exception as exc:  # sqlalchemy OperationalError / IntegrityError, optuna schema errors
            import sqlalchemy.exc as sa_exc

            racing = isinstance(exc, (sa_exc.IntegrityError, sa_exc.ProgrammingError))
            if not racing or attempt == attempts - 1:
                raise InputError(f"cannot open the study storage {describe_storage(url)}: "
                                 f"{_first_line(exc)}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _stale_callback_kwarg() -> str:
    """``heartbeat_stale_trial_callback`` (Optuna >= 4.9) or ``failed_trial_callback`` (older)."""
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    return "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"


class RetryStaleTrial:
    """Stale-trial callback: enqueue the lost trial's parameters again (at most ``max_retry`` times).

    Unlike Optuna's ``RetryFailedTrialCallback`` it does not copy the lost trial's user attributes
    (partial per-pair values, worker), only ``retry_of`` / ``retry_count``.
    """

    def __init__(self, max_retry: int = 1) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        count = int(trial.user_attrs.get("retry_count", 0)) + 1
        if count > self.max_retry or not trial.params:
            return
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retry_count": count})


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Load an existing study or raise :class:`InputError` naming the studies that exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        there = f"studies there: {', '.join(names)}" if names else "the storage holds no study"
        raise InputError(f"no study named {name!r} ({there}).") from None


def study_meta(study: optuna.Study) -> dict[str, Any]:
    """The study definition stored by :func:`prepare_study` (empty for foreign studies)."""
    meta = study.user_attrs.get(META_KEY)
    return dict(meta) if isinstance(meta, dict) else {}


def _comparable(meta: dict[str, Any], key: str) -> Any:
    value = meta.get(key)
    if key == "search_space" and isinstance(value, dict):
        base = {k: v for k, v in dict(value.get("base", {})).items() if k != "device"}
        value = {**value, "base": base}
    return value


def check_meta(stored: dict[str, Any], wanted: dict[str, Any], name: str) -> None:
    """Raise :class:`InputError` if an existing study was defined differently."""
    differ = [k for k in META_MUST_MATCH if _comparable(stored, k) != _comparable(wanted, k)]
    if differ:
        raise InputError(f"study {name!r} already exists with a different {', '.join(differ)} "
                         f"(preset, search ranges, validation pairs or constraint); "
                         f"choose another --study-name or the same settings.")


# --------------------------------------------------------------------------------------------------
# counting


def count_trials(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``)."""
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def count_finished(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials (what ``--n-trials`` counts)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or ``None``."""
    try:
        return study.best_trial
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# worker identity, heartbeat, stale trials


def worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (POSIX; on Windows ``os.kill(pid, 0)`` would send Ctrl-C: assume alive)."""
    if os.name == "nt" or pid <= 0:
        return os.name == "nt"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class Heartbeat:
    """Records the heartbeat of one trial every ``interval`` seconds in a daemon thread.

    Optuna only starts its heartbeat thread inside ``Study.optimize``; the runner uses ask/tell so it
    records heartbeats itself, through the storage's public ``record_heartbeat``.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self._thread = threading.Thread(target=self._loop, name=f"svreg-heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a transient DB error must not kill the worker
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def fail_stale_trials(study: optuna.Study, *, own_trial_ids: set[int] = frozenset(),  # type: ignore[assignment]
                      grace_period: float = 60.0) -> list[int]:
    """Fail RUNNING trials whose worker is gone; return their numbers.

    1. Optuna's heartbeat check (stale heartbeat → FAIL, then the storage's stale-trial callback).
    2. SQLite on this machine: a trial whose worker process (``worker`` attr, same host) is dead — or is
       this very process but not one of ``own_trial_ids`` (pid reuse) — is failed at once with an
       ``error`` attribute, and re-enqueued through the same callback.
    3. A RUNNING trial that never recorded a worker (its process died right after creating it) older
       than ``grace_period`` seconds.
    """
    failed: list[int] = []
    with quiet_optuna():
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        failed.extend(t.number for t in trials if t.number in before and t.state == TrialState.FAIL)
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a caching layer
    local = isinstance(backend, optuna.storages.RDBStorage) and sqlite_path(backend.url) is not None
    me = worker_identity()
    now = time.time()
    for t in running:
        tid = t._trial_id
        if tid in own_trial_ids:
            continue
        worker = t.user_attrs.get(WORKER_ATTR)
        reason = None
        if isinstance(worker, dict):
            if local and worker.get("host") == me["host"]:
                pid = int(worker.get("pid", -1))
                if pid == me["pid"] or not _pid_alive(pid):
                    reason = f"worker process {pid} on {worker.get('host')} ended while running this trial"
        elif t.datetime_start is not None and now - t.datetime_start.timestamp() > grace_period:
            reason = "worker lost before it started the trial"
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(tid, "error", reason)
            if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
                continue
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # another worker got there first
        failed.append(t.number)
        callback = _stale_callback(storage)
        if callback is not None:
            callback(study, storage.get_trial(tid))
    return failed


def _stale_callback(storage: Any) -> Any:
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None) or getattr(
        storage, "get_failed_trial_callback", None)
    with quiet_optuna():
        return getter() if getter is not None else None


# --------------------------------------------------------------------------------------------------
# the study lock


class StudyLock:
    """An inter-process lock for one study, re-entrant per instance (see module docstring)."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.study_name = study_name
        self._local = threading.RLock()
        self._engine: Any = None
        self._kind = "none"
        path = sqlite_path(url)
        if path is not None:
            self._kind = "file"
            self._path = path.with_name(path.name + ".lock")
        else:
            from sqlalchemy.engine import make_url

            backend = make_url(url).get_backend_name()
            if backend in ("postgresql", "mysql", "mariadb"):
                self._kind = backend
        digest = hashlib.sha1(f"svreg-tune:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._depth = 0
        self._handle: Any = None

    def _acquire(self) -> None:
        if self._kind == "file":
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self._path, "a+b")
            except OSError as exc:
                raise OutputError(f"cannot create the lock file {self._path} of the study database "
                                  f"({exc.strerror or exc}).") from None
            _lock_file(self._handle)
        elif self._kind != "none":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            try:
                if self._engine is None:
                    self._engine = sqlalchemy.create_engine(self.url, poolclass=NullPool)
                conn = self._engine.connect()
            except ImportError as exc:
                raise InputError(f"no database driver for {describe_storage(self.url)} ({exc}); "
                                 f"for PostgreSQL install psycopg2-binary.") from None
            except Exception as exc:  # noqa: BLE001 - connection refused, bad credentials...
                raise InputError(f"cannot open the study storage {describe_storage(self.url)}: "
                                 f"{_first_line(exc)}") from None
            try:
                if self._kind == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                else:
                    conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 600)"), {"k": f"svreg{self._key}"})
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._handle = conn

    def _release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if self._kind == "file":
            _unlock_file(handle)
            handle.close()
        else:
            import sqlalchemy

            try:
                if self._kind == "postgresql":
                    handle.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                else:
                    handle.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"svreg{self._key}"})
                handle.commit()
            finally:
                handle.close()  # closing the session releases the lock anyway

    def __enter__(self) -> "StudyLock":
        self._local.acquire()
        try:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
        except BaseException:
            self._local.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release()
        finally:
            self._local.release()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _lock_file(handle: Any) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        while True:
            try:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:
                time.sleep(0.05)
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def _unlock_file(handle: Any) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# creating / joining a study


def prepare_study(storage: optuna.storages.BaseStorage, name: str, meta: dict[str, Any], lock: StudyLock, *,
                  seed: int | None, pruner: optuna.pruners.BasePruner,
                  default_params: dict[str, Any] | None, max_folding: float | None,
                  n_startup_trials: int = 10) -> tuple[optuna.Study, int]:
    """Create or join the study; return it and this worker's index (0 for the first ever).

    Under the study lock: create with ``load_if_exists``, store ``meta`` (or check it matches), count
    this worker in, and for a brand-new study enqueue ``default_params`` as trial 0. The TPE sampler is
    seeded with ``seed`` for worker 0 and a distinct derived seed for later workers and resumed runs (the
    same seed in every worker would repeat the same random start-up trials).
    """
    with lock, quiet_optuna():
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - DB errors become one-line user errors
            if isinstance(exc, (InputError, OutputError)):
                raise
            raise InputError(f"cannot create or load study {name!r}: {_first_line(exc)}") from None
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise InputError(f"study {name!r} exists and minimises; tuning needs a maximised Dice study.")
        stored = study_meta(study)
        fresh = not stored
        if fresh:
            if study.get_trials(deepcopy=False):
                raise InputError(f"study {name!r} exists but was not created by svreg tune.")
            study.set_user_attr(META_KEY, meta)
        else:
            check_meta(stored, meta, name)
        worker_index = int(study.user_attrs.get(WORKERS_KEY, 0))
        study.set_user_attr(WORKERS_KEY, worker_index + 1)
        if fresh and default_params:
            study.enqueue_trial(default_params, user_attrs={"enqueued": "base preset"})
    sampler_seed = None if seed is None else (seed if worker_index == 0 else seed + 7919 * worker_index)
    constraints = None
    if max_folding is not None:
        limit = float(max_folding)

        def constraints(trial: FrozenTrial) -> list[float]:
            worst = trial.user_attrs.get("folding_percent_max")
            return [0.0 if worst is None else float(worst) - limit]

    with quiet_optuna():
        sampler = optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True,
                                             n_startup_trials=n_startup_trials, constraints_func=constraints)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return study, worker_index


@contextlib.contextmanager
def running_trial(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[Heartbeat]:
    """Heartbeat for ``trial_id`` while the block runs."""
    hb = Heartbeat(storage, trial_id).start()
    try:
        yield hb
    finally:
        hb.stop()
