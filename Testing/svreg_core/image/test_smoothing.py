"""The field smoothing kernel: its taps by hand, its border, its gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svreg_core.image.smoothing import box_kernel, smooth_field, smooth_field_weighted


def test_smoothing_of_a_delta_is_the_separable_kernel() -> None:
    x = torch.zeros(1, 1, 9, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4, 4] = 1.0
    taps = torch.tensor([1.0, 3.0, 6.0, 7.0, 6.0, 3.0, 1.0], dtype=torch.float64) / 27.0
    expected = torch.zeros(9, dtype=torch.float64)
    expected[1:8] = taps
    outer = expected[:, None, None] * expected[None, :, None] * expected[None, None, :]
    torch.testing.assert_close(smooth_field(x)[0, 0], outer)


def test_smoothing_border_replicates() -> None:
    # a delta at index 0 of an axis: the replicated border sums the taps that fall outside
    x = torch.zeros(1, 1, 10, 1, 1, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    out = smooth_field(x)[0, 0, :, 0, 0]
    expected = torch.tensor([17.0, 10.0, 4.0, 1.0, 0, 0, 0, 0, 0, 0], dtype=torch.float64) / 27.0
    torch.testing.assert_close(out, expected)


def test_smoothing_keeps_constants_and_equals_three_box_filters_inside() -> None:
    const = torch.full((1, 3, 7, 8, 9), 2.5)
    torch.testing.assert_close(smooth_field(const), const)
    x = torch.randn(1, 2, 20, 21, 22, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    box = x
    for _ in range(3):
        box = F.avg_pool3d(box, 3, stride=1)  # valid part only: 3 voxels lost per side after three passes
    torch.testing.assert_close(smooth_field(x)[:, :, 3:-3, 3:-3, 3:-3], box)


def test_smoothing_gradient() -> None:
    x = torch.randn(1, 1, 5, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(smooth_field, (x,))


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 1, 8)])
def test_smoothing_shapes(shape) -> None:
    x = torch.randn(2, 3, *shape)
    assert smooth_field(x).shape == x.shape


def test_box_kernel_by_hand() -> None:
    assert box_kernel(0) == (1.0,)
    np.testing.assert_allclose(box_kernel(1), [1 / 3] * 3)
    np.testing.assert_allclose(box_kernel(2), np.array([1, 2, 3, 2, 1]) / 9)
    np.testing.assert_allclose(box_kernel(3), np.array([1, 3, 6, 7, 6, 3, 1]) / 27)


def test_one_pass_is_one_box_filter_inside_and_zero_passes_is_the_identity() -> None:
    x = torch.randn(1, 1, 9, 10, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(smooth_field(x, passes=1)[:, :, 1:-1, 1:-1, 1:-1], F.avg_pool3d(x, 3, stride=1))
    assert smooth_field(x, passes=0) is x


def test_weighted_smoothing_with_unit_weight_is_the_box_filter_inside() -> None:
    x = torch.randn(1, 3, 13, 14, 15, dtype=torch.float64)
    ones = torch.ones(1, 1, 13, 14, 15, dtype=torch.float64)
    for passes in (0, 1, 3):
        inside = (Ellipsis, *(slice(passes, -passes or None),) * 3)
        assert torch.allclose(smooth_field_weighted(x, ones, passes)[inside], smooth_field(x, passes)[inside])
    assert torch.allclose(smooth_field_weighted(x, ones, 1), smooth_field(x, 1))  # one pass: the border too


def test_weighted_smoothing_by_hand_and_a_zero_weight_blocks_the_exchange() -> None:
    # one pass along i over [0, 3, 6] with weights [1, 0.5, 1]: conductances min(w) = [0.5, 0.5]
    x = torch.tensor([0.0, 3.0, 6.0]).reshape(1, 1, 3, 1, 1)
    w = torch.tensor([1.0, 0.5, 1.0]).reshape(1, 1, 3, 1, 1)
    # x0 += 0.5·3/3, x1 += (0.5·3 − 0.5·3)/3, x2 −= 0.5·3/3
    assert torch.allclose(smooth_field_weighted(x, w, 1).flatten(), torch.tensor([0.5, 3.0, 5.5]))
    step = torch.where(torch.arange(8) < 4, -1.0, 1.0).reshape(1, 1, 1, 1, 8).expand(1, 1, 4, 4, 8)
    w = torch.ones(1, 1, 4, 4, 8)
    w[..., 4] = 0.0  # the voxel right of the jump exchanges nothing with either neighbour
    out = smooth_field_weighted(step, w, 3)
    assert torch.equal(out[..., :4], step[..., :4]) and bool((out[..., 4:] > 0).all())


def test_weighted_smoothing_passes_gradients_to_the_field_only() -> None:
    x = torch.randn(1, 3, 6, 7, 8, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(1, 1, 6, 7, 8, dtype=torch.float64) + 0.1).requires_grad_(True)
    smooth_field_weighted(x, w, 2).square().sum().backward()
    assert x.grad is not None and w.grad is None
    assert torch.autograd.gradcheck(lambda v: smooth_field_weighted(v, w, 2), (x,))
