"""A synthetic registration result with a known, non-trivial mapping (no optimisation: instant)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from svreg_core.image import Grid, Image
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.registration import RegistrationResult


def _smooth_image(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return (1.5 + np.sin(x / 9.0) * np.cos(y / 11.0) + 0.5 * np.sin(z / 7.0 + 1.0)).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic_result(geo) -> RegistrationResult:
    f_aff = geo.make_affine(geo.rotation([0.2, 1.0, 0.1], 10.0) @ np.diag([-3.0, 3.5, 3.0]), [30.0, -25.0, -18.0])
    f_shape = (18, 16, 14)
    m_shape, m_aff = geo.covering_grid(
        f_shape, f_aff, geo.rotation([1.0, 0.3, -0.4], 20.0) @ np.diag([2.5, -4.0, 3.2]), margin=5)
    fixed = Image(_smooth_image(geo.world_points(f_shape, f_aff)), f_aff)
    moving = Image(_smooth_image(geo.world_points(m_shape, m_aff) * 1.05), m_aff)
    work = Grid(f_shape, f_aff).resampled(6.0)
    rng = np.random.default_rng(7)
    v = np.stack([ndimage.gaussian_filter(rng.normal(size=work.shape), 1.5) for _ in range(3)])
    v *= 0.9 / np.abs(v).max()  # up to 0.9 working voxels = 5.4 mm
    velocity = torch.as_tensor(v[None], dtype=torch.float32)
    weight = torch.as_tensor(rng.uniform(0.2, 1.0, (1, 1, *work.shape)), dtype=torch.float32)
    centre = geo.grid_centre(f_shape, f_aff)
    rot = geo.rotation([0.5, -0.2, 1.0], 12.0)
    a = geo.make_affine(rot, centre - rot @ centre + np.array([4.0, -3.0, 2.5]))
    empty = np.zeros((*f_shape, 3), np.float32)
    params = RegistrationParameters(device="cpu")
    result = RegistrationResult(fixed=fixed, moving=moving, parameters=params, affine=a, working_grid=work,
                                velocity=velocity, weight=weight, displacement=empty, deformable_displacement=empty,
                                timing={"registration_s": 1.0}, device="cpu")
    result.compute_displacements()
    return result
