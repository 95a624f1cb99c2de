"""Robust intensity normalisation: hand-computed cases."""
from __future__ import annotations

import numpy as np

from svreg_core.image.normalize import intensity_window, robust_normalize


def test_non_negative_image_keeps_zero_background_and_clips_outliers() -> None:
    data = np.zeros((10, 10, 10), np.float32)
    data[2:8, 2:8, 2:8] = np.linspace(1.0, 100.0, 216).reshape(6, 6, 6)
    data[5, 5, 5] = 1e6  # one bright outlier
    out = robust_normalize(data, upper=99.0)
    hi = np.percentile(data[data > 0], 99.0)
    assert out[0, 0, 0] == 0.0
    assert out[5, 5, 5] == 1.0
    assert np.isclose(out[2, 2, 2], 1.0 / hi, rtol=1e-5)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


def test_scale_invariance_and_ct_floor() -> None:
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 500, (8, 9, 10)).astype(np.float32)
    assert np.allclose(robust_normalize(mr), robust_normalize(7.5 * mr), atol=1e-6)
    ct = rng.uniform(-1024, 2000, (8, 9, 10)).astype(np.float32)
    out = robust_normalize(ct, lower=1.0, upper=99.0)
    fg = ct[ct > ct.min()]
    lo, hi = np.percentile(fg, [1.0, 99.0])
    idx = np.unravel_index(np.argmin(np.abs(ct - (lo + hi) / 2)), ct.shape)
    assert np.isclose(out[idx], (ct[idx] - lo) / (hi - lo), atol=1e-5)


def test_constant_image_maps_to_zeros() -> None:
    assert not robust_normalize(np.full((4, 4, 4), 3.0)).any()


def test_two_level_image_with_negative_background_keeps_its_contrast() -> None:
    """A foreground of one value on a -1000 HU background: the foreground's 0.5 and 99.5 percentiles coincide,
    so the floor is the background: background 0, foreground 1 (both were mapped to 0 before)."""
    data = np.full((6, 6, 6), -1000.0)
    data[2:4, 2:5, 1:4] = 40.0
    out = robust_normalize(data)
    np.testing.assert_array_equal(out, (data == 40.0).astype(np.float32))


def test_intensity_window_ignores_background_and_padding() -> None:
    """The window of an MR brain on zeros starts at 0; a CT's ignores the padding outside its field of view (at
    the minimum) and starts at air; a window is never empty."""
    tissue = np.linspace(1.0, 200.0, 1000)
    assert intensity_window(np.concatenate([np.zeros(5000), tissue])) == (0.0, np.percentile(tissue, 99.5))
    # CT: 40 % padding at -3024, air at -1000, soft tissue 40 HU, a little bone at 1500
    ct = np.concatenate([np.full(4000, -3024.0), np.full(3000, -1000.0), np.full(2950, 40.0), np.full(50, 1500.0)])
    assert intensity_window(ct) == (-1000.0, 1500.0)  # soft tissue mid-grey: (40 + 1000) / 2500 = 0.42
    assert intensity_window(np.full(10, 7.0)) == (7.0, 8.0)
    assert intensity_window(np.array([0.0] * 20 + [0.3] * 3)) == (0.0, 0.3)  # padding but a few equal voxels


def test_a_few_negative_voxels_leave_the_window_of_an_image_on_zeros_alone() -> None:
    """An object on zeros with a few voxels just below zero (B-spline or sinc resampling rings at its edge): the
    zero background stays out of the upper percentile, so the window is the clean image's, not the object's
    median (the object fills 1 % of the image)."""
    tissue = np.linspace(1.0, 200.0, 1000)
    clean = np.concatenate([np.zeros(99_000), tissue])
    ringing = clean.copy()
    ringing[:3] = [-0.5, -2.0, -1.0]
    assert intensity_window(clean) == (0.0, np.percentile(tissue, 99.5))
    low, high = intensity_window(ringing)  # (two of the negative voxels are in the sample: high moves 0.002)
    assert low == 0.0 and np.isclose(high, np.percentile(tissue, 99.5), rtol=1e-4)
    # a CT's window does not count its exact 0 HU voxels either (they are water, not a background)
    ct = np.concatenate([np.full(3000, -1000.0), np.full(100, 0.0), np.linspace(1.0, 1500.0, 2900)])
    assert intensity_window(ct)[1] == np.percentile(ct[ct > 0], 99.5)


def test_the_window_of_a_large_image_with_negative_values_copies_its_foreground_once() -> None:
    """A CT (negative minimum) of 20 million voxels: leaving its exact zeros out of the upper percentile made a
    second copy of the whole foreground before it was subsampled (+1 GB for a 512 x 512 x 600 CT); the zeros
    are now left out of the 2-million-voxel sample. Peak memory traced (NumPy reports its arrays)."""
    import tracemalloc

    ct = np.linspace(-1000.0, 2000.0, 20_000_000, dtype=np.float32)
    ct[:1000] = -3024.0  # the padding outside the scanner's field of view
    tracemalloc.start()
    try:
        low, high = intensity_window(ct)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.4 * ct.nbytes, peak / ct.nbytes  # the foreground (1x) and its mask; 2.3x before
    assert np.isclose(low, -985.0, atol=1.0) and np.isclose(high, 1985.0, atol=1.0)
