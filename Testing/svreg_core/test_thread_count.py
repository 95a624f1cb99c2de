"""The same registration with 1 and 2 CPU threads gives bitwise the same displacement (issue: results
must not depend on the machine). Real ``svreg register`` child processes on a 2 mm textured pair large
enough for the chunked sampling (``svreg_core.image.sampling``) to split its work."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svreg_core.image.smoothing import smooth_field


@pytest.fixture(scope="module")
def pair(geo, tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("threads")
    gen = torch.Generator().manual_seed(0)
    texture = smooth_field(smooth_field(torch.rand(1, 1, 36, 36, 36, generator=gen)))[0, 0].numpy()
    ball = (np.indices(texture.shape) - 17.5) ** 2
    fixed = texture * (ball.sum(0) < 15.0 ** 2)
    moving = np.roll(fixed, 1, axis=0) * 1.1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -35.0
    preset = folder / "quick.json"
    preset.write_text(json.dumps({"parameters": {"level_spacings": [4, 2], "iterations": [15, 15]}}))
    return (geo.save_nifti(fixed.astype(np.float32), affine, folder / "fixed.nii.gz"),
            geo.save_nifti(moving.astype(np.float32), affine, folder / "moving.nii.gz"), preset)


@pytest.mark.parametrize("affine_stage", [True, False], ids=["affine", "deformable-only"])
def test_one_and_two_threads_agree_bitwise(geo, pair, tmp_path: Path, affine_stage: bool) -> None:
    fixed, moving, preset = pair
    fields = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        argv = ["register", fixed, moving, "-o", out, "--preset", preset, "--device", "cpu", "--threads", threads,
                "--outputs", "displacement", "--progress", "none", "--affine" if affine_stage else "--no-affine"]
        env = geo.child_env() | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run(geo.svreg_command(*argv), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        fields.append(np.asarray(nib.load(str(out / "displacement.nii.gz")).dataobj))
    assert np.abs(fields[0]).max() > 0.5  # it registered
    assert np.array_equal(fields[0], fields[1]), float(np.abs(fields[0] - fields[1]).max())
