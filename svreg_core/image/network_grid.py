"""The canonical grid networks see: RAS-aligned, isotropic, covering the image's foreground.

A network is trained on images whose voxel axes point along +R, +A, +S (whatever the files' own
orientation), at one voxel size, with a shape divisible by the network's size multiple. The grid is
derived from the *fixed* image; the moving image is resampled onto the same grid (through the affine
pre-alignment). Networks predict fields on this grid; :class:`svreg_core.registration.RegistrationResult`
brings them back to the fixed image's own grid in world coordinates.
"""
from __future__ import annotations

import numpy as np

from svreg_core.conventions import map_points
from svreg_core.image.grid import Grid
from svreg_core.image.image import Image
from svreg_core.image.normalize import FOREGROUND_LEVEL, robust_normalize


def foreground_extent(image: Image, threshold: float = FOREGROUND_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """RAS mm bounding box ``(low, high)`` of the voxels whose normalised intensity exceeds ``threshold``.

    The box holds the world positions of the eight corners of the voxel bounding box (voxel centres),
    so it is exact for any orientation, including oblique affines. An image with no such voxel uses
    its whole extent.
    """
    inside = np.nonzero(robust_normalize(image.data) > threshold)
    shape = np.asarray(image.shape)
    if inside[0].size == 0:
        lo, hi = np.zeros(3), shape - 1.0
    else:
        lo = np.array([axis.min() for axis in inside], dtype=np.float64)
        hi = np.array([axis.max() for axis in inside], dtype=np.float64)
    corners = np.array([[hi[a] if (c >> a) & 1 else lo[a] for a in range(3)] for c in range(8)])
    world = map_points(image.affine, corners)
    return world.min(axis=0), world.max(axis=0)


def network_grid(image: Image, spacing: float, multiple: int = 16, *, shape: tuple[int, ...] | None = None,
                 margin_mm: float = 4.0, threshold: float = FOREGROUND_LEVEL) -> Grid:
    """A RAS-aligned grid of voxel size ``spacing`` mm centred on ``image``'s foreground.

    Args:
        image: the reference (fixed) image, any orientation.
        spacing: isotropic voxel size in mm.
        multiple: every axis length is rounded up to a multiple of this (the network's down-sampling
            factor).
        shape: a fixed shape instead (e.g. a training grid); it is still centred on the foreground.
        margin_mm: added around the foreground box on each side before rounding.

    Returns:
        A :class:`Grid` with affine ``diag(spacing, spacing, spacing)`` plus a translation: voxel axes
        ``i, j, k`` point to +R, +A, +S.
    """
    if spacing <= 0 or multiple < 1:
        raise ValueError("spacing must be positive and multiple at least 1.")
    lo, hi = foreground_extent(image, threshold)
    centre = (lo + hi) / 2.0
    if shape is None:
        extent = hi - lo + 2.0 * margin_mm
        counts = np.ceil(extent / spacing + 1e-6).astype(int) + 1
        shape = tuple(int(-(-n // multiple) * multiple) for n in counts)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * spacing
    return Grid(tuple(int(n) for n in shape), affine)
