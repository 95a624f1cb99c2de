"""Progress of ``svreg tune``: JSON lines and the progress bar."""
from __future__ import annotations

import io
import json
import math

import pytest

from svreg_core.tuning.progress import TqdmBar, TuneEvent, json_lines, make_sink

# ----------------------------------------------------------------------------------------- progress


def test_progress_sinks() -> None:
    out = io.StringIO()
    json_lines(out)(TuneEvent("trial", "s", trial=3, state="COMPLETE", value=math.nan, params={"a": 1.0},
                              folding=math.inf))
    doc = json.loads(out.getvalue())
    assert doc["value"] is None and doc["folding"] is None and doc["trial"] == 3 and doc["params"] == {"a": 1.0}
    bar_stream = io.StringIO()
    bar = TqdmBar(bar_stream)
    bar(TuneEvent("start", "s", n_trials=4, finished=1))
    bar(TuneEvent("trial", "s", trial=1, state="FAIL", error="boom", finished=1, n_trials=4))
    bar(TuneEvent("trial", "s", trial=2, state="COMPLETE", value=0.8, best_value=0.8, finished=2, n_trials=4))
    bar.close()
    text = bar_stream.getvalue()
    assert "2/4" in text and "best=0.8000" in text and "trial 1 failed: boom" in text
    piped = io.StringIO()  # not a terminal: plain lines (svreg tune printed nothing in a pipe or a log file)
    lines = make_sink("auto", stderr=piped)
    assert not isinstance(lines, TqdmBar)
    lines(TuneEvent("start", "s", n_trials=4, finished=0, message="0 of 4 trials already finished"))
    lines(TuneEvent("trial_start", "s", trial=1, state="RUNNING", n_trials=4))
    lines(TuneEvent("step", "s", trial=1, step=0, n_steps=2))
    lines(TuneEvent("trial", "s", trial=1, state="FAIL", error="boom", finished=1, n_trials=4, elapsed_s=12.4))
    lines(TuneEvent("trial", "s", trial=2, state="COMPLETE", value=0.8, best_value=0.8, best_trial=2, finished=2,
                    n_trials=4, elapsed_s=30.0))
    lines(TuneEvent("trial", "s", trial=3, state="PRUNED", value=0.7, best_value=0.8, best_trial=2, finished=3,
                    n_trials=4, elapsed_s=41.0, message="folding 5% > 4% on pair01"))
    assert piped.getvalue().splitlines() == [
        "svreg tune: study s: 0 of 4 trials already finished",  # a log said nothing until the first trial ended
        "svreg tune: trial 1 fail (boom); best none yet; 1/4 finished, 12 s",
        "svreg tune: trial 2 complete, 0.8000; best 0.8000 (trial 2); 2/4 finished, 30 s",
        "svreg tune: trial 3 pruned (folding 5% > 4% on pair01), 0.7000; best 0.8000 (trial 2); 3/4 finished, 41 s"]
    quiet = io.StringIO()
    make_sink("none", stderr=quiet)(TuneEvent("trial", "s", trial=2, state="COMPLETE"))
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError):
        make_sink("loud")


def test_the_tuning_bar_shows_on_a_terminal_that_reports_no_size(sizeless_terminal, monkeypatch) -> None:
    """On a pseudo-terminal of 0 columns and 0 lines (its size never set), the trials' bar drew nothing during
    hours of tuning; it now takes ``$COLUMNS`` or 80 columns there."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    bar = TqdmBar(sizeless_terminal.stream)
    bar(TuneEvent("start", "s", n_trials=4, finished=1))
    bar(TuneEvent("trial", "s", trial=2, state="COMPLETE", value=0.8, best_value=0.8, finished=2, n_trials=4))
    bar.close()
    last = sizeless_terminal.read().rstrip().split("\r")[-1]
    assert last.startswith("tuning s:  50%|") and "2/4" in last and "best=0.8000" in last and len(last) <= 80, last
