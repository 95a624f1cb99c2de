"""label_dice_loss on a slab of labels shifted by hand-chosen displacements.

With hard indicators (``sigma=0``) the values are computed by hand; the default smooths them first.
"""
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
    loss = label_dice_loss(_slab(2), _slab(3), _shift(shift), sigma=0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gradient_moves_the_displacement_towards_overlap() -> None:
    displacement = _shift(0.5).requires_grad_(True)
    label_dice_loss(_slab(2), _slab(3), displacement, sigma=0).backward()
    assert displacement.grad[:, 0].sum().item() < 0  # a larger shift along i lowers the loss


def test_labels_are_scored_separately_and_background_is_ignored() -> None:
    fixed = _slab(2, label=7)
    moving = _slab(2, label=9)  # same voxels, another label: no overlap for 7 nor for 9
    assert label_dice_loss(fixed, moving, _shift(0.0), sigma=0).item() == pytest.approx(1.0, abs=1e-6)
    empty = torch.zeros_like(fixed)
    assert label_dice_loss(empty, empty, _shift(0.0)).item() == 0.0


def test_mean_over_pairs() -> None:
    fixed = torch.cat((_slab(2), _slab(2)))
    moving = torch.cat((_slab(3), _slab(2)))
    loss = label_dice_loss(fixed, moving, torch.cat((_shift(0.0), _shift(0.0))), sigma=0)
    assert loss.item() == pytest.approx((0.25 + 0.0) / 2, abs=1e-6)


def test_hard_indicators_give_no_gradient_where_the_label_is_missing() -> None:
    """What the default smoothing fixes: the moving slab lies one voxel *below* the fixed one (u = -1
    aligns them). At u = 0 trilinear interpolation of a hard step only sees the cell above, so voxel 6,
    which needs the label pulled from voxel 5, gets no gradient; smoothed, it is pulled towards -1."""
    hard = _shift(0.0).requires_grad_(True)
    label_dice_loss(_slab(3), _slab(2), hard, sigma=0).backward()
    assert hard.grad[0, 0, 6].abs().max().item() == 0.0
    smooth = _shift(0.0).requires_grad_(True)
    label_dice_loss(_slab(3), _slab(2), smooth).backward()
    assert smooth.grad[0, 0, 6].min().item() > 0  # lowering u there lowers the loss
    assert smooth.grad[:, 0].sum().item() > 0


def test_smoothed_loss_is_smallest_at_alignment() -> None:
    losses = {shift: label_dice_loss(_slab(2), _slab(3), _shift(shift)).item() for shift in (0.0, 0.5, 1.0, 1.5, 2.0)}
    assert min(losses, key=losses.get) == 1.0
    assert losses[0.0] > losses[0.5] > losses[1.0] < losses[1.5] < losses[2.0]
    assert losses[1.0] > 0  # smoothed maps overlap less than 1 even when aligned
