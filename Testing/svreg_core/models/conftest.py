"""Helpers of the network tests: seeded construction and smooth test pairs.

Test modules cannot import this file under ``--import-mode=importlib``: they get the helpers through
the ``nets`` fixture.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from svreg_core.models import SPRNetwork, build_model

#: A TransMorph small enough for unit tests (METHOD §3 structure, paper sizes replaced).
TINY_TRANSMORPH = {"embed_dim": 12, "depths": [1, 1, 1], "num_heads": [2, 2, 2], "window_size": [2, 2, 2],
                   "drop_path_rate": 0.0}

#: Code ranges of the hyper networks of the tests.
HYPER = {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 10.0]}

#: A narrow U-Net for the tests that do not check the default layout.
SMALL_UNET = {"encoder_features": [4, 8, 8], "decoder_features": [8, 8, 8, 4], "lambda_features": [4]}


def build(architecture: str, config: dict | None = None, seed: int = 0) -> SPRNetwork:
    """``build_model`` with weights drawn from ``seed`` (the global RNG state is restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(architecture, config)


def pair(shape: tuple[int, int, int], batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random ``(fixed, moving)`` in [0, 1], ``(batch, 1, *shape)``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(2 * batch, 1, *shape, generator=gen)
    smooth = F.avg_pool3d(F.pad(noise, (2,) * 6, mode="replicate"), 5, stride=1)
    smooth = (smooth - smooth.amin()) / (smooth.amax() - smooth.amin())
    return smooth[:batch], smooth[batch:]


def parameters_without_gradient(model: torch.nn.Module, fixed: torch.Tensor, moving: torch.Tensor,
                                codes: torch.Tensor | None = None) -> list[str]:
    """Names of the parameters that get no non-zero gradient from a loss on both outputs (``codes``: a
    hyper network's)."""
    model.zero_grad()
    velocity, weight = model(fixed, moving) if codes is None else model(fixed, moving, codes)
    gen = torch.Generator().manual_seed(1)
    loss = (velocity * torch.randn(velocity.shape, generator=gen)).sum() \
        + (weight * torch.randn(weight.shape, generator=gen)).sum()
    loss.backward()
    return [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]


@pytest.fixture(scope="session")
def nets() -> SimpleNamespace:
    """The helpers of this file."""
    return SimpleNamespace(build=build, pair=pair, parameters_without_gradient=parameters_without_gradient,
                           TINY_TRANSMORPH=TINY_TRANSMORPH, SMALL_UNET=SMALL_UNET, HYPER=HYPER)
