"""Modality from intensities: hand-made volumes."""
from __future__ import annotations

import numpy as np

from svreg_core.image.modality import looks_like_ct


def test_ct_in_hounsfield_units_is_recognised() -> None:
    body = np.full((10, 10, 10), 40.0)  # soft tissue
    assert not looks_like_ct(body)
    body[:, :, 0] = -1000.0  # 10 % air
    assert looks_like_ct(body)
    body[:, :, 0] = 40.0
    body[0, :2, 0] = -1000.0  # 2 voxels of 1,000: below 2 %
    assert not looks_like_ct(body)
    body[0, :, 0] = -600.0  # 10 voxels, 1 %: not yet
    assert not looks_like_ct(body)
    body[1, :9, 0] = -500.0  # 19 voxels, 1.9 %: not yet
    assert not looks_like_ct(body)
    body[1, 9, 0] = -499.0  # above the air level: still 19
    assert not looks_like_ct(body)
    body[1, 9, 0] = -500.0  # 20 voxels, 2 %: at the limit
    assert looks_like_ct(body)
    mr = np.random.default_rng(0).normal(0.0, 3.0, (10, 10, 10))  # z-scored MR: negative, never near −500
    assert not looks_like_ct(mr) and not looks_like_ct(np.zeros((4, 4, 4)))
