"""An image array bound to its world geometry."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from svreg_core.conventions import map_points
from svreg_core.errors import InputError
from svreg_core.image.grid import SCANNER_CODES, Grid

#: Largest accepted ratio of the largest to the smallest singular value of an image affine's 3x3 part
#: (for axis-aligned voxels: longest over shortest voxel size; real images stay below ~100).
MAX_AFFINE_CONDITION = 1e4

#: Accepted voxel sizes ``(smallest, largest)`` in millimetres: sizes outside come from a broken header or
#: one in other units, and would make svreg build absurd grids. svreg works in mm: the pyramid levels are
#: 0.1-100 mm (``parameters.BOUNDS``), the affine stage's 8 and 4 mm (less on a field of view under 96 mm;
#: never finer than the image).
#: Smallest: the anti-aliasing blur before a level spans about 1.5 x level spacing / voxel size voxels
#: each side; at 1e-3 mm (1 µm) a 20³ image still self-registers with the brain-mri preset (measured,
#: 2 CPU cores: 7 s, 1.2 GB peak), at 1e-7 mm its first blur asked for 384 GB. Largest: no scanner's
#: voxel is coarser than the coarsest working level svreg accepts (100 mm).
VOXEL_SIZE_RANGE_MM = (1e-3, 1e2)


@dataclass(frozen=True)
class Image:
    """A 3-D scalar image.

    Attributes:
        data: array ``(I, J, K)`` in the file's voxel order.
        affine: 4x4 voxel ``(i, j, k, 1)`` -> RAS millimetres.
        xform_codes: NIfTI sform and qform codes of the space ``affine`` places it in (:attr:`Grid.xform_codes`).
    """

    data: np.ndarray
    affine: np.ndarray
    xform_codes: tuple[int, int] = SCANNER_CODES

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))

    @classmethod
    def on(cls, grid: Grid, data: np.ndarray) -> Image:
        """``data`` (voxels ``grid.shape``) on ``grid``: with its affine and NIfTI codes."""
        return cls(data, grid.affine, grid.xform_codes)

    @property
    def grid(self) -> Grid:
        return Grid(self.data.shape[:3], self.affine, self.xform_codes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:3])

    @property
    def spacing(self) -> np.ndarray:
        return self.grid.spacing


#: Largest difference (mm, any affine entry) between two affines taken as the same grid by :func:`conform_to_grid`.
SAME_GRID_TOLERANCE_MM = 1e-3


def conform_to_grid(image: Image, grid: Grid, what: str, reference: str) -> Image:
    """A label map or mask ``image`` on ``grid``: as it is when it already is (:meth:`Grid.same_as` within
    :data:`SAME_GRID_TOLERANCE_MM`), else its voxels moved onto ``grid`` when they lie on ``grid``'s lattice (the
    same voxel size and axes, in any order or direction, whole-voxel offsets): transposed and flipped, and padded
    with 0 (background) where it covers less (a 3D Slicer segmentation saved with the extent of its segments) or
    cut where it covers more and holds only 0 there. No value changes. :class:`InputError` naming ``what`` and
    its ``reference`` otherwise, also for a map of the grid's own size shifted by whole voxels (a broken header
    rather than a part).
    """
    if image.grid.same_as(grid, atol=SAME_GRID_TOLERANCE_MM):
        return image
    sizes = [" x ".join(f"{v:.4g}" for v in g.spacing) for g in (image.grid, grid)]
    apart = float(np.linalg.norm(image.affine[:3, 3] - grid.affine[:3, 3]))
    refusal = InputError(f"{what} {image.shape} is not on the grid of the {reference} {grid.shape}: they must hold "
                         "the same voxels (the same grid, the same voxels in another axis order, or a part of them); "
                         f"voxel sizes {sizes[0]} and {sizes[1]} mm, first voxels {apart:.1f} mm apart.")
    # grid voxel g -> image voxel  signed @ g + shift: the same lattice iff a signed permutation, whole-voxel shift
    mapping = np.linalg.inv(image.affine) @ grid.affine
    signed, shift = np.rint(mapping[:3, :3]), np.rint(mapping[:3, 3])
    axes = np.argmax(np.abs(signed), axis=0)  # the image axis each grid axis runs along
    if not (np.allclose(mapping[:3, :3], signed, atol=1e-4) and np.allclose(mapping[:3, 3], shift, atol=1e-3)
            and sorted(axes) == [0, 1, 2] and all(np.abs(signed).sum(axis=0) == 1)):
        raise refusal
    data = np.transpose(np.asarray(image.data), tuple(int(a) for a in axes))
    signs = np.array([signed[axes[g], g] for g in range(3)])
    flips = tuple(g for g in range(3) if signs[g] < 0)
    data = np.flip(data, flips) if flips else data
    # the grid index of the reoriented array's first voxel, along each grid axis
    first = np.array([-shift[axes[g]] if signs[g] > 0 else shift[axes[g]] - (data.shape[g] - 1) for g in range(3)],
                     dtype=int)
    lo, hi = np.maximum(first, 0), np.minimum(first + data.shape, grid.shape)
    if np.any(hi <= lo) or (data.shape == tuple(grid.shape) and np.any(first)):
        raise refusal  # beyond the image, or as big as it yet shifted: a broken header, not a part
    block = data[tuple(slice(a - f, b - f) for a, b, f in zip(lo, hi, first))]
    if data.shape != tuple(grid.shape) or np.any(first):
        if np.count_nonzero(block) != np.count_nonzero(data):
            raise InputError(f"{what} {image.shape} reaches beyond the {reference}'s grid {grid.shape} with labels "
                             "there; it must lie within the image.")
        out = np.zeros(grid.shape, dtype=data.dtype)
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = block
        return Image.on(grid, out)
    return Image.on(grid, np.ascontiguousarray(data))


#: Voxels of an image that :func:`foreground_inside` looks at, at most (every ``s``-th voxel along each axis).
_OVERLAP_SAMPLE_VOXELS = 1 << 21


def foreground_inside(image: Image, other: Grid, mapping: np.ndarray | None = None) -> float:
    """The fraction (0 to 1) of ``image``'s foreground (voxels above its minimum) that lies in ``other``'s field
    of view (:meth:`Grid.contains`), after the 4x4 RAS->RAS ``mapping`` when given, counted on every ``s``-th
    voxel along each axis so that at most :data:`_OVERLAP_SAMPLE_VOXELS` are looked at (all of them when that
    sample holds no foreground)."""
    data = np.asarray(image.data)
    step = max(1, int(np.ceil((data.size / _OVERLAP_SAMPLE_VOXELS) ** (1 / 3))))
    sample = data[::step, ::step, ::step]
    found = np.argwhere(sample > data.min()) * step
    if not len(found):
        found = np.argwhere(data > data.min())
    if not len(found):
        return 0.0
    affine = image.affine if mapping is None else np.asarray(mapping, dtype=np.float64) @ image.affine
    points = map_points(affine, found)
    return float(np.mean(other.contains(points)))


def crop_to_box(image: Image, corner_a: Sequence[float], corner_b: Sequence[float], name: str) -> Image:
    """The voxels of ``image`` in the RAS box with opposite corners ``corner_a``, ``corner_b`` (mm).

    The block of voxels is :meth:`Grid.box_voxels`; voxel positions in the world are unchanged (the
    affine's origin moves to the block's first voxel). Raises :class:`InputError` when the box misses
    the image or leaves fewer than 2 voxels along an axis.
    """
    block = image.grid.box_voxels(np.asarray(corner_a, dtype=np.float64), np.asarray(corner_b, dtype=np.float64))
    extent = image.grid.corner_points()
    bounds = ", ".join(f"{lo:.1f} to {hi:.1f}" for lo, hi in zip(extent.min(0), extent.max(0)))
    if block is None:
        raise InputError(f"the crop box misses the {name}, whose voxel centres span R/A/S {bounds} mm.")
    start, stop = block
    if min(b - a for a, b in zip(start, stop)) < 2:
        raise InputError(f"the crop box keeps fewer than 2 voxels of the {name} along an axis ({start} to {stop}); "
                         f"its voxel centres span R/A/S {bounds} mm.")
    data = np.asarray(image.data)[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    return Image.on(image.grid.cropped(start, stop), np.ascontiguousarray(data))


def three_d_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    """The 3-D voxel shape of an image of array ``shape``: trailing axes of length 1 (a 4-D file of one volume)
    dropped. :class:`InputError` naming ``name`` when that leaves other than 3 axes (a time series, a vector
    field, a 2-D slice)."""
    shape = tuple(int(n) for n in shape)
    squeezed = shape
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if len(squeezed) != 3:
        raise InputError(f"{name} must be a 3-D image; it has {len(squeezed)} dimensions {squeezed}.")
    return squeezed


def validate_image(image: Image, name: str, *, labels: bool = False) -> Image:
    """Check that ``image`` is usable for registration; raise :class:`InputError` with a plain message.

    Checks: 3-D (a trailing singleton 4th axis is squeezed), at least 2 voxels per axis, finite
    values, not constant (intensity images), a well-conditioned affine (longest voxel axis at most
    :data:`MAX_AFFINE_CONDITION` times the shortest, axes not nearly parallel) with voxel sizes within
    :data:`VOXEL_SIZE_RANGE_MM`: both checked before any grid is built from it.
    """
    if not isinstance(image, Image):  # a NumPy array or a nibabel image (an AttributeError about ``.data``)
        raise InputError(f"{name} must be an svreg Image (svreg_core.load_image(path), or Image(array, affine) "
                         f"with its voxel-to-RAS affine), not {type(image).__module__}.{type(image).__qualname__}.")
    data = np.asarray(image.data)
    while data.ndim > len(three_d_shape(data.shape, name)):
        data = data[..., 0]
    if min(data.shape) < 2:
        raise InputError(f"{name} has a degenerate size {tuple(data.shape)}; each axis needs at least 2 voxels.")
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{name} has an invalid voxel-to-world affine.")
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    sizes_text = ", ".join(f"{v:.3g}" for v in sizes)
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)  # descending
    if not singular[-1] > singular[0] / MAX_AFFINE_CONDITION:
        raise InputError(f"{name} has a (nearly) singular voxel-to-world affine (voxel axes {sizes_text} mm, "
                         f"condition number {singular[0] / max(singular[-1], 1e-300):.3g}); fix the voxel sizes "
                         "and orientation in its header.")
    low, high = VOXEL_SIZE_RANGE_MM
    if sizes.min() < low * (1 - 1e-9) or sizes.max() > high * (1 + 1e-9):  # the bounds themselves pass
        raise InputError(f"{name} has voxel sizes {sizes_text} mm, outside the plausible range {low:g} to "
                         f"{high:g} mm; fix the voxel sizes in its header (svreg reads them as millimetres).")
    if not labels and not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    bad = ~np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else None
    if bad is not None and bad.any():
        raise InputError(f"{name} contains {int(bad.sum())} NaN or infinite voxels; clean or mask them first.")
    if not labels and float(data.max()) == float(data.min()):
        raise InputError(f"{name} is empty: all voxels have the value {float(data.min()):g}.")
    if labels and not np.any(data):
        raise InputError(f"{name} is empty: it contains no non-zero label.")
    return Image(data, affine, image.xform_codes)
