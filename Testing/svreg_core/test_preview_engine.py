"""``svreg preview``: one engine, the affine stage run once, then one registration per JSON request line.

Proves: a request's files are byte for byte those of ``svreg register --model HYPER --alpha-prime A
--lambda-max L --outputs ...`` (decompressed NIfTI bytes); codes change the outputs; bad requests (codes
outside the trained ranges, unknown fields or outputs, an unwritable folder, not JSON) are answered with
one plain ``error`` line and the engine serves on; ``quit`` and the end of input end it; a plain model and
bad inputs are refused before any work; the real child process answers each line before the next arrives.
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svreg_core.cli import main

OUTPUTS = ["displacement", "regularization", "jacobian", "warped"]


@pytest.fixture(scope="module")
def hyper(tiny_checkpoints) -> Path:
    return tiny_checkpoints.hyper


def _preview(monkeypatch, capsys, argv, requests) -> tuple[int, list[dict], str]:
    """``svreg preview`` in this process, ``requests`` (dicts or raw lines) on its stdin: exit status,
    the JSON events it printed and its stderr."""
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    stdin = io.TextIOWrapper(io.BytesIO(lines.encode("utf-8", "surrogateescape")), encoding="utf-8")  # as a pipe's
    monkeypatch.setattr(sys, "stdin", stdin)
    status = main(["preview", *map(str, argv)])
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def _answers(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] in ("done", "error")]


def _nifti_bytes(path: Path) -> bytes:
    with gzip.open(path, "rb") as fh:
        return fh.read()


def test_requests_give_the_files_of_svreg_register(monkeypatch, capsys, tiny_pair, hyper, tmp_path) -> None:
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    reference = tmp_path / "register"
    assert main(["register", str(p.fixed), str(p.moving), "-o", str(reference), "--model", str(hyper),
                 "--alpha-prime", "0.1", "--lambda-max", "2", "--outputs", *OUTPUTS, "--device", "cpu",
                 "--progress", "none"]) == 0
    capsys.readouterr()
    status, events, err = _preview(monkeypatch, capsys, [p.fixed, p.moving, "--model", hyper, "--device", "cpu"], [
        {"alpha_prime": 0.5, "lambda_max": 10.0, "output": str(tmp_path / "stiff"), "outputs": OUTPUTS, "id": 1},
        {"alpha_prime": 0.1, "lambda_max": 2.0, "output": str(tmp_path / "same"), "outputs": OUTPUTS, "id": "b"},
        {"quit": True},
        {"alpha_prime": 0.2, "output": str(tmp_path / "never")},  # after quit: not read
    ])
    assert status == 0, err
    assert events[0]["event"] == "progress" and events[0]["stage"] == "load"
    ready = [e for e in events if e["event"] == "ready"]
    assert len(ready) == 1 and set(ready[0]["timing"]) == {"load_s", "prepare_s", "affine_s"}
    assert ready[0]["code_ranges"] == {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 10.0]}
    stiff, same = _answers(events)
    assert (stiff["event"], stiff["id"], same["event"], same["id"]) == ("done", 1, "done", "b")
    assert not (tmp_path / "never").exists()
    assert events.index(ready[0]) < events.index(stiff)  # the affine stage ran once, before the requests
    # each request's progress events carry its id, and one of them is its stage "done" (the last, after the outputs)
    served = [e for e in events[events.index(ready[0]):] if e["event"] == "progress"]
    for answer in (stiff, same):
        stages = [e["stage"] for e in served if e["id"] == answer["id"]]
        assert stages.count("done") == 1 and stages[-1] == "done" and "outputs" in stages
    assert len(served) == sum(e["id"] in (1, "b") for e in served)
    assert sum(e.get("stage") == "affine" for e in events[events.index(ready[0]):]) == 0

    expected = json.loads((reference / "report.json").read_text())
    report = json.loads((tmp_path / "same" / "report.json").read_text())
    assert report == same["report"] and same["outdir"] == str(tmp_path / "same")
    for key in ("method", "parameters", "codes", "model", "affine_ras", "metrics", "outputs", "inputs", "device"):
        assert report[key] == expected[key], key
    assert set(report["timing"]) == {"network_s", "compose_s", "registration_s", "outputs_s", "total_s"}
    assert set(report["preview"]["setup_timing"]) == {"load_s", "prepare_s", "affine_s"}
    files = sorted(f.name for f in reference.iterdir())
    assert files == sorted(f.name for f in (tmp_path / "same").iterdir())
    for name in files:
        if name.endswith(".nii.gz"):
            assert _nifti_bytes(tmp_path / "same" / name) == _nifti_bytes(reference / name), name
            assert _nifti_bytes(tmp_path / "stiff" / name) != _nifti_bytes(reference / name), name
    assert stiff["report"]["codes"] == {"alpha_prime": 0.5, "lambda_max": 10.0, "conditioned": True}


def test_prediction_options_reach_the_previews(monkeypatch, capsys, tiny_pair, hyper, tmp_path) -> None:
    """``--one-way --passes 1`` predict as they do in ``svreg register``."""
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    flags = ["--model", str(hyper), "--device", "cpu", "--no-affine", "--one-way", "--passes", "1"]
    assert main(["register", str(p.fixed), str(p.moving), "-o", str(tmp_path / "register"), *flags,
                 "--outputs", "displacement", "--progress", "none"]) == 0
    capsys.readouterr()
    status, events, err = _preview(monkeypatch, capsys, [p.fixed, p.moving, *flags], [
        {"output": str(tmp_path / "preview"), "outputs": ["displacement"], "id": 1}, {"quit": True}])
    assert status == 0, err
    (answer,) = _answers(events)
    parameters = answer["report"]["parameters"]
    assert (parameters["symmetric_prediction"], parameters["prediction_passes"]) == (False, 1)
    assert _nifti_bytes(tmp_path / "preview" / "displacement.nii.gz") == \
        _nifti_bytes(tmp_path / "register" / "displacement.nii.gz")


def test_bad_requests_get_one_plain_error_and_the_engine_serves_on(monkeypatch, capsys, tiny_pair, hyper,
                                                                   tmp_path) -> None:
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("not svreg's")
    status, events, err = _preview(monkeypatch, capsys, [
        p.fixed, p.moving, "--model", hyper, "--device", "cpu", "--no-affine", "--moving-labels", p.moving_labels], [
        {"alpha_prime": 0.9, "output": str(tmp_path / "a"), "id": 1},
        {"lambda_max": 0.1, "output": str(tmp_path / "b"), "id": 2},
        {"alpha_prime": "x", "output": str(tmp_path / "c"), "id": 3},
        {"output": str(tmp_path / "d"), "outputs": ["warped", "nope"], "id": 4},
        {"output": str(tmp_path / "e"), "colour": "red", "id": 5},
        {"output": str(tmp_path / "taken" / "mine.txt" / "preview"), "id": 6},  # under a file: cannot be made
        {"output": str(tmp_path / "taken"), "id": 7},
        {"alpha_prime": 0.2, "id": 8},
        {"output": str(tmp_path / "f"), "label_metrics": True, "id": 9},
        "not json",
        "[1, 2]",
        "",
        {"output": str(tmp_path / "g"), "outputs": [], "id": 11},
        {"alpha_prime": 0.2, "output": str(tmp_path / "ok"), "outputs": ["regularization", "labels"], "id": 10},
        {"alpha_prime": 0.3, "output": str(tmp_path / "ok"), "id": 12},  # a request says "overwrite": true
    ])
    assert status == 0, err
    answers = _answers(events)
    errors = {a.get("id"): a["message"] for a in answers if a["event"] == "error"}
    assert [a.get("id") for a in answers] == [1, 2, 3, 4, 5, 6, 7, 8, 9, None, None, 11, 10, 12]
    assert errors[1] == ("alpha_prime 0.9 is outside the range this model was trained on [0.05, 0.5]; choose a "
                         "value inside it.")
    assert errors[2].startswith("lambda_max 0.1 is outside the range")
    assert errors[3].startswith("codes must be two non-negative numbers")
    assert errors[4].startswith("unknown output 'nope'; choose from warped,")
    assert errors[5].startswith("unknown request field 'colour'; use alpha_prime,")
    assert errors[6].startswith("cannot create ") and "mine.txt is a file, not a folder" in errors[6]
    assert "was not written by svreg" in errors[7] and '("overwrite": true replaces only' in errors[7]
    assert errors[12].endswith('already exists and is not empty; use "overwrite": true to replace it.')
    assert errors[8].startswith("a request needs the output folder")
    assert errors[9].startswith("label_metrics needs both label maps")
    assert errors[11].startswith("outputs must name at least one output (")
    without_id = [a["message"] for a in answers if a.get("id") is None]
    assert without_id[0] == "a request must be one line of JSON, not 'not json'."
    assert without_id[1].startswith("a request is one JSON object per line")
    assert all("\n" not in a.get("message", "") for a in answers)
    assert answers[-2]["event"] == "done" and answers[-2]["report"]["outputs"] == ["labels", "regularization"]
    assert sorted(f.name for f in (tmp_path / "ok").iterdir()) == [".svreg-output", "regularization.nii.gz",
                                                                     "report.json", "warped_labels.nii.gz"]
    assert "dice" not in answers[-2]["report"]["metrics"]  # no label metrics unless asked
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ok", "taken"]  # nothing else written
    assert (tmp_path / "taken" / "mine.txt").read_text() == "not svreg's"


def test_a_quit_other_than_true_or_false_is_refused(monkeypatch, capsys, tiny_pair, hyper, tmp_path) -> None:
    """``{"quit": 1}`` was taken for a registration request and answered "a request needs the output folder"."""
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    status, events, err = _preview(monkeypatch, capsys, [p.fixed, p.moving, "--model", hyper, "--device", "cpu",
                                                         "--no-affine"], [
        {"quit": 1, "id": 1}, {"quit": "yes", "id": 2}, {"quit": True}, {"output": str(tmp_path / "late"), "id": 3}])
    assert status == 0, err
    assert [(a["id"], a["message"]) for a in _answers(events)] == [(1, "quit must be true or false, not 1."),
                                                                    (2, "quit must be true or false, not 'yes'.")]
    assert not (tmp_path / "late").exists()


def test_label_metrics_when_asked(monkeypatch, capsys, tiny_pair, hyper, tmp_path) -> None:
    """With ``label_metrics`` a preview's report scores the labels as ``svreg register`` scores the same
    registration: Dice per label before and after."""
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    inputs = [p.fixed, p.moving, "--model", hyper, "--device", "cpu", "--no-affine", "--fixed-labels", p.fixed_labels,
              "--moving-labels", p.moving_labels]
    assert main(["register", *map(str, inputs), "-o", str(tmp_path / "register"), "--outputs", "jacobian",
                 "--progress", "none"]) == 0
    capsys.readouterr()
    expected = json.loads((tmp_path / "register" / "report.json").read_text())["metrics"]
    status, events, err = _preview(monkeypatch, capsys, inputs, [
        {"output": str(tmp_path / "scored"), "outputs": ["jacobian"], "label_metrics": True}])
    assert status == 0, err
    metrics = _answers(events)[0]["report"]["metrics"]
    for key in ("dice", "dice_before", "dice_mean", "dice_mean_before"):
        assert metrics[key] == expected[key], key
    assert set(metrics["dice"]) == {"1", "2"} and 0 < metrics["dice_mean"] <= 1 and 0 < metrics["dice_mean_before"] <= 1


@pytest.mark.parametrize("which, extra, message", [
    ("plain", (), "svreg: error: model plain-test is not a hyper model: its prediction cannot change with the codes"),
    ("hyper", ("--fixed-mask", "MOVING_LABELS"),
     "svreg: error: fixed mask (30, 33, 32) is not on the grid of the fixed image"),
    ("hyper", ("--preset", "nope"), "svreg: error: unknown preset 'nope'"),
])
def test_the_engine_refuses_bad_inputs_before_any_work(monkeypatch, capsys, tiny_pair, tiny_checkpoints, tmp_path,
                                                       which, extra, message) -> None:
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    extra = [str(p.moving_labels) if e == "MOVING_LABELS" else e for e in extra]
    status, events, err = _preview(monkeypatch, capsys, [p.fixed, p.moving, "--model",
                                                         getattr(tiny_checkpoints, which), *extra],
                                   [{"output": str(tmp_path / "x")}])
    assert status == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert events[-1]["event"] == "error" and not any(e.get("stage") == "affine" for e in events)
    assert not (tmp_path / "x").exists()


def test_the_child_process_answers_each_line_before_the_next(geo, tiny_pair, hyper, tmp_path) -> None:
    """The real ``svreg preview`` child: a request is answered while stdin stays open; end of input ends it."""
    p = tiny_pair.paths
    proc = subprocess.Popen(geo.svreg_command("preview", p.fixed, p.moving, "--model", hyper, "--device", "cpu",
                                              "--no-affine", "--threads", "1"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path), env=geo.child_env())
    try:
        answers = []
        for number, codes in enumerate(((0.05, 0.5), (0.9, 1.0), (0.5, 10.0))):
            proc.stdin.write(json.dumps({"alpha_prime": codes[0], "lambda_max": codes[1], "id": number,
                                         "output": str(tmp_path / f"p{number}"), "outputs": ["regularization"]})
                             + "\n")
            proc.stdin.flush()
            while True:
                event = json.loads(proc.stdout.readline())
                if event["event"] in ("done", "error"):
                    answers.append(event)
                    break
        assert [(a["event"], a["id"]) for a in answers] == [("done", 0), ("error", 1), ("done", 2)]
        assert proc.poll() is None  # still serving
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0 and proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lam = [_nifti_bytes(tmp_path / f"p{n}" / "regularization.nii.gz") for n in (0, 2)]
    assert lam[0] != lam[1]


def test_malformed_requests_do_not_end_the_engine(monkeypatch, capsys, tiny_pair, hyper, tmp_path) -> None:
    """Requests that used to end the engine with a traceback (so every later request went unanswered): an output
    name with a NUL byte, a lone surrogate or too long for the disk, a code too large for a float, JSON nested too
    deep."""
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    status, events, err = _preview(monkeypatch, capsys, [p.fixed, p.moving, "--model", hyper, "--device", "cpu",
                                                         "--no-affine"], [
        '{"output": "a\\u0000b", "id": 1}',
        '{"output": "\\ud800", "id": 2}',
        {"output": "x" * 300, "id": 3},
        '{"alpha_prime": 1' + "0" * 400 + ', "output": "big", "id": 4}',
        "[" * 100_000 + "]" * 100_000,
        '{"output": \udcff, "id": 6}',  # the byte 0xff: not UTF-8
        {"output": str(tmp_path / "ok"), "outputs": ["regularization"], "id": 5},
    ])
    assert status == 0, err
    answers = _answers(events)
    assert [(a["event"], a.get("id")) for a in answers] == [("error", 1), ("error", 2), ("error", 3), ("error", 4),
                                                            ("error", None), ("error", None), ("done", 5)]
    messages = [a["message"] for a in answers[:6]]
    assert messages[0].startswith("cannot write the output folder 'a\\x00b': ")
    assert messages[1].startswith("cannot write the output folder '\\ud800': ")
    assert messages[2].startswith("cannot write the output folder 'xxx") and "too long" in messages[2]
    assert messages[3] == ("alpha_prime inf is outside the range this model was trained on [0.05, 0.5]; choose a "
                           "value inside it.")
    assert messages[4].startswith("a request must be one line of JSON")
    assert messages[5].startswith("a request must be one line of JSON")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ok"]


def test_every_report_records_the_registrations_warnings(monkeypatch, capsys, tiny_pair, hyper, tmp_path) -> None:
    """A model given a wider field of view than it was trained on warns in each request's report (Slicer's status
    line shows ``report["warnings"]``), as ``svreg register`` records it, not only once on stderr."""
    p = tiny_pair.paths
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "narrow"
    shutil.copytree(hyper, model)
    meta = json.loads((model / "model.json").read_text())
    meta["training"]["grid_shape"] = [2, 2, 2]  # the network grid of a 6 mm image is far larger
    (model / "model.json").write_text(json.dumps(meta))
    status, events, err = _preview(monkeypatch, capsys, [p.fixed, p.moving, "--model", model, "--device", "cpu",
                                                         "--no-affine"], [
        {"output": str(tmp_path / f"p{n}"), "outputs": ["regularization"], "id": n} for n in (1, 2)])
    assert status == 0, err
    answers = _answers(events)
    assert [a["event"] for a in answers] == ["done", "done"]
    for answer in answers:
        (warning,) = answer["report"]["warnings"]
        assert "more than twice the 12 x 12 x 12 mm model hyper-test was trained on" in warning
        assert json.loads((Path(answer["outdir"]) / "report.json").read_text())["warnings"] == [warning]
    assert err.count("svreg: warning: the fixed image's foreground needs a network grid") == 2
