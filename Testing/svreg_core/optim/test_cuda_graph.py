"""The optimiser iteration replayed as a CUDA graph: eager off the GPU; on CUDA the same steps as eager.

The CUDA cases are skipped without a GPU (run them on one: ``python -m pytest -q
Testing/svreg_core/optim/test_cuda_graph.py``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from svreg_core.image.grid import Grid
from svreg_core.image.smoothing import smooth_field
from svreg_core.optim import cuda_graph
from svreg_core.optim.cuda_graph import WARMUP_CALLS, GraphedIteration
from svreg_core.optim.parameters import load_parameters
from svreg_core.optim.spr import optimize_spr

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _doubling(x: torch.Tensor):
    """An iteration updating ``x`` in place (``x ← 2x + 1``) and returning its sum."""
    def iteration() -> torch.Tensor:
        x.mul_(2.0).add_(1.0)
        return x.sum()
    return iteration


def test_off_the_gpu_every_call_runs_the_iteration() -> None:
    x = torch.zeros(4)
    step = GraphedIteration(_doubling(x), torch.device("cpu"))
    sums = [float(step()) for _ in range(WARMUP_CALLS + 3)]
    assert not step.replaying
    # x after n calls: 2^n − 1 in each of the 4 entries
    assert sums == [4.0 * (2 ** n - 1) for n in range(1, WARMUP_CALLS + 4)]


@cuda
def test_replays_continue_the_eager_steps_on_cuda() -> None:
    x = torch.zeros(4, device="cuda")
    step = GraphedIteration(_doubling(x), x.device)
    sums = [float(step()) for _ in range(WARMUP_CALLS + 3)]
    assert step.replaying
    assert sums == [4.0 * (2 ** n - 1) for n in range(1, WARMUP_CALLS + 4)]


@cuda
def test_an_iteration_a_graph_cannot_hold_runs_eagerly_with_a_warning() -> None:
    x = torch.zeros(4, device="cuda")

    def iteration() -> torch.Tensor:
        x.add_(torch.tensor([1.0, 1.0, 1.0, 1.0], device="cuda"))  # a copy from host memory
        return x.sum()

    step = GraphedIteration(iteration, x.device)
    with pytest.warns(UserWarning, match="CUDA graph"):
        sums = [float(step()) for _ in range(WARMUP_CALLS + 2)]
    assert not step.replaying
    assert sums == [4.0 * n for n in range(1, WARMUP_CALLS + 3)]


@cuda
def test_graphed_optimisation_matches_the_eager_one(monkeypatch) -> None:
    """A textured 32³ pair shifted by a voxel: the graphed optimiser gives the eager one's velocity and λ
    up to the order of CUDA's atomic additions (grid_sample's backward)."""
    gen = torch.Generator().manual_seed(0)
    fixed = smooth_field(torch.rand(1, 1, 32, 32, 32, generator=gen)).cuda()
    moving = torch.roll(fixed, 1, 2)
    grid = Grid((32, 32, 32), np.diag([2.0, 2.0, 2.0, 1.0]))
    params = load_parameters("brain-mri", iterations=(12, 12), alpha_prime=0.002, lambda_max=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed recording would warn
        graphed = optimize_spr(fixed, grid, moving, grid, np.eye(4), params)
    monkeypatch.setattr(cuda_graph, "WARMUP_CALLS", 10 ** 6)  # never recorded: every iteration eager
    eager = optimize_spr(fixed, grid, moving, grid, np.eye(4), params)
    assert (graphed.velocity - eager.velocity).abs().max() < 1e-2
    assert (graphed.weight - eager.weight).abs().max() < 1e-2
    assert eager.weight.min() < 0.5  # λ moved: the in-place update of λ is part of what is compared
