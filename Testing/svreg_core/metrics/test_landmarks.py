"""TRE with known mappings."""
from __future__ import annotations

import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.metrics import tre, tre_summary


def test_tre_known_translation() -> None:
    fixed = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 2.0], [3.0, 4.0, 0.0]])
    shift = np.array([1.0, 2.0, 2.0])
    moving = fixed + shift
    # exact mapping: zero error
    np.testing.assert_allclose(tre(fixed, moving, lambda p: p + shift), 0.0, atol=1e-12)
    # identity mapping: every error is |shift| = 3 mm
    np.testing.assert_allclose(tre(fixed, moving, lambda p: p), 3.0)
    # mapping off by (3, 4, 0) mm for the third point only
    moving_bad = moving.copy()
    moving_bad[2] += [3.0, 4.0, 0.0]
    np.testing.assert_allclose(tre(fixed, moving_bad, lambda p: p + shift), [0.0, 0.0, 5.0])


def test_tre_summary() -> None:
    s = tre_summary(np.array([1.0, 2.0, 3.0, 10.0]))
    assert s == {"mean": pytest.approx(4.0), "std": pytest.approx(np.sqrt(12.5)),
                 "median": pytest.approx(2.5), "max": pytest.approx(10.0)}
    with pytest.raises(InputError):
        tre_summary(np.array([]))


def test_tre_rejects_mismatch() -> None:
    with pytest.raises(InputError):
        tre(np.zeros((3, 3)), np.zeros((2, 3)), lambda p: p)
    with pytest.raises(InputError):
        tre(np.zeros((3, 3)), np.zeros((3, 3)), lambda p: p[:, :2])
    with pytest.raises(InputError, match=r"fixed_points must be an \(N, 3\) array of RAS mil.*shape \(3, 2\)"):
        tre(np.zeros((3, 2)), np.zeros((3, 2)), lambda p: p)
    with pytest.raises(InputError, match="NaN or infinite"):
        tre(np.full((3, 3), np.nan), np.zeros((3, 3)), lambda p: p)
