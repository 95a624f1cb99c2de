"""CUDA only (skipped without a GPU): ``deterministic=True`` gives bit-identical registrations on CUDA.

cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when CUDA first uses it in a process, so run this file on its
own (the fixture sets the variable before this file's first CUDA call)::

    python -m pytest -q -rP Testing/svreg_core/test_cuda_determinism.py

``-rP`` shows the informational lines: how far two default (non-deterministic) runs differ and the
time of both kinds of run.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svreg_core import Image, InputError, RegistrationParameters, register
from svreg_core.conventions import ALIGN_CORNERS
from svreg_core.image.sampling import grid_sample
from svreg_core.image.smoothing import smooth_field
from svreg_core.registration import deterministic_algorithms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def cublas_config(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture(scope="module")
def pair() -> tuple[Image, Image]:
    """A 36³ textured ball at 2 mm and a copy shifted by one voxel and brightened (synthetic)."""
    gen = torch.Generator().manual_seed(0)
    texture = smooth_field(smooth_field(torch.rand(1, 1, 36, 36, 36, generator=gen)))[0, 0].numpy()
    ball = ((np.indices(texture.shape) - 17.5) ** 2).sum(0) < 15.0 ** 2
    fixed = (texture * ball).astype(np.float32)
    moving = (np.roll(fixed, 1, axis=0) * 1.1).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -35.0
    return Image(fixed, affine), Image(moving, affine)


def test_sampling_gradients_on_cuda_repeat_bitwise() -> None:
    """In deterministic mode the sampling's backward runs (torch's grid_sample backward would refuse),
    gives the same bits twice, and matches torch's default kernel to float32 rounding."""
    gen = torch.Generator().manual_seed(1)
    source = torch.randn(1, 3, 40, 36, 32, generator=gen).cuda()
    coords = (torch.rand(1, 48, 44, 40, 3, generator=gen) * 2.4 - 1.2).cuda()
    weights = torch.randn(1, 3, 48, 44, 40, generator=gen).cuda()

    def run(sample) -> tuple[torch.Tensor, ...]:
        s = source.clone().requires_grad_(True)
        c = coords.clone().requires_grad_(True)
        out = sample(s, c)
        (out * weights).sum().backward()
        return out.detach(), s.grad, c.grad

    with deterministic_algorithms(True):
        first, second = run(grid_sample), run(grid_sample)
    reference = run(lambda s, c: F.grid_sample(s, c, padding_mode="zeros", align_corners=ALIGN_CORNERS))
    for a, b, ref in zip(first, second, reference):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("similarity", ["lncc", "mind"])
def test_deterministic_registration_is_bit_identical(pair, similarity: str) -> None:
    fixed, moving = pair
    params = RegistrationParameters(similarity=similarity, level_spacings=(4.0, 2.0), iterations=(15, 15),
                                    device="cuda")
    runs = {}
    for deterministic in (True, False):
        for repeat in range(2):
            t = time.perf_counter()
            runs[deterministic, repeat] = register(fixed, moving, params.replace(deterministic=deterministic))
            print(f"{similarity} deterministic={deterministic} run {repeat}: {time.perf_counter() - t:.2f} s")
    a, b = runs[True, 0], runs[True, 1]
    assert np.abs(a.displacement).max() > 0.5  # it registered
    np.testing.assert_array_equal(a.displacement, b.displacement)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    np.testing.assert_array_equal(a.affine, b.affine)
    default_gap = np.abs(runs[False, 0].displacement - runs[False, 1].displacement).max()
    mode_gap = np.abs(a.displacement - runs[False, 0].displacement).max()
    print(f"{similarity}: two default runs differ by up to {default_gap:.3g} mm; deterministic vs default "
          f"{mode_gap:.3g} mm (informational)")
    assert not torch.are_deterministic_algorithms_enabled()


def test_missing_cublas_config_is_refused_before_any_work(pair, monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    params = RegistrationParameters(level_spacings=(4.0,), iterations=(2,), device="cuda", deterministic=True)
    with pytest.raises(InputError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8"):
        register(*pair, params)
