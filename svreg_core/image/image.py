"""An image array bound to its world geometry."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from svreg_core.errors import InputError
from svreg_core.image.grid import Grid


#: Largest accepted ratio of the largest to the smallest singular value of an image affine's 3x3 part
#: (for axis-aligned voxels: longest over shortest voxel size; real images stay below ~100).
MAX_AFFINE_CONDITION = 1e4


@dataclass(frozen=True)
class Image:
    """A 3-D scalar image.

    Attributes:
        data: array ``(I, J, K)`` in the file's voxel order.
        affine: 4x4 voxel ``(i, j, k, 1)`` -> RAS millimetres.
    """

    data: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))

    @property
    def grid(self) -> Grid:
        return Grid(self.data.shape[:3], self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])

    @property
    def spacing(self) -> np.ndarray:
        return self.grid.spacing


def validate_image(image: Image, name: str, *, labels: bool = False) -> Image:
    """Check that ``image`` is usable for registration; raise :class:`InputError` with a plain message.

    Checks: 3-D (a trailing singleton 4th axis is squeezed), at least 2 voxels per axis, finite
    values, not constant (intensity images), a well-conditioned affine (longest voxel axis at most
    :data:`MAX_AFFINE_CONDITION` times the shortest, axes not nearly parallel: checked before any
    grid is built from it).
    """
    data = np.asarray(image.data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name} must be a 3-D image; it has {data.ndim} dimensions {tuple(data.shape)}.")
    if min(data.shape) < 2:
        raise InputError(f"{name} has a degenerate size {tuple(data.shape)}; each axis needs at least 2 voxels.")
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{name} has an invalid voxel-to-world affine.")
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)  # descending
    if not singular[-1] > singular[0] / MAX_AFFINE_CONDITION:
        sizes = ", ".join(f"{v:.3g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        raise InputError(f"{name} has a (nearly) singular voxel-to-world affine (voxel axes {sizes} mm, condition "
                         f"number {singular[0] / max(singular[-1], 1e-300):.3g}); fix the voxel sizes and "
                         "orientation in its header.")
    if not labels and not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    bad = ~np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else None
    if bad is not None and bad.any():
        raise InputError(f"{name} contains {int(bad.sum())} NaN or infinite voxels; clean or mask them first.")
    if not labels and float(data.max()) == float(data.min()):
        raise InputError(f"{name} is empty: all voxels have the value {float(data.min()):g}.")
    if labels and not np.any(data):
        raise InputError(f"{name} is empty: it contains no non-zero label.")
    return Image(data, affine)
