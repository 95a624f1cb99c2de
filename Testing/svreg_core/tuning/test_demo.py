"""The demo validation set of ``svreg tune``."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from svreg_core.tuning.demo import _corresponding_points, smooth_displacement


def test_demo_landmarks_invert_the_known_warp() -> None:
    """The moving landmark y of a fixed point x solves y + d(y) = x (the moving image samples the fixed at y + d(y))."""
    x = np.array([[5.0, 6.0, 7.0], [10.5, 3.25, 8.0]])
    constant = np.broadcast_to(np.array([1.5, -2.0, 0.25])[:, None, None, None], (3, 16, 16, 16)).copy()
    np.testing.assert_allclose(_corresponding_points(x, constant), x - [1.5, -2.0, 0.25], atol=1e-12)
    disp = smooth_displacement((16, 16, 16), 1.0, seed=0)
    y = _corresponding_points(x, disp)
    d_y = np.stack([ndimage.map_coordinates(d, y.T, order=1) for d in disp], 1)
    np.testing.assert_allclose(y + d_y, x, atol=1e-6)
