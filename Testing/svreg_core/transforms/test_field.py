"""Velocity → displacement → warp, and the velocity-grid → image-grid transfer."""
from __future__ import annotations

import numpy as np
import torch

from svreg_core.image import Grid
from svreg_core.transforms import integrate_velocity, warp
from svreg_core.transforms.field import GridTransfer, apply_velocity


def test_constant_velocity_is_a_translation() -> None:
    velocity = torch.zeros(1, 3, 8, 9, 10)
    velocity[:, 1] = 1.5  # 1.5 voxels along j everywhere: exp(v) is the same translation
    moving = torch.arange(8 * 9 * 10, dtype=torch.float32).view(1, 1, 8, 9, 10)
    fields = apply_velocity(moving, velocity, 4)
    torch.testing.assert_close(fields.displacement, velocity)
    torch.testing.assert_close(fields.warped, warp(moving, velocity))
    assert fields.warped_mask is None
    assert fields.image_displacement is fields.displacement


def test_transfer_to_a_finer_grid_and_mask() -> None:
    image = Grid((9, 9, 9), np.eye(4))
    control = image.resampled(2.0)  # 5 voxels of 2 mm
    velocity = torch.full((1, 3, *control.shape), 0.25)
    moving = torch.rand(1, 1, 9, 9, 9, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 1, 9, 9, 9)
    fields = apply_velocity(moving, velocity, 3, transfer=GridTransfer(control, image), moving_mask=mask)
    assert fields.displacement.shape == (1, 3, 5, 5, 5)
    torch.testing.assert_close(fields.image_displacement, torch.full((1, 3, 9, 9, 9), 0.5))
    torch.testing.assert_close(fields.warped, warp(moving, fields.image_displacement))
    torch.testing.assert_close(fields.warped_mask, mask)


def test_integration_matches_the_svf_module() -> None:
    g = torch.Generator().manual_seed(1)
    velocity = torch.randn(1, 3, 7, 7, 7, generator=g)
    moving = torch.rand(1, 1, 7, 7, 7, generator=g)
    torch.testing.assert_close(apply_velocity(moving, velocity, 6).displacement, integrate_velocity(velocity, 6))
