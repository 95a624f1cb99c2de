"""The peer benchmark's user-facing side (``scripts/benchmark.sh``, ``benchmarks/run_benchmark.py``): what it refuses
before the long work, and what its results file says about the run. Nothing is registered here: ``--ours none
--peers none`` runs only the data preparation and the 'affine only' row on a tiny pair."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
PAIR_FILES = ("fixed.nii.gz", "moving.nii.gz", "moving_native.nii.gz", "fixed_seg.nii.gz", "moving_seg.nii.gz",
              "moving_native_seg.nii.gz")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _tiny_pair(folder: Path) -> Path:
    """The six files of a brain-pair folder: 12³ 2 mm volumes whose label maps hold label 2 (a cube) and 41."""
    folder.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = np.zeros((12, 12, 12), np.int16)
    labels[3:9, 3:9, 3:9] = 2
    labels[4:7, 4:7, 4:7] = 41
    for name in PAIR_FILES:
        data = labels if "seg" in name else (labels > 0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), str(folder / name))
    return folder


def test_benchmark_refuses_a_missing_pair_before_installing_peers(tmp_path: Path) -> None:
    """Without ``../shared/data/brain_pair`` (or with a mistyped ``--data-source``) the benchmark used to install
    every peer's venv (gigabytes, many minutes) and only then end in a FileNotFoundError traceback: now it stops
    first, in one line naming the folder, and creates nothing."""
    bench = tmp_path / "bench"
    # a peer install, if it were reached, fails at once (no venv can be made with `false`) and leaves its marks
    env = {**_env(), "BENCH_DIR": str(bench), "BENCH_BASE_PYTHON": "false"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), "--peers", "ants", "--data-source",
                           str(tmp_path / "no_such_pair")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "no_such_pair is not a folder" in last and "Traceback" not in proc.stderr, proc.stderr
    assert not (bench / "venvs").exists(), "a peer install started before the data were checked"


def _check(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_benchmark.py"), "--check", *argv],
                          env=_env(), capture_output=True, text=True, timeout=120)


def test_benchmark_check_names_a_missing_file_and_a_bad_setting(tmp_path: Path) -> None:
    pair = _tiny_pair(tmp_path / "pair")
    assert _check("--data-source", str(pair)).returncode == 0
    (pair / "moving_native_seg.nii.gz").unlink()
    proc = _check("--data-source", str(pair))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "lacks moving_native_seg.nii.gz (the brain pair: see benchmarks/README.md; --data-source names another "
        "folder)"), proc.stderr
    proc = _check("--data-source", str(pair), "--threads", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("--threads at least 1"), proc.stderr


def test_results_notes_state_the_threads_and_model_of_the_run(tmp_path: Path) -> None:
    """The notes under the results table said 'Every tool ran with 2 threads' and `--model default` whatever
    ``--threads`` and ``--model`` the run was given."""
    pair = _tiny_pair(tmp_path / "pair")
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_benchmark.py"), "--peers", "none", "--ours",
                           "none", "--resolutions", "1", "--threads", "3", "--model", "runs/mine/best", "--tag", "t",
                           "--data-source", str(pair), "--bench-dir", str(tmp_path / "bench"), "--results-dir",
                           str(results)], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (md,) = results.glob("benchmark_*_t.md")
    text = " ".join(md.read_text(encoding="utf-8").split())
    assert "| pre-aligned input (affine only) | – | – | – | 1.0000 |" in text  # the pair itself, scored
    assert "Every tool ran with 3 threads (OMP_NUM_THREADS / ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS = 3)" in text
    assert "`svreg register --model runs/mine/best [--refine N]`." in text
    assert "2 threads" not in text and "--model default" not in text


def test_benchmark_sets_up_only_the_peers_named_with_an_equals_sign(tmp_path: Path) -> None:
    """``--peers=ants`` (argparse's other spelling, which run_benchmark.py reads as ANTs alone) made the script
    set up the venvs of all four peers, torch and its CUDA libraries included."""
    bench = tmp_path / "bench"
    env = {**_env(), "BENCH_DIR": str(bench), "BENCH_BASE_PYTHON": "false"}  # every install fails at once
    proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), "--setup-only", "--peers=ants"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (bench / "venvs").glob("*.failed")) == ["ants.failed"]


def test_benchmark_takes_relative_paths_from_where_it_is_run(tmp_path: Path) -> None:
    """``bash path/to/scripts/benchmark.sh --data-source pair --results-dir results`` looked for ``pair`` and wrote
    ``results`` in the repository (the script works from there); relative paths are now the caller's."""
    _tiny_pair(tmp_path / "pair")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "benchmark.sh"), "--peers", "none", "--ours", "none",
                           "--resolutions", "1", "--data-source", "pair", "--results-dir", "results", "--tag", "t"],
                          cwd=tmp_path, env={**_env(), "BENCH_DIR": "bench"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((tmp_path / "results").glob("benchmark_*_t.md"))) == 1
    assert (tmp_path / "bench" / "data" / "1mm" / "fixed.nii.gz").is_file()


def test_results_name_a_checkpoint_given_relative_to_the_caller_without_machine_paths(tmp_path: Path) -> None:
    """``--model runs/mine`` given relative to the caller's folder reaches the svreg children, which run in the
    repository, as a path relative to the repository: it names the same checkpoint and puts no machine path into
    the results file that is committed."""
    pair = _tiny_pair(tmp_path / "pair")
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    svreg = tmp_path / "svreg"  # answers the orchestrator's --help check, then fails each run at once
    svreg.write_text('#!/usr/bin/env bash\nif [ "${2:-}" = --help ]; then echo "--moving-labels '
                     '--label-interpolation --no-spr"; exit 0; fi\nexit 1\n')
    svreg.chmod(0o755)
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_benchmark.py"), "--peers", "none", "--ours",
                           "model", "--model", "runs/mine", "--resolutions", "1", "--svreg", str(svreg), "--tag", "t",
                           "--data-source", str(pair), "--bench-dir", str(tmp_path / "bench"), "--results-dir",
                           str(results)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the (stand-in) run failed, as it should
    (record,) = [r for r in json.loads(next(results.glob("benchmark_*_t.json")).read_text())["resolutions"]["1mm"]
                 if r["tool"] == "ours_model"]
    model = record["command"][record["command"].index("--model") + 1]
    assert not Path(model).is_absolute() and (REPO / model).resolve() == (tmp_path / "runs" / "mine").resolve()
