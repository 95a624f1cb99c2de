"""Sampling grids: a voxel lattice ``shape`` placed in the world by a voxel-to-RAS ``affine``."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from svreg_core.conventions import map_points

#: Voxels per slab of :meth:`Grid.slabs` (float64 world points of a slab: 24 MiB).
SLAB_VOXELS = 1 << 20

#: NIfTI sform and qform codes of a grid whose file says nothing else: 1, scanner space (2 aligned, 3 Talairach,
#: 4 MNI 152, 5 another template).
SCANNER_CODES = (1, 1)


@dataclass(frozen=True, eq=False)
class Grid:
    """A 3-D voxel lattice in world space.

    Attributes:
        shape: number of voxels along ``(i, j, k)``.
        affine: 4x4 matrix, voxel ``(i, j, k, 1)`` -> RAS millimetres.
        xform_codes: the NIfTI sform and qform codes (which space ``affine`` places the voxels in: 1 scanner,
            2 aligned, 3 Talairach, 4 MNI 152, 5 another template) that a NIfTI written on this grid gets;
            :data:`SCANNER_CODES` unless read from a file (:func:`~svreg_core.image.io.xform_codes`). Grids made
            from this one (:meth:`cropped`, :meth:`resampled`) keep them; :meth:`same_as` ignores them.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    xform_codes: tuple[int, int] = SCANNER_CODES

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        object.__setattr__(self, "xform_codes", (int(self.xform_codes[0]), int(self.xform_codes[1])))

    def to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates ``(..., 3)`` (``i, j, k``; 0 at the first voxel's centre) of RAS mm points."""
        inverse = np.linalg.inv(self.affine)
        return map_points(inverse, np.asarray(points, dtype=np.float64))

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether each RAS mm point ``(..., 3)`` lies in the grid's field of view: within half a voxel of its
        outermost voxel centres (the extent of the voxels themselves)."""
        return self.contains_voxels(self.to_voxel(points))

    def contains_voxels(self, voxel: np.ndarray) -> np.ndarray:
        """:meth:`contains` for continuous voxel coordinates ``(..., 3)`` of this grid."""
        return np.all((voxel >= -0.5) & (voxel <= np.asarray(self.shape) - 0.5), axis=-1)

    def same_as(self, other: Grid, atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and (within ``atol`` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along ``(i, j, k)`` in millimetres."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def field_of_view_mm(self) -> float:
        """The median of the grid's three extents (voxel count x voxel size) in millimetres: how large the imaged
        region is (a human head about 200, a mouse brain 15-25)."""
        return float(np.median(self.spacing * np.asarray(self.shape)))

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the ``i, j, k`` axes."""
        return self.affine[:3, :3] / self.spacing

    def world_points(self) -> np.ndarray:
        """RAS millimetre coordinates of every voxel centre, shape ``(I, J, K, 3)``."""
        i, j, k = (np.arange(n, dtype=np.float64) for n in self.shape)
        columns = self.affine[:3, :3].T  # row a: the RAS step of one voxel along axis a
        points = i[:, None, None, None] * columns[0] + self.affine[:3, 3]
        points = points + j[None, :, None, None] * columns[1]
        return points + k[None, None, :, None] * columns[2]

    def corner_points(self) -> np.ndarray:
        """RAS millimetre coordinates ``(8, 3)`` of the centres of the grid's eight corner voxels."""
        ijk = np.array([[(0, n - 1)[c] for n, c in zip(self.shape, bits)] for bits in np.ndindex(2, 2, 2)])
        return map_points(self.affine, ijk)

    def cropped(self, start: tuple[int, ...], stop: tuple[int, ...]) -> Grid:
        """The sub-lattice of voxels ``start <= (i, j, k) < stop`` (same spacing and directions)."""
        first = np.clip(np.asarray(start, dtype=int), 0, np.asarray(self.shape) - 1)
        end = np.clip(np.asarray(stop, dtype=int), first + 1, np.asarray(self.shape))
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ first + self.affine[:3, 3]
        return Grid(tuple(int(n) for n in end - first), affine, self.xform_codes)

    def slabs(self, voxels: int = SLAB_VOXELS) -> Iterator[tuple[int, int, Grid]]:
        """``(start, stop, sub-grid)`` for consecutive slabs ``start <= i < stop`` of about ``voxels`` voxels.

        Per-voxel work on a large grid (world points, sampling coordinates) visits it slab by slab, so
        its float64 temporaries never exist for the whole grid: at 1 mm they took about 1 GB at the peak
        of ``svreg register`` on the brain pair.
        """
        step = max(1, voxels // (self.shape[1] * self.shape[2]))
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            yield start, stop, self.cropped((start, 0, 0), (stop, *self.shape[1:]))

    def box_voxels(self, corner_a: np.ndarray,
                   corner_b: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The smallest voxel block ``start <= (i, j, k) < stop`` covering a RAS box, clipped to the grid.

        ``corner_a``, ``corner_b``: opposite corners (RAS mm, any order) of an axis-aligned world box.
        On an oblique grid the block covers the box's eight corners. ``None`` when the box misses the grid.
        """
        low, high = np.minimum(corner_a, corner_b), np.maximum(corner_a, corner_b)
        corners = np.array([[(low, high)[c][a] for a, c in enumerate(bits)]
                            for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
        ijk = (corners - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T
        start = np.maximum(np.ceil(ijk.min(0) - 1e-6).astype(int), 0)
        stop = np.minimum(np.floor(ijk.max(0) + 1e-6).astype(int) + 1, np.asarray(self.shape))
        if np.any(stop <= start):
            return None
        return tuple(int(v) for v in start), tuple(int(v) for v in stop)

    def resampled(self, spacing: float) -> Grid:
        """An isotropic grid of voxel size ``spacing`` mm over the same field of view.

        Keeps the axis directions and the position of voxel ``(0, 0, 0)``; the last voxel centres
        stay inside the original extent. For an integer ratio of voxel sizes the new voxel centres
        are a strided subset of the old ones (so anti-aliased subsampling needs no interpolation).
        """
        extent = (np.asarray(self.shape) - 1) * self.spacing
        shape = np.maximum(np.floor(extent / spacing + 1e-6).astype(int) + 1, 2)
        affine = self.affine.copy()
        affine[:3, :3] = self.direction * spacing
        return Grid(tuple(int(n) for n in shape), affine, self.xform_codes)
