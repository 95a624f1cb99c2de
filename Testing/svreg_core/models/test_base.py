"""What every network shares: padding to the size multiple, the heads' initialisation, configuration checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from svreg_core.models.base import (
    LAMBDA_BIAS_INIT,
    VELOCITY_INIT_STD,
    init_lambda_head,
    init_velocity_head,
    pad_to_multiple,
    positive_int,
    positive_ints,
)


def test_pad_to_multiple_centres_and_replicates() -> None:
    x = torch.arange(17 * 16 * 2, dtype=torch.float32).view(1, 1, 17, 16, 2)
    padded, crop = pad_to_multiple(x, 16)
    assert padded.shape == (1, 1, 32, 16, 16)
    assert crop == (slice(7, 24), slice(0, 16), slice(7, 9))  # 15 = 7 + 8 along i, 14 = 7 + 7 along k
    assert torch.equal(padded[(..., *crop)], x)
    assert torch.equal(padded[:, :, 0, :, 0], x[:, :, 0, :, 0])  # a corner takes the nearest voxel
    assert torch.equal(padded[:, :, :7, :, 7:9], x[:, :, :1].expand(1, 1, 7, 16, 2))
    assert torch.equal(padded[:, :, 24:, :, 7:9], x[:, :, -1:].expand(1, 1, 8, 16, 2))
    assert torch.equal(padded[:, :, 7:24, :, :7], x[..., :1].expand(1, 1, 17, 16, 7))
    same, crop = pad_to_multiple(x[:, :, :16], 16)
    assert same.shape == (1, 1, 16, 16, 16) and crop[0] == slice(0, 16)


def test_heads_start_near_zero_velocity_and_lambda_0_9() -> None:
    torch.manual_seed(0)
    velocity, lam = nn.Conv3d(16, 3, 3, padding=1), nn.Conv3d(16, 1, 1)
    init_velocity_head(velocity)
    init_lambda_head(lam)
    with torch.no_grad():
        assert torch.all(velocity.bias == 0)
        assert float(velocity.weight.std()) == pytest.approx(VELOCITY_INIT_STD, rel=0.1)
        weight = torch.sigmoid(lam(torch.rand(1, 16, 6, 6, 6)))
        assert torch.allclose(weight, torch.full_like(weight, 0.9), atol=0.01)  # sigmoid(2.2) = 0.900
        assert torch.all(lam.bias == LAMBDA_BIAS_INIT)
        assert float(lam.weight.abs().max()) > 0  # not zero: gradients reach the layers before it


def test_positive_int_checks() -> None:
    assert positive_int("depth", 3) == 3
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="depth must be a positive integer"):
            positive_int("depth", bad)


def test_positive_ints_checks() -> None:
    assert positive_ints("widths", (8, 16)) == [8, 16]
    assert positive_ints("widths", [], allow_empty=True) == []
    assert positive_ints("widths", [4, 4, 4], length=3) == [4, 4, 4]
    for bad, kwargs in (([], {}), ([8, 0], {}), ([8, 2.5], {}), ("8", {}), ([8, True], {}), ([8], {"length": 2})):
        with pytest.raises(ValueError, match="widths must be a list of"):
            positive_ints("widths", bad, **kwargs)
