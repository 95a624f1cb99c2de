"""Tests of svreg_core.losses.similarity: LNCC, MSE, MIND-SSC, get_similarity."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from svreg_core.losses import get_similarity, lncc_loss, mind_loss, mind_ssc, mse_loss, ncc_loss


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


# ------------------------------------------------------------------------------------------- LNCC

def _lncc_map_bruteforce(f: np.ndarray, m: np.ndarray, window: int, eps: float) -> np.ndarray:
    """cc map by explicit loops over voxels, on the window cropped to the volume (float64)."""
    r = window // 2
    n_b, n_c, ni, nj, nk = f.shape
    out = np.zeros(f.shape)
    for b, c, i, j, k in itertools.product(range(n_b), range(n_c), range(ni), range(nj), range(nk)):
        sl = (b, c, slice(max(i - r, 0), i + r + 1), slice(max(j - r, 0), j + r + 1),
              slice(max(k - r, 0), k + r + 1))
        fw, mw = f[sl].ravel(), m[sl].ravel()
        cross = np.sum((fw - fw.mean()) * (mw - mw.mean()))
        var_f = np.sum((fw - fw.mean()) ** 2)
        var_m = np.sum((mw - mw.mean()) ** 2)
        out[b, c, i, j, k] = (cross ** 2 + eps) / (var_f * var_m + eps)
    return out


@pytest.mark.parametrize("window", [3, 5, 9])
def test_lncc_matches_bruteforce(window: int) -> None:
    # (5, 7, 4) with window 9 truncates the window along every axis at every voxel
    f = _rand(2, 1, 5, 7, 4, seed=1)
    m = 0.5 * f + 0.5 * _rand(2, 1, 5, 7, 4, seed=2)
    eps = 1e-3  # large enough for eps to matter in the comparison
    expected = -_lncc_map_bruteforce(f.numpy(), m.numpy(), window, eps).mean()
    got = lncc_loss(f, m, window=window, eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_lncc_matches_bruteforce_with_mask_and_channels() -> None:
    f = _rand(1, 2, 6, 5, 4, seed=3)
    m = _rand(1, 2, 6, 5, 4, seed=4) + 0.3 * f
    mask = (_rand(1, 1, 6, 5, 4, seed=5) > 0.4).double()
    cc = _lncc_map_bruteforce(f.numpy(), m.numpy(), 3, 1e-5)
    mk = np.broadcast_to(mask.numpy(), cc.shape)
    expected = -(cc * mk).sum() / mk.sum()
    assert lncc_loss(f, m, window=3, mask=mask).item() == pytest.approx(expected, rel=1e-10)
    # an all-ones mask is the plain mean
    ones = torch.ones(1, 1, 6, 5, 4, dtype=torch.float64)
    assert lncc_loss(f, m, 3, mask=ones).item() == pytest.approx(lncc_loss(f, m, 3).item(), rel=1e-12)


def test_lncc_self_similarity_is_minus_one_float32() -> None:
    x = _rand(1, 1, 12, 10, 8, seed=6, dtype=torch.float32)
    assert lncc_loss(x, x, window=5).item() == pytest.approx(-1.0, abs=1e-4)
    # a different image is clearly worse
    y = _rand(1, 1, 12, 10, 8, seed=7, dtype=torch.float32)
    assert lncc_loss(x, y, window=5).item() > -0.3


@pytest.mark.parametrize("scale, offset", [(3.0, -7.0), (-0.25, 100.0), (1000.0, 0.0)])
def test_lncc_invariant_to_affine_intensity(scale: float, offset: float) -> None:
    f = _rand(1, 1, 8, 9, 7, seed=8)
    m = _rand(1, 1, 8, 9, 7, seed=9) + 0.5 * f
    # exact without eps; eps (1e-5 against window-sum variances ~ 1) only perturbs slightly
    base = lncc_loss(f, m, window=5, eps=0.0)
    assert lncc_loss(f, scale * m + offset, 5, eps=0.0).item() == pytest.approx(base.item(), rel=1e-10)
    assert lncc_loss(scale * f + offset, m, 5, eps=0.0).item() == pytest.approx(base.item(), rel=1e-10)
    assert lncc_loss(f, scale * m + offset, 5).item() == pytest.approx(base.item(), rel=1e-4)


def test_lncc_self_registration_has_no_gradient() -> None:
    # the reference's gradient at moving == fixed is ~eps / var²: the image would drift; here it is 0
    f = _rand(1, 1, 10, 10, 10, seed=16)
    f[..., :4] = 0.25 + 1e-3 * f[..., :4]  # a low-contrast part, var ~ eps
    m = f.clone().requires_grad_()
    lncc_loss(f, m, 5, eps=1e-2).backward()
    assert m.grad is not None and m.grad.abs().max().item() < 1e-12


def test_lncc_large_mean_intensity_float32() -> None:
    # a large intensity offset must not destroy float32 precision (images are centred internally)
    f = _rand(1, 1, 10, 10, 10, seed=10, dtype=torch.float32)
    m = _rand(1, 1, 10, 10, 10, seed=11, dtype=torch.float32) + f
    ref = lncc_loss(f.double(), m.double(), 5).item()
    assert lncc_loss(f + 3000.0, m + 3000.0, 5).item() == pytest.approx(ref, abs=1e-4)


def test_lncc_gradcheck() -> None:
    f = _rand(1, 1, 4, 5, 3, seed=12).requires_grad_()
    m = (_rand(1, 1, 4, 5, 3, seed=13) + 0.5 * f.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lncc_loss(a, b, window=3), (f, m))


def test_lncc_rejects_bad_arguments() -> None:
    x = _rand(1, 1, 4, 4, 4)
    with pytest.raises(ValueError):
        lncc_loss(x, x, window=4)
    with pytest.raises(ValueError):
        lncc_loss(x, _rand(1, 1, 4, 4, 5))
    with pytest.raises(ValueError):
        lncc_loss(x, x, mask=torch.ones(1, 1, 4, 4, 3))


# -------------------------------------------------------------------------------------------- MSE

def test_mse_hand_values() -> None:
    f = torch.zeros(1, 1, 2, 1, 2)
    m = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 1, 2)
    assert mse_loss(f, m).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 1, 2)
    assert mse_loss(f, m, mask).item() == pytest.approx((1 + 9) / 2)


def test_ncc_hand_values() -> None:
    """f = (1, 2, 3, 4) against m = (2, 4, 6, 8) (-1), (4, 3, 2, 1) (+1), (1, 3, 2, 4) (cov 1, var 1.25: -0.8),
    a constant (0); with a mask over the first three voxels m = (1, 3, 2, ·): cov 1/3, var 2/3 each (-0.5)."""
    f = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 1, 2)
    for values, expected in (([2.0, 4.0, 6.0, 8.0], -1.0), ([4.0, 3.0, 2.0, 1.0], 1.0), ([1.0, 3.0, 2.0, 4.0], -0.8),
                             ([5.0, 5.0, 5.0, 5.0], 0.0)):
        assert ncc_loss(f, torch.tensor(values).view(1, 1, 2, 1, 2)).item() == pytest.approx(expected)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 1, 2)
    m = torch.tensor([1.0, 3.0, 2.0, 100.0]).view(1, 1, 2, 1, 2)
    assert ncc_loss(f, m, mask).item() == pytest.approx(-0.5)


# ------------------------------------------------------------------------------------------- MIND

def _mind_bruteforce(img: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """MIND-SSC straight from the definition: 12 pairs, clamped-index (replicated) image."""
    n_b, n_c, ni, nj, nk = img.shape
    six = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    pairs = [(p, q) for a, p in enumerate(six) for q in six[a + 1:]
             if sum((x - y) ** 2 for x, y in zip(p, q)) == 2]
    assert len(pairs) == 12
    gi, gj, gk = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")

    def sample(vol: np.ndarray, off: tuple[int, int, int]) -> np.ndarray:
        return vol[np.clip(gi + off[0], 0, ni - 1), np.clip(gj + off[1], 0, nj - 1),
                   np.clip(gk + off[2], 0, nk - 1)]

    out = np.zeros((n_b, n_c, 12, ni, nj, nk))
    offsets = list(itertools.product(range(-radius, radius + 1), repeat=3))
    for b, c in itertools.product(range(n_b), range(n_c)):
        vol = img[b, c]
        dist = np.zeros((12, ni, nj, nk))
        for ch, (p, q) in enumerate(pairs):
            for t in offsets:
                pp = tuple(dilation * pi + ti for pi, ti in zip(p, t))
                qq = tuple(dilation * qi + ti for qi, ti in zip(q, t))
                dist[ch] += (sample(vol, pp) - sample(vol, qq)) ** 2
            dist[ch] /= len(offsets)
        var = dist.mean(0)
        var = np.clip(var, 1e-3 * var.mean(), 1e3 * var.mean())
        desc = np.exp(-dist / var)
        out[b, c] = desc / desc.max(0)
    return out.reshape(n_b, n_c * 12, ni, nj, nk)


@pytest.mark.parametrize("radius, dilation", [(1, 2), (0, 1), (2, 1)])
def test_mind_matches_definition(radius: int, dilation: int) -> None:
    img = _rand(1, 2, 7, 6, 8, seed=20)
    got = mind_ssc(img, radius=radius, dilation=dilation)
    assert got.shape == (1, 24, 7, 6, 8)
    np.testing.assert_allclose(got.numpy(), _mind_bruteforce(img.numpy(), radius, dilation),
                               rtol=1e-10, atol=1e-12)


def test_mind_descriptor_shape_and_range() -> None:
    img = _rand(2, 1, 9, 8, 7, seed=21, dtype=torch.float32)
    d = mind_ssc(img)
    assert d.shape == (2, 12, 9, 8, 7)
    assert torch.all(d > 0) and torch.all(d <= 1 + 1e-6)
    assert torch.allclose(d.amax(dim=1), torch.ones(2, 9, 8, 7))


def test_mind_identical_images_give_zero_loss() -> None:
    img = _rand(1, 1, 8, 8, 8, seed=22, dtype=torch.float32)
    assert mind_loss(img, img.clone()).item() == 0.0
    other = _rand(1, 1, 8, 8, 8, seed=23, dtype=torch.float32)
    assert mind_loss(img, other).item() > 1e-3


@pytest.mark.parametrize("scale, offset", [(7.5, 0.0), (0.01, 0.0), (-2.0, 50.0)])
def test_mind_invariant_to_global_intensity_change(scale: float, offset: float) -> None:
    img = _rand(1, 1, 8, 7, 9, seed=24)
    a = mind_ssc(img)
    b = mind_ssc(scale * img + offset)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    other = _rand(1, 1, 8, 7, 9, seed=25)
    assert mind_loss(img, other).item() == pytest.approx(mind_loss(scale * img + offset, other).item(),
                                                         rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mind_constant_image_is_finite(dtype: torch.dtype) -> None:
    img = torch.full((1, 1, 5, 5, 5), 3.0, dtype=dtype, requires_grad=True)
    d = mind_ssc(img)
    assert torch.all(d == 1.0)
    d.sum().backward()
    assert torch.isfinite(img.grad).all()


def test_mind_loss_mask_and_precomputed_descriptor() -> None:
    f = _rand(1, 1, 6, 7, 5, seed=26)
    m = _rand(1, 1, 6, 7, 5, seed=27)
    sq = (mind_ssc(f) - mind_ssc(m)).square().mean(dim=1, keepdim=True)
    mask = (_rand(1, 1, 6, 7, 5, seed=28) > 0.5).double()
    assert mind_loss(f, m).item() == pytest.approx(sq.mean().item(), rel=1e-12)
    assert mind_loss(f, m, mask=mask).item() == pytest.approx(
        ((sq * mask).sum() / mask.sum()).item(), rel=1e-12)
    assert mind_loss(f, m, fixed_descriptor=mind_ssc(f)).item() == pytest.approx(mind_loss(f, m).item(),
                                                                                 rel=1e-12)


def test_mind_gradcheck() -> None:
    f = _rand(1, 1, 5, 4, 6, seed=29)
    m = _rand(1, 1, 5, 4, 6, seed=30).requires_grad_()
    assert torch.autograd.gradcheck(lambda b: mind_loss(f, b, radius=1, dilation=1), (m,))


# --------------------------------------------------------------------------------- get_similarity

def test_get_similarity_dispatch() -> None:
    f = _rand(1, 1, 6, 6, 6, seed=31)
    m = _rand(1, 1, 6, 6, 6, seed=32)
    assert get_similarity("lncc", window=3)(f, m, None).item() == pytest.approx(
        lncc_loss(f, m, window=3).item())
    assert get_similarity("mse")(f, m, None).item() == pytest.approx(mse_loss(f, m).item())
    assert get_similarity("mind", dilation=1)(f, m, None).item() == pytest.approx(
        mind_loss(f, m, dilation=1).item())
    with pytest.raises(ValueError):
        get_similarity("ncc")
    with pytest.raises(ValueError):
        get_similarity("mse", window=3)


def test_mind_similarity_cache_follows_the_fixed_image() -> None:
    sim = get_similarity("mind")
    f = _rand(1, 1, 6, 6, 6, seed=33)
    m = _rand(1, 1, 6, 6, 6, seed=34).requires_grad_()
    first = sim(f, m, None)
    first.backward()
    assert m.grad is not None and m.grad.abs().sum() > 0
    assert sim(f, m, None).item() == pytest.approx(first.item(), rel=1e-12)
    f.add_(_rand(1, 1, 6, 6, 6, seed=35))  # in-place change must invalidate the cached descriptor
    assert sim(f, m, None).item() == pytest.approx(mind_loss(f, m).item(), rel=1e-12)
    assert sim(f, m, None).item() != pytest.approx(first.item(), rel=1e-6)
