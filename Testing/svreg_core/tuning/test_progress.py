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
    assert not isinstance(make_sink("auto", stderr=io.StringIO()), TqdmBar)  # quiet in pipes
    with pytest.raises(ValueError):
        make_sink("loud")
