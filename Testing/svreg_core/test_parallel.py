"""map_threads: the results of a plain loop, in order, on several threads or one; errors re-raised."""
from __future__ import annotations

import threading
import time

import pytest
import torch

import svreg_core.parallel as threads
from svreg_core.parallel import map_threads


@pytest.fixture
def torch_threads():
    """Set torch's thread count (what map_threads may use at most) for a test; restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("cpus", [1, 4])
def test_results_in_order_on_as_many_threads_as_allowed(monkeypatch, torch_threads, cpus: int) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
    torch_threads(4)  # CPUs, not torch, set the limit here
    names: set[str] = set()
    barrier = threading.Barrier(min(cpus, 3), timeout=5)

    def square(x: int) -> int:
        names.add(threading.current_thread().name)
        if x < 3 and cpus > 1:
            barrier.wait()  # the first three items can only pass together: they run on three threads at once
        return x * x

    assert map_threads(square, range(10)) == [x * x for x in range(10)]
    assert len(names) == 1 if cpus == 1 else 3 <= len(names) <= 4
    assert (threading.current_thread().name in names) == (cpus == 1)  # one CPU: the caller's own thread


def test_an_item_error_is_re_raised(monkeypatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)

    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("item 3")
        return x

    with pytest.raises(ValueError, match="item 3"):
        map_threads(fail_on_three, range(6))
    assert map_threads(fail_on_three, []) == []


def test_items_not_started_when_one_fails_are_not_run(monkeypatch, torch_threads) -> None:
    """An error (or Ctrl-C) does not wait for the items still queued (``Executor.map`` cancels them on the way
    out): the metrics of a batch stop at the first failure instead of running on for nothing."""
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    torch_threads(2)
    started: list[int] = []

    def fail_first(x: int) -> int:
        started.append(x)
        if x == 0:
            raise ValueError("item 0")
        time.sleep(0.05)
        return x

    with pytest.raises(ValueError, match="item 0"):
        map_threads(fail_first, range(40))
    # the other thread's item, and perhaps one the failing thread took before the caller saw the error
    assert len(started) <= 4, started


def test_no_more_threads_than_torch_is_allowed(monkeypatch, torch_threads) -> None:
    """``svreg --threads 1`` (torch's thread count) ran the metrics' items on up to 8 threads all the same."""
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    torch_threads(1)
    names: set[str] = set()
    assert map_threads(lambda x: names.add(threading.current_thread().name) or x, range(6)) == list(range(6))
    assert names == {threading.current_thread().name}
