"""``svreg register-batch``: what a script driving a cohort reads from it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from svreg_core.cli import main

FAST = ["--level-spacings", "12", "--iterations", "3", "--no-affine", "--device", "cpu", "--outputs", "displacement"]


def test_a_resumed_batch_gives_each_pair_one_json_event(tiny_pair, tmp_path: Path, capsys) -> None:
    """With ``--resume --progress json``, the pairs kept from the earlier run gave no event at all (only a line on
    stderr in the other modes), so a script counting "done" events missed them; each now gives one "done" event
    with its report, marked "kept"."""
    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    second.write_bytes(Path(p.moving).read_bytes())
    argv = ["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), str(second), "-o",
            str(tmp_path / "r"), *FAST, "--progress", "json"]
    assert main(argv) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = [e for e in first if e["event"] == "done"]
    assert [e["outdir"] for e in done] == [str(tmp_path / "r" / n) for n in ("moving", "second")]
    assert not any("kept" in e for e in done)
    # every event names its pair (number in the batch, output folder): the progress events did not, so a script
    # could not tell the pairs' progress apart
    for number, name in ((1, "moving"), (2, "second")):
        mine = [e for e in first if e.get("outdir") == str(tmp_path / "r" / name)]
        assert [e["event"] for e in mine][-1] == "done" and {e["pair"] for e in mine} == {number}
        assert len(mine) > 1 and {e["event"] for e in mine[:-1]} == {"progress"}
    assert {e["event"] for e in first} == {"progress", "done"} and all("pair" in e for e in first)
    assert main([*argv, "--resume"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["pair"], e["outdir"], e.get("kept")) for e in events] == [
        ("done", number, str(tmp_path / "r" / n), True) for number, n in ((1, "moving"), (2, "second"))]
    assert [e["report"] for e in events] == [json.loads((tmp_path / "r" / n / "report.json").read_text())
                                              for n in ("moving", "second")]


def test_a_shard_names_its_summary_by_its_numbers_however_written(tiny_pair, tmp_path: Path, capsys) -> None:
    """``--shard 05/10`` (a job script's zero-padded task number) wrote ``summary_shard-05-of-10.csv``, beside the
    ``summary_shard-5-of-10.csv`` of ``5/10`` (so ``--resume`` missed it), and ``0/01`` a shard summary for a whole
    batch; the names now come from the numbers."""
    from svreg_core.cli import batch_summary_name

    p = tiny_pair.paths
    root = tmp_path / "r"
    assert main(["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), "-o", str(root), "--shard",
                 "05/10", "--device", "cpu", "--progress", "none"]) == 0
    assert f"Summary of 0 pairs: {root / 'summary_shard-5-of-10.csv'}" in capsys.readouterr().out
    assert sorted(f.name for f in root.iterdir()) == ["summary_shard-5-of-10.csv"]
    assert batch_summary_name("0/01") == batch_summary_name(" 0/1") == "summary.csv"
    assert batch_summary_name("+3/ 4") == "summary_shard-3-of-4.csv"


@pytest.mark.parametrize("spec, expected", [
    ("0/1", list(range(10))),
    ("0/4", [0, 4, 8]),
    ("1/4", [1, 5, 9]),
    ("3/4", [3, 7]),
    ("9/10", [9]),
    ("11/12", []),  # more shards than pairs: the last ones have none
])
def test_a_shard_takes_every_nth_pair_from_its_own(spec: str, expected: list[int]) -> None:
    """Shard I of N registers the pairs I, I + N, I + 2N, … of the list: the N shards of a job array share the
    pairs out, each exactly once."""
    from svreg_core.cli import shard

    assert shard(list(range(10)), spec) == expected
    count = int(spec.split("/")[1])
    assert sorted(sum((shard(list(range(10)), f"{i}/{count}") for i in range(count)), [])) == list(range(10))


@pytest.mark.parametrize("spec, message", [
    ("2/2", "I must be from 0 to N - 1 and N at least 1."),
    ("-1/3", "I must be from 0 to N - 1 and N at least 1."),
    ("0/0", "I must be from 0 to N - 1 and N at least 1."),
    ("1", "use I/N with whole numbers, e.g. 0/4."),
    ("a/4", "use I/N with whole numbers, e.g. 0/4."),
    ("1/2/3", "use I/N with whole numbers, e.g. 0/4."),
])
def test_a_shard_outside_its_job_array_is_refused_before_any_work(tiny_pair, tmp_path: Path, capsys, spec: str,
                                                                  message: str) -> None:
    p = tiny_pair.paths
    assert main(["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), "-o", str(tmp_path / "r"),
                 f"--shard={spec}", "--progress", "none"]) == 2
    assert capsys.readouterr().err == f"svreg: error: --shard {spec!r}: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_pairs_file_with_one_images_landmarks_is_refused_before_any_pair(tiny_pair, tmp_path: Path,
                                                                           capsys) -> None:
    """A pairs file whose second pair has fixed_landmarks but no moving_landmarks: the first pair was registered
    and the second failed after its images were read (hours in, in a cohort); the batch is now refused before any
    work, naming the pair."""
    p = tiny_pair.paths
    (tmp_path / "l.csv").write_text("x,y,z\n0,0,0\n")
    (tmp_path / "pairs.csv").write_text(f"fixed,moving,fixed_landmarks,output\n{p.fixed},{p.moving},,a\n"
                                        f"{p.fixed},{p.moving},l.csv,b\n")
    rc = main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r"), *FAST,
               "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("svreg: error: "), err
    assert f"the pair of moving image {p.moving}: give both fixed_landmarks and moving_landmarks" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("outputs", "words"), [
    ((".",), "output '.' is not a folder inside -o"),
    (("ABS",), "is not a folder inside -o; name one relative to it, without '..'"),
    (("../escaped",), "output '../escaped' is not a folder inside -o"),
    (("a", "a/b"), "lies inside"),
])
def test_a_pairs_file_output_outside_its_own_folder_under_o_is_refused(tiny_pair, tmp_path: Path, capsys,
                                                                       outputs: tuple, words: str) -> None:
    """A pairs file's output column was joined to -o as given: '.' wrote the pair into -o itself (beside the
    summary, holding the other pairs' folders, all replaced with it under --overwrite), an absolute path or '..'
    outside -o, and 'a/b' into pair 'a's folder. Each is refused before any work."""
    p = tiny_pair.paths
    names = [str(tmp_path / "elsewhere") if o == "ABS" else o for o in outputs]
    rows = "".join(f"{p.fixed},{p.moving},{name}\n" for name in names)
    (tmp_path / "pairs.csv").write_text(f"fixed,moving,output\n{rows}")
    rc = main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r"), *FAST,
               "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("svreg: error: ") and words in err, err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pairs.csv"]


@pytest.mark.parametrize(("column", "meant"), [("moving_label", "moving_labels"), ("Output", "output"),
                                               ("fixed mask", "fixed_mask")])
def test_a_pairs_file_column_that_misspells_one_of_svregs_is_refused(tiny_pair, tmp_path: Path, capsys,
                                                                     column: str, meant: str) -> None:
    """A misspelt column (moving_label, Output) was ignored like any other: the pairs registered without their
    label maps or into default folders, without a word. It is now named with the column meant, before any work;
    columns of other names (a cohort's subject) are still ignored."""
    p = tiny_pair.paths
    (tmp_path / "pairs.csv").write_text(f"subject,fixed,moving,{column}\n01,{p.fixed},{p.moving},{p.moving_labels}\n")
    rc = main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r"), *FAST,
               "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"the column {column!r} is not one svreg reads; did you mean {meant}?" in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pairs.csv"]


def test_resume_with_other_parameters_is_refused(tiny_pair, tmp_path: Path, capsys) -> None:
    """``--resume`` after changing α′ (or the pyramid) kept the pairs registered before and registered the rest with
    the new values: one summary mixing two experiments, without a word. The first difference is now named, before
    any work; the same parameters resume as before."""
    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    second.write_bytes(Path(p.moving).read_bytes())
    root = tmp_path / "r"
    argv = ["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), str(second), "-o", str(root),
            *FAST, "--progress", "none"]
    assert main(argv) == 0
    capsys.readouterr()
    shutil.rmtree(root / "second")
    assert main([*argv, "--resume", "--alpha-prime", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume: {root / 'moving'} was registered with alpha_prime " in err, err
    assert "this command with 0.5; not the same batch" in err and not (root / "second").exists()
    assert main([*argv, "--resume", "--threads", "1"]) == 0 and (root / "second" / "report.json").is_file()


def test_resume_with_another_model_refinement_or_codes_is_refused(tiny_pair, tiny_checkpoints, tmp_path: Path,
                                                                  capsys) -> None:
    """``--resume`` of a ``--model`` batch compared only pairwise-or-learned: another model, other ``--refine``
    steps or other codes kept the pairs registered before and registered the rest otherwise, in one summary. Each
    is now named before any work; the same command resumes."""
    p = tiny_pair.paths
    second = tmp_path / "second.nii.gz"
    second.write_bytes(Path(p.moving).read_bytes())
    root = tmp_path / "r"
    argv = ["register-batch", "--fixed", str(p.fixed), "--moving", str(p.moving), str(second), "-o", str(root),
            "--no-affine", "--device", "cpu", "--outputs", "displacement", "--progress", "none", "--refine", "2"]
    assert main([*argv, "--model", str(tiny_checkpoints.hyper)]) == 0
    capsys.readouterr()
    shutil.rmtree(root / "second")
    for change, words in (
            (["--model", str(tiny_checkpoints.plain)], "was registered with a model whose name is \"hyper-test\", "
                                                       f"this command's {tiny_checkpoints.plain} has \"plain-test\""),
            (["--model", str(tiny_checkpoints.hyper), "--refine", "3"], "with 2 refinement steps, this command with 3"),
            (["--model", str(tiny_checkpoints.hyper), "--alpha-prime", "0.1"], "with alpha_prime 0.0303, this "
                                                                                "command with 0.1")):
        assert main([*argv, "--resume", *change]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--resume: {root / 'moving'} " in err and words in err, (change, err)
        assert not (root / "second").exists()
    assert main([*argv, "--resume", "--model", str(tiny_checkpoints.hyper)]) == 0
    assert (root / "second" / "report.json").is_file()


def test_outputs_labels_writes_the_warped_labels_of_the_pairs_that_have_them(tiny_pair, tmp_path: Path,
                                                                            capsys) -> None:
    """``--outputs labels`` in a batch whose pairs file gives moving labels for some pairs only: each pair with
    them gets its warped labels, the others their other outputs (not an error after their registration)."""
    p = tiny_pair.paths
    (tmp_path / "pairs.csv").write_text(f"fixed,moving,moving_labels,output\n{p.fixed},{p.moving},{p.moving_labels},"
                                        f"a\n{p.fixed},{p.moving},,b\n")
    rc = main(["register-batch", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "r"), *FAST[:-1],
               "labels", "displacement", "--progress", "none"])
    assert rc == 0, capsys.readouterr().err
    written = {name: sorted(f.name for f in (tmp_path / "r" / name).iterdir() if not f.name.startswith("."))
               for name in ("a", "b")}
    assert written == {"a": ["displacement.nii.gz", "report.json", "warped_labels.nii.gz"],
                       "b": ["displacement.nii.gz", "report.json"]}, written
