"""Study storages of ``svreg tune`` (SQLite, PostgreSQL URLs): plain errors, relative URLs, workers
creating one file at once, SQLite's write lock."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from svreg_core.errors import InputError, OutputError
from svreg_core.tuning.cli import run_tune
from svreg_core.tuning.study import (
    PID_NAMESPACE_ATTR,
    WORKER_ATTR,
    create_or_join,
    load_study,
    open_storage,
    quiet_optuna,
    storage_file,
    storage_url,
)

# ----------------------------------------------------------------------------------------- storage


def test_storage_errors_are_one_line_user_errors(tmp_path: Path, helpers: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create the folder"):
        open_storage(blocker / "sub" / "s.db")
    with pytest.raises(InputError, match=r"cannot open the study storage postgresql(\+psycopg2)?://me:\*\*\*@127"):
        open_storage("postgresql://me:secret@127.0.0.1:1/x")  # connection refused; password not shown
    with pytest.raises(InputError, match="invalid storage URL"):
        storage_url("not a url://")
    with pytest.raises(InputError, match="no study storage at"):
        open_storage(tmp_path / "missing.db", must_exist=True)
    for folder in ("folder.db", "folder.log"):  # a folder named like a journal file: IsADirectoryError's traceback
        (tmp_path / folder).mkdir()
        with pytest.raises(InputError, match=f"the study storage .*{folder} is a folder; give a file name"):
            open_storage(tmp_path / folder)
    for memory in ("sqlite://", "sqlite:///:memory:"):  # tracebacks of Optuna's heartbeat thread, nothing kept
        with pytest.raises(InputError, match=f"--storage {memory} is an in-memory SQLite database"):
            storage_url(memory)
    open_storage(tmp_path / "empty.db")
    level = optuna.logging.get_verbosity()
    with pytest.raises(InputError, match="no study named 'nope' \\(the storage holds no study\\)"):
        run_tune(helpers.parse_args("--storage", tmp_path / "empty.db", "--study-name", "nope", "--report",
                                    tmp_path / "r"))
    assert optuna.logging.get_verbosity() == level  # run_tune restores Optuna's log level


def test_relative_sqlite_url_opens_an_existing_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///relative.db`` (a URL relative to the working folder, as reports should name it) reopens."""
    monkeypatch.chdir(tmp_path)
    create_or_join(open_storage("sqlite:///studies/s.db"), "s", {"objective": "x"}, default_params=None)
    assert load_study(open_storage("sqlite:///studies/s.db", must_exist=True), "s").user_attrs


def test_sqlite_file_names_with_url_characters(tmp_path: Path) -> None:
    """``run?1.db`` stored the study in a file named ``run`` (the URL's query began at ``?``), while the checks
    ran on ``run?1.db``."""
    path = tmp_path / "run?1#a%b.db"
    study, _ = create_or_join(open_storage(path), "s", {"objective": "x"}, default_params=None)
    study.enqueue_trial({})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run?1#a%b.db"]
    assert optuna.get_all_study_names(open_storage(path, must_exist=True)) == ["s"]


