"""map_threads: the results of a plain loop, in order, on several threads or one; errors re-raised."""
from __future__ import annotations

import threading

import pytest

import svreg_core.parallel as threads
from svreg_core.parallel import map_threads


@pytest.mark.parametrize("cpus", [1, 4])
def test_results_in_order_on_as_many_threads_as_allowed(monkeypatch, cpus: int) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
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
