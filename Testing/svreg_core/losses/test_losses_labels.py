"""label_dice_loss on a slab of labels shifted by hand-chosen displacements (values computed by hand)."""
from __future__ import annotations

import pytest
import torch

from svreg_core.losses.labels import label_dice_loss


def _slab(start: int, label: int = 1) -> torch.Tensor:
    """``(1, 8, 4, 4)`` map: ``label`` in the four slices ``start <= i < start + 4``, else 0."""
    labels = torch.zeros(1, 8, 4, 4, dtype=torch.long)
    labels[:, start:start + 4] = label
    return labels


def _shift(value: float) -> torch.Tensor:
    displacement = torch.zeros(1, 3, 8, 4, 4, dtype=torch.float64)
    displacement[:, 0] = value
    return displacement


@pytest.mark.parametrize(("shift", "expected"), [
    (0.0, 0.25),   # overlap 3 of 4 + 4 slices: Dice 6/8
    (1.0, 0.0),    # the moving slab sampled one voxel on: it lands on the fixed slab
    (0.5, 0.125),  # half-voxel: warped 0.5, 1, 1, 1, 0.5 over i = 2..6; overlap 3.5, sum 4 + 4: Dice 7/8
])
def test_shifted_slab(shift: float, expected: float) -> None:
    loss = label_dice_loss(_slab(2), _slab(3), _shift(shift))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gradient_moves_the_displacement_towards_overlap() -> None:
    displacement = _shift(0.5).requires_grad_(True)
    label_dice_loss(_slab(2), _slab(3), displacement).backward()
    assert displacement.grad[:, 0].sum().item() < 0  # a larger shift along i lowers the loss


def test_labels_are_scored_separately_and_background_is_ignored() -> None:
    fixed = _slab(2, label=7)
    moving = _slab(2, label=9)  # same voxels, another label: no overlap for 7 nor for 9
    assert label_dice_loss(fixed, moving, _shift(0.0)).item() == pytest.approx(1.0, abs=1e-6)
    empty = torch.zeros_like(fixed)
    assert label_dice_loss(empty, empty, _shift(0.0)).item() == 0.0


def test_mean_over_pairs() -> None:
    fixed = torch.cat((_slab(2), _slab(2)))
    moving = torch.cat((_slab(3), _slab(2)))
    loss = label_dice_loss(fixed, moving, torch.cat((_shift(0.0), _shift(0.0))))
    assert loss.item() == pytest.approx((0.25 + 0.0) / 2, abs=1e-6)
