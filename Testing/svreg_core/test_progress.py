"""The command line's progress rendering: JSON lines, plain lines, a tqdm bar or nothing."""
from __future__ import annotations

import json

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
