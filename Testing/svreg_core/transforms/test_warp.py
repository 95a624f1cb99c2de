"""``warp`` and ``compose`` on hand-computed shifts and linear fields (voxel units, channels (i, j, k))."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svreg_core.transforms import compose, integrate_velocity, warp

SHAPE = (7, 9, 11)  # different sizes per axis: a scale or axis-order slip changes the result


def _image(channels: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _shift(axis: int, amount: float, batch: int = 1) -> torch.Tensor:
    disp = torch.zeros(batch, 3, *SHAPE, dtype=torch.float64)
    disp[:, axis] = amount
    return disp


def _take(array: np.ndarray, axis: int, start: int, stop: int | None) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[array.ndim - 3 + axis] = slice(start, stop)
    return array[tuple(index)]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [2, -3])
def test_integer_shift_along_each_axis(axis: int, shift: int) -> None:
    """warped(x) = image(x + s e_axis): an exact copy of the image shifted by s voxels along that axis."""
    image = _image(channels=2)
    out = warp(image, _shift(axis, float(shift))).numpy()
    img = image.numpy()
    n = SHAPE[axis]
    if shift > 0:
        got, want = _take(out, axis, 0, n - shift), _take(img, axis, shift, None)
    else:
        got, want = _take(out, axis, -shift, None), _take(img, axis, 0, n + shift)
    np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_half_voxel_shift_averages_neighbours(axis: int) -> None:
    image = _image()
    out = warp(image, _shift(axis, 0.5)).numpy()
    img = image.numpy()
    n = SHAPE[axis]
    want = 0.5 * (_take(img, axis, 0, n - 1) + _take(img, axis, 1, None))
    np.testing.assert_allclose(_take(out, axis, 0, n - 1), want, atol=1e-9)


def test_border_padding_and_nearest_mode() -> None:
    image = _image()
    out = warp(image, _shift(0, 100.0)).numpy()  # everything pulled from beyond the last i slice
    np.testing.assert_allclose(out, np.broadcast_to(image.numpy()[:, :, -1:], out.shape), atol=1e-9)
    near = warp(image, _shift(1, 1.3), mode="nearest").numpy()
    np.testing.assert_array_equal(near[:, :, :, :-2], image.numpy()[:, :, :, 1:-1])
    zeros = warp(image, _shift(2, -100.0), padding_mode="zeros").numpy()
    assert np.all(zeros == 0)


def test_batch_uses_its_own_displacement() -> None:
    image = _image(batch=2)
    disp = torch.zeros(2, 3, *SHAPE, dtype=torch.float64)
    disp[0, 0] = 1.0
    disp[1, 2] = -1.0
    out = warp(image, disp).numpy()
    img = image.numpy()
    np.testing.assert_allclose(out[0, :, :-1], img[0, :, 1:], atol=1e-9)
    np.testing.assert_allclose(out[1, :, :, :, 1:], img[1, :, :, :, :-1], atol=1e-9)


def test_grid_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ"):
        warp(_image(), torch.zeros(1, 3, 7, 9, 10, dtype=torch.float64))


def test_compose_of_translations_is_their_sum() -> None:
    a = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE)
    b = torch.tensor([-0.5, 0.75, 3.0], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE)
    np.testing.assert_allclose(compose(a, b).numpy(), (a + b).numpy(), atol=1e-9)


def test_compose_order_outer_after_inner() -> None:
    """compose(outer, inner)(x) = inner(x) + outer(x + inner(x)); outer linear so trilinear is exact."""
    ijk = torch.as_tensor(np.indices(SHAPE), dtype=torch.float64)[None]  # (1, 3, I, J, K)
    m = torch.tensor([[0.1, 0.0, -0.05], [0.2, 0.05, 0.0], [0.0, -0.1, 0.15]], dtype=torch.float64)
    outer = torch.einsum("rc,ncijk->nrijk", m, ijk)
    t = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
    inner = t.expand(1, 3, *SHAPE)
    got = compose(outer, inner)[:, :, :-1].numpy()  # x + t stays inside the grid
    want = (t + torch.einsum("rc,ncijk->nrijk", m, ijk + t))[:, :, :-1].numpy()
    np.testing.assert_allclose(got, want, atol=1e-9)
    wrong = (t + outer)[:, :, :-1].numpy()  # outer evaluated at x instead of x + inner(x)
    assert np.abs(wrong - want).max() > 0.15


def test_warp_and_composition_gradients_match_finite_differences() -> None:
    """warp/compose work in place on fresh tensors; autograd must still give the exact gradients."""
    generator = torch.Generator().manual_seed(0)
    velocity = (torch.randn(1, 3, 5, 6, 4, generator=generator, dtype=torch.float64) * 0.5).requires_grad_()
    image = torch.randn(1, 1, 5, 6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: integrate_velocity(v, 3), (velocity,))
    assert torch.autograd.gradcheck(lambda i, v: warp(i, v), (image, velocity))


@pytest.mark.parametrize("shape", [(37, 6, 5), (32, 6, 5)])
def test_slabs_without_gradient_give_the_values_of_one_call(shape) -> None:
    """Without autograd, warp samples in slabs of rows (16): bitwise the values of the one call made with
    autograd (three slabs, the last partial; two full slabs), batches included."""
    g = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, *shape, generator=g)
    disp = torch.randn(2, 3, *shape, generator=g) * 2.0
    with torch.no_grad():
        slabbed = warp(image, disp)
    whole = warp(image, disp.clone().requires_grad_(True))  # records a gradient: one call
    assert torch.equal(slabbed, whole.detach())
