"""Validation's label warp and its sums, hand-computed."""
from __future__ import annotations

import pytest
import torch

from svreg_core.training.step import TERMS
from svreg_core.training.validation import ValidationSums, warp_labels


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_warp_labels_follows_a_whole_voxel_shift(mode: str) -> None:
    labels = torch.zeros(6, 5, 4, dtype=torch.long)
    labels[2, 1:3, 1] = 7
    displacement = torch.zeros(1, 3, 6, 5, 4)
    displacement[:, 0] = 1.0  # u = +1 voxel along i: x takes the label at x + (1, 0, 0)
    out = warp_labels(labels, displacement, mode)
    expected = torch.zeros_like(labels)
    expected[1, 1:3, 1] = 7  # the last slice samples beyond the grid: 0
    assert out.dtype == torch.long and torch.equal(out, expected)
    assert torch.equal(warp_labels(labels, torch.zeros(1, 3, 6, 5, 4), mode), labels)


def test_validation_sums_round_trip_and_means() -> None:
    sums = ValidationSums(pairs=4, terms={t: float(i + 1) for i, t in enumerate(TERMS)}, folding=0.2, dice_pairs=2,
                          dice=1.5, dice_identity=1.0)
    again = ValidationSums.from_list(sums.to_list())
    assert again == sums
    means = sums.means()
    assert means["val_total"] == 0.25 and means["val_folding_percent"] == pytest.approx(0.05)
    assert means["val_dice"] == 0.75 and means["val_dice_identity"] == 0.5
    empty = ValidationSums().means()
    assert set(empty.values()) == {None}
