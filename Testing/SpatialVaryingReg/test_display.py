"""The λ map's display window on real MRML volume nodes (``SpatialVaryingRegLib.display``)."""
from __future__ import annotations

import numpy as np
import pytest
from slicer_test_helpers import add_volume

from SpatialVaryingRegLib import display


def _shown(scene, values: np.ndarray, name: str) -> tuple[float, float]:
    """The (lowest, highest) λ of the window the display gives a λ map of ``values``."""
    node = add_volume(scene, values.astype(np.float32), np.eye(4), name)
    returned = display.apply_lambda_display(node)
    d = node.GetDisplayNode()
    assert not d.GetAutoWindowLevel()
    shown = (d.GetLevel() - d.GetWindow() / 2, d.GetLevel() + d.GetWindow() / 2)
    assert shown == pytest.approx(returned)
    return shown


def test_a_lambda_map_of_ones_with_rounding_noise_is_not_stretched_into_a_rainbow(scene):
    rng = np.random.default_rng(0)
    ones = 1.0 - rng.uniform(0.0, 2e-4, size=(10, 10, 10))  # λ = 1 everywhere, up to rounding
    assert _shown(scene, ones, "noise") == pytest.approx((0.99, 1.0))


def test_runs_and_previews_of_one_band_share_the_window_so_a_shifted_map_looks_shifted(scene):
    rng = np.random.default_rng(1)
    lam = rng.uniform(0.6, 1.0, size=(10, 10, 10))
    first, lowered = _shown(scene, lam, "run 1"), _shown(scene, lam - 0.08, "run 2")
    assert first == lowered == pytest.approx((0.5, 1.0))


def test_the_window_reaches_down_to_the_low_lambda_of_a_map(scene):
    rng = np.random.default_rng(2)
    assert _shown(scene, rng.uniform(0.05, 1.0, size=(10, 10, 10)), "wide") == pytest.approx((0.0, 1.0))
    assert _shown(scene, rng.uniform(0.93, 1.0, size=(10, 10, 10)), "narrow") == pytest.approx((0.9, 1.0))
