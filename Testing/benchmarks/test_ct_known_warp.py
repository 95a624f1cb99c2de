"""The notes ``benchmarks/ct_known_warp.py`` writes under its results tables."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_results_notes_state_the_threads_of_the_run(monkeypatch) -> None:
    """The notes said 'Every tool: 2 threads' whatever ``--threads`` the sweep ran with."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling modules
    spec = importlib.util.spec_from_file_location("ct_known_warp", BENCHMARKS / "ct_known_warp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    notes = " ".join(module.NOTES.format(threads=6).split())
    assert "Every tool: 6 threads, CPU, deformable only" in notes
    assert "2 threads" not in notes
