"""A two-region sliding phantom: the upper half of a textured volume slides +s along x, the lower half −s.

The truth is known (fixed point x maps to moving point x ± s·e_x), so the end-point error (EPE) near the
sliding plane measures what a regulariser does to a motion discontinuity. At the same λ_max, SPR's λ must
drop at the plane (where the field strains) and stay 1 far from it, and SPR's EPE at the plane must beat
the uniform regulariser's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svreg_core.image import Image
from svreg_core.image.smoothing import smooth_field
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.registration import register

SHAPE = (32, 32, 32)
SPACING = 2.0  # mm
SHIFT = 3.0    # mm each way: 6 mm relative sliding at the plane k = 16


def _texture(seed: int) -> np.ndarray:
    """A smooth random texture, periodic along x (i) so that shifting it along x adds no edge."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, *SHAPE, generator=gen, dtype=torch.float64)
    tex = smooth_field(smooth_field(noise))[0, 0].numpy()
    return (tex - tex.min()) / (tex.max() - tex.min())


def _shift_x(volume: np.ndarray, shift_vox: float) -> np.ndarray:
    """``volume(i − shift)`` along the periodic axis i (linear interpolation)."""
    lo = int(np.floor(shift_vox))
    frac = shift_vox - lo
    return (1 - frac) * np.roll(volume, lo, axis=0) + frac * np.roll(volume, lo + 1, axis=0)


@pytest.fixture(scope="module")
def phantom():
    fixed = _texture(0)
    upper = np.arange(SHAPE[2]) >= SHAPE[2] // 2
    # moving(y) = fixed(y − t(y)) with t = +s in the upper half, −s in the lower: fixed x ↦ moving x + t
    moving = np.where(upper[None, None, :], _shift_x(fixed, SHIFT / SPACING), _shift_x(fixed, -SHIFT / SPACING))
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    truth = np.zeros((*SHAPE, 3))
    truth[..., 0] = np.where(upper[None, None, :], SHIFT, -SHIFT)
    return Image(fixed.astype(np.float32), affine), Image(moving.astype(np.float32), affine), truth


def _run(phantom, spr: bool):
    fixed, moving, truth = phantom
    # one smoothing pass: the velocity's own smoothing must not hide what the regulariser does
    params = RegistrationParameters(spr=spr, alpha_prime=0.05, lambda_max=8.0, smoothing_passes=1, affine=False,
                                    level_spacings=(4.0, 2.0), iterations=(60, 60), device="cpu")
    result = register(fixed, moving, params)
    epe = np.linalg.norm(result.deformable_displacement - truth, axis=-1)
    return result, epe


def test_spr_weight_drops_at_the_sliding_plane_and_beats_uniform_there(phantom) -> None:
    spr, epe_spr = _run(phantom, spr=True)
    uniform, epe_uniform = _run(phantom, spr=False)
    inner = (slice(4, -4), slice(4, -4))  # away from the non-periodic borders along j
    near = (*inner, slice(14, 18))         # within 4 mm of the plane
    far = (*inner, np.r_[4:10, 22:28])     # at least 12 mm from it
    lam = spr.weight[0, 0].numpy()         # λ on the working grid (the 2 mm fixed grid here)
    assert lam.shape == SHAPE
    assert float(uniform.weight.min()) == 1.0
    assert lam[near].mean() < 0.5 < 0.95 < lam[far].mean()
    # both recover the motion away from the plane; at the plane SPR's error is clearly smaller
    assert epe_spr[far].mean() < 0.5 and epe_uniform[far].mean() < 0.5
    assert epe_spr[near].mean() < 0.85 * epe_uniform[near].mean()
