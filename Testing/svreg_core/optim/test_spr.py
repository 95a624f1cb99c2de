"""Pieces of the pairwise SPR optimiser: foreground box, control-grid upsampling, step schedule, refinement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svreg_core.image import Grid
from svreg_core.optim.spr import _linear_decay, foreground_box
from svreg_core.transforms.field import GridTransfer


def test_foreground_box_adds_the_margin_in_mm() -> None:
    grid = Grid((40, 30, 20), np.diag([2.0, 2.0, 2.0, 1.0]))
    image = torch.zeros(1, 1, 40, 30, 20)
    image[0, 0, 10:20, 5:15, 8:12] = 1.0
    box = foreground_box(image, grid, margin_mm=4.0)
    assert box.shape == (14, 14, 8)  # voxels 10..19, 5..14, 8..11 plus 2 voxels (4 mm) each side
    np.testing.assert_allclose(box.affine[:3, 3], [16.0, 6.0, 12.0])
    assert foreground_box(torch.zeros(1, 1, 40, 30, 20), grid, 4.0) is grid  # nothing to crop to


def test_grid_transfer_rescales_voxel_units() -> None:
    image = Grid((9, 9, 9), np.eye(4))
    control = image.resampled(2.0)
    up = GridTransfer(control, image, torch.device("cpu"))
    disp = torch.ones(1, 3, *control.shape)  # one control voxel = 2 image voxels
    out = up(disp)
    assert out.shape == (1, 3, 9, 9, 9)
    torch.testing.assert_close(out, torch.full_like(out, 2.0))
    assert GridTransfer(image, image, torch.device("cpu"))(disp) is disp


def test_learning_rate_decays_linearly_over_a_level() -> None:
    factor = _linear_decay(11, 0.1)
    assert [round(factor(it), 6) for it in (0, 5, 10, 20)] == [1.0, 0.55, 0.1, 0.1]
    assert _linear_decay(1, 0.1)(0) == 1.0  # a one-iteration level keeps its step
    assert _linear_decay(50, 1.0)(30) == 1.0


def test_refinement_starts_from_the_given_fields(geo) -> None:
    """``initial`` replaces v = 0: with a single tiny step the result stays at the given velocity; λ is
    re-optimised for it (a uniform translation strains nothing, so λ = 1 although the network said 0.6)."""
    from svreg_core.image import Grid
    from svreg_core.optim.parameters import RegistrationParameters
    from svreg_core.optim.spr import DeformableResult, optimize_spr

    grid = Grid((16, 16, 16), np.diag([2.0, 2.0, 2.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, 16, 16, 16, generator=g)
    moving = torch.rand(1, 1, 16, 16, 16, generator=g)
    # a RAS network grid with a different axis order and origin than the fixed grid
    ras = Grid((16, 16, 16), np.array([[0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]]))
    velocity = torch.zeros(1, 3, 16, 16, 16)
    velocity[:, 0] = 0.5  # along ras axis i = world y = fixed axis j
    initial = DeformableResult(ras, velocity, torch.full((1, 1, 16, 16, 16), 0.6))
    params = RegistrationParameters(level_spacings=(2.0,), iterations=(1,), learning_rate=1e-6, affine=False)
    result = optimize_spr(fixed, grid, moving, grid, np.eye(4), params, initial=initial)
    inner = result.velocity[:, :, 4:-4, 4:-4, 4:-4]
    torch.testing.assert_close(inner[:, 1], torch.full_like(inner[:, 1], 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(inner[:, 0], torch.zeros_like(inner[:, 0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(result.weight, torch.ones_like(result.weight), atol=1e-4, rtol=0)


def test_progress_counts_each_iteration_by_its_levels_voxels() -> None:
    """An iteration's cost grows with its level's voxels, so the progress fraction does too: after the coarse level
    of an 8 / 4 mm pyramid with as many iterations on each, the bar stands at the coarse level's share of the voxel
    iterations (1/9 of the span here), not at half of it (its iterations took a fifth of the time or less)."""
    from svreg_core.image.resample import level_grid
    from svreg_core.optim.parameters import RegistrationParameters
    from svreg_core.optim.spr import optimize_spr
    from svreg_core.progress import ProgressEvent

    grid = Grid((33, 33, 33), np.diag([2.0, 2.0, 2.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    fixed, moving = (torch.rand(1, 1, 33, 33, 33, generator=g) + 0.5 for _ in range(2))
    params = RegistrationParameters(level_spacings=(8.0, 4.0), iterations=(6, 6), affine=False)
    events: list[ProgressEvent] = []
    optimize_spr(fixed, grid, moving, grid, np.eye(4), params, progress=events.append, progress_span=(0.2, 0.9))
    coarse, fine = (np.prod(level_grid(grid, spacing).shape) for spacing in (8.0, 4.0))
    assert coarse / fine < 0.15  # 9³ against 17³ voxels
    last_coarse = [e.fraction for e in events if e.stage == "deformable 8 mm"][-1]
    np.testing.assert_allclose(last_coarse, 0.2 + 0.7 * coarse / (coarse + fine), rtol=1e-6)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(0.9)