def test_a_file_that_is_not_a_journal_is_a_one_line_error(tmp_path: Path) -> None:
    sqlite_file = tmp_path / "s.db"
    open_storage(sqlite_file)
    wrong = tmp_path / "wrong.log"
    wrong.write_bytes(sqlite_file.read_bytes())  # an SQLite file named like a journal
    with pytest.raises(InputError, match="is not a readable Optuna journal file"):
        open_storage(wrong)
    journal = tmp_path / "j.log"
    create_or_join(open_storage(journal), "s", {"objective": "x"}, default_params={"x": 1.0})
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join([lines[0], lines[1][: len(lines[1]) // 2], *lines[2:]]) + "\n")  # a cut line
    with pytest.raises(InputError, match="is not a readable Optuna journal file"):
        open_storage(journal)


def test_workers_creating_the_storage_at_once(tmp_path: Path) -> None:
    """Workers opening one new SQLite file at the same moment race to create Optuna's tables: all succeed."""
    errors: list[str] = []
    for i in range(5):
        barrier = threading.Barrier(3)

        def open_it(path: Path = tmp_path / f"s{i}.db") -> None:
            barrier.wait()
            try:
                open_storage(path, heartbeat_interval=10, grace_period=60)
            except InputError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_sqlite_transactions_take_the_write_lock_when_they_begin(tmp_path: Path) -> None:
    """Popping a queued trial must not let two workers both read it as WAITING: a transaction of the
    storage holds SQLite's write lock from its first statement, so another writer is refused until it
    ends (with pysqlite's deferred transactions the other writer got in)."""
    path = tmp_path / "lock.db"
    storage = open_storage(path)
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    with storage.engine.connect() as connection:
        with connection.begin():
            connection.exec_driver_sql("SELECT 1")  # a read only, as Optuna's check of the trial state
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.execute("ROLLBACK")
    other.close()
    study = optuna.create_study(storage=storage, study_name="queue")  # the storage still works as usual
    study.enqueue_trial({"x": 1.0})
    assert study.ask().params == {} and len(study.trials) == 1


def test_storage_file_is_absolute_where_the_storage_puts_it(tmp_path, monkeypatch) -> None:
    """A relative SQLite URL's file was returned relative (the docstring promised absolute), so the trials' runs of
    a training study, placed next to it, moved with the current folder; ``~`` in a URL is a folder of that name for
    SQLite, while a plain path's ``~`` is the home folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage_file("sqlite:///rel.db") == tmp_path / "rel.db"
    assert storage_file("sqlite:///~/r.db") == tmp_path / "~" / "r.db"
    assert storage_file("~/x.db") == tmp_path / "home" / "x.db"
    assert storage_file(tmp_path / "j.log") == tmp_path / "j.log" and storage_file("postgresql://u@h/db") is None


@pytest.mark.parametrize("name", ["s.db", "s.log"])
def test_a_killed_workers_trial_is_failed_when_the_study_is_resumed(tmp_path: Path, name: str) -> None:
    """A worker killed (SIGKILL, out of memory) in a trial other than the base's, and the study resumed at once:
    the trial stayed RUNNING (a journal file: for good; SQLite: until its heartbeat was older than the grace
    period, after the resumed run had often finished), so it was never counted or re-run, the sampler's constant
    liar kept it and the report listed it as running. Its worker was a process of this host that no longer
    runs: it is failed as the study is joined, and a database queues its parameters again (--max-retry). A worker
    of another PID namespace (a container with the host's name) may run although its process id does not exist
    here: its trial is left to the heartbeat."""
    storage = open_storage(tmp_path / name)  # the killed worker's trials: no heartbeat yet (Study.optimize's)
    meta = {"objective": "quadratic"}
    study, _ = create_or_join(storage, "s", meta, default_params=None)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    killed = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # the killed worker's trial
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{int(dead.stdout)}")
    running = study.ask()  # a trial of a worker that still runs (this process) is left alone
    running.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    elsewhere = study.ask()  # a worker in a container with this host's name: its process id means nothing here
    elsewhere.set_user_attr(PID_NAMESPACE_ATTR, "pid:[1]")
    elsewhere.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{int(dead.stdout)}")
    study, created = create_or_join(open_storage(tmp_path / name, heartbeat_interval=60, grace_period=120), "s",
                                    meta, default_params=None)
    trials = study.get_trials()
    assert not created and [t.state for t in trials[:4]] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                                                             TrialState.RUNNING]
    if name.endswith(".db"):
        (retry,) = trials[4:]
        with quiet_optuna():
            assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 1
        assert retry.state == TrialState.WAITING and retry.params == trials[1].params
    else:  # a journal file has no retry mechanism (no heartbeats)
        assert len(trials) == 4
