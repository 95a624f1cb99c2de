"""The command line's progress rendering: JSON lines, plain lines, a tqdm bar or nothing."""
from __future__ import annotations

import json
import sys

from svreg_core.progress import ProgressEvent, ProgressPrinter


def test_progress_printer_modes(capsys) -> None:
    event = ProgressEvent("affine", 3, 10, 0.25, "", {"loss": -0.5})
    printer = ProgressPrinter("json")
    printer(event)
    printer.close()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0]) == {"event": "progress", "stage": "affine", "step": 3, "total": 10,
                                                   "fraction": 0.25, "message": "", "values": {"loss": -0.5}}
    printer = ProgressPrinter("none")
    printer(event)
    printer.close()
    assert capsys.readouterr() == ("", "")
    printer = ProgressPrinter("auto")  # plain lines when stderr is not a terminal (as under pytest)
    assert printer.mode == "lines"
    for fraction in (0.25, 0.26, 0.27, 0.31):
        printer(ProgressEvent("deformable 4mm", 1, 10, fraction, "level 1 of 2"))
    printer(ProgressEvent("outputs", 0, 1, 0.96, "writing outputs"))
    printer.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["svreg: deformable 4mm 25 % (level 1 of 2)", "svreg: deformable 4mm 31 %",
                                         "svreg: outputs 96 % (writing outputs)"]
    printer = ProgressPrinter("bar")
    printer(event)
    printer(ProgressEvent("done", 1, 1, 1.0))
    printer.close()
    captured = capsys.readouterr()  # the bar's last state ("/100%", the total, is on every state)
    assert captured.out == "" and captured.err.rstrip().split("\r")[-1].startswith("done: 100%|")


def test_json_lines_are_strict_json_with_non_finite_numbers(capsys) -> None:
    """A diverging loss (NaN, infinity) was written as ``NaN`` / ``Infinity``, which is not JSON: strict readers
    (``jq``, JavaScript, most other languages) failed on the line. It is ``null`` now, other numbers unchanged."""
    printer = ProgressPrinter("json")
    printer(ProgressEvent("deformable 4 mm", 5, 10, 0.5, "", {"similarity": float("nan"), "prior": float("-inf"),
                                                             "regularization": 0.25}))
    printer.close()
    line = capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(line, parse_constant=refuse)["values"] == {"similarity": None, "prior": None,
                                                                  "regularization": 0.25}


def test_the_bar_shows_the_loss_terms_that_fit(capsys, monkeypatch) -> None:
    """A training step's five loss terms never reached the bar (only four or fewer were given to it) and the pairwise
    optimiser's three were set but not in the bar's layout; they show now, as many as the terminal's width holds."""
    terms = {"total": 0.12345, "similarity": -0.4321, "regularization": 0.012345, "prior": -1.2345, "labels": 0.5}
    for columns, shown in ((160, "loss=0.123, sim=-0.432, reg=0.0123, prior=-1.23, labels=0.5"),
                           (80, "loss=0.123, sim=-0.432]")):
        monkeypatch.setenv("COLUMNS", str(columns))
        printer = ProgressPrinter("bar")
        printer(ProgressEvent("epoch 1/10", 5, 10, 0.05, "", terms))
        printer(ProgressEvent("epoch", 1, 10, 0.1, "", {"train_total": 0.1, "val_dice": 0.7}))  # a summary's: kept
        printer.close()
        last = capsys.readouterr().err.rstrip().split("\r")[-1]
        assert shown in last and len(last) <= columns, last


def test_a_stage_counting_from_zero_again_restarts_the_bar(capsys) -> None:
    """svreg train's data checks report their own 0-100 % before the epochs' overall fraction starts at 0: the bar
    stayed full through the whole training; it starts again with the new stage. A registration's stages, whose
    fractions only grow, keep one bar."""
    def last_bar(*events: ProgressEvent) -> str:
        printer = ProgressPrinter("bar")
        for event in events:
            printer(event)
        printer.close()
        return capsys.readouterr().err.rstrip().split("\r")[-1]

    assert last_bar(ProgressEvent("label maps", 2, 2, 1.0), ProgressEvent("epoch 1/4", 1, 10, 0.025),
                    ProgressEvent("epoch 1/4", 4, 10, 0.1)).startswith("epoch 1/4:  10%|")
    assert last_bar(ProgressEvent("affine", 1, 2, 0.2), ProgressEvent("deformable 4mm", 1, 2, 0.5),
                    ProgressEvent("outputs", 1, 2, 0.9)).startswith("outputs:  90%|")


def test_the_bar_shows_on_a_terminal_that_reports_no_size(sizeless_terminal, monkeypatch) -> None:
    """On a pseudo-terminal whose size was never set (0 columns and 0 lines: some container runtimes and job
    runners), tqdm drew no bar at all and a registration showed no progress; the bar now takes ``$COLUMNS`` or
    80 columns there."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.setattr(sys, "stderr", sizeless_terminal.stream)
    printer = ProgressPrinter("bar")
    printer(ProgressEvent("deformable", 1, 2, 0.5, "", {"total": 0.5}))
    printer.close()
    shown = sizeless_terminal.read()
    last = shown.rstrip().split("\r")[-1]
    assert last.startswith("deformable:  50%|") and "loss=0.5" in last and len(last) <= 80, repr(shown)
