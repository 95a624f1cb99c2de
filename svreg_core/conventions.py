"""The project's spatial conventions, defined once and imported everywhere else.

Frames and units
----------------
* **Voxel index order** ``(i, j, k)`` is the order of the array axes as stored in the NIfTI file
  (nibabel's ``get_fdata()`` order). Torch tensors of images are ``(N, C, I, J, K)``.
* **Affines** are 4x4 matrices mapping voxel indices ``(i, j, k, 1)`` to **world RAS millimetres**
  (the NIfTI / nibabel / Slicer convention).
* **Mappings** go in the *resampling* (pull) direction: a transform ``T`` maps a point ``x`` of the
  fixed image's world to the point ``T(x)`` of the moving image's world, and the warped image is
  ``warped(x) = moving(T(x))``. A displacement ``d`` describes ``T(x) = x + d(x)``.
* **Internal displacements** (inside the optimiser) are tensors ``(N, 3, I, J, K)`` in **voxel units of
  the grid they are sampled on**, channel order ``(i, j, k)``. :func:`voxel_to_world_vectors` turns
  them into RAS millimetres.
* **World displacements** handed to users are arrays ``(I, J, K, 3)`` in RAS millimetres. Files in the
  ITK convention (``displacement.nii.gz``, ``transform.h5``) hold **LPS** millimetres:
  :data:`RAS_TO_LPS` converts (it is its own inverse).
* **Normalised coordinates** for :func:`torch.nn.functional.grid_sample` use
  ``align_corners=True``: voxel centre ``0`` is ``-1`` and voxel centre ``n - 1`` is ``+1``. Their
  channel order is ``(k, j, i)`` (grid_sample's x indexes the *last* tensor axis).
"""
from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import torch

from svreg_core.errors import InputError

#: ``align_corners`` value used for every ``grid_sample`` / ``interpolate`` call in the project.
ALIGN_CORNERS = True

#: Diagonal flip between RAS and LPS world frames (x -> -x, y -> -y); its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ras_affine_from_itk(direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine of an ITK image geometry (SimpleITK's ``GetDirection``/``GetSpacing``/
    ``GetOrigin`` of a 3-D image: LPS direction cosines as the columns of a row-major 3x3 matrix, voxel sizes in
    mm, the LPS position of voxel ``(0, 0, 0)`` in mm). ITK's voxel index ``(x, y, z)`` is the array's ``(i, j, k)``.
    """
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ np.asarray(direction, dtype=np.float64).reshape(3, 3) \
        * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_geometry_from_ras_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`ras_affine_from_itk`: the LPS direction (row-major, 9 values), spacing (mm) and LPS
    origin (mm) of the ITK image geometry of a voxel-to-RAS ``affine``."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return (RAS_TO_LPS @ (affine[:3, :3] / spacing)).ravel(), spacing, RAS_TO_LPS @ affine[:3, 3]


def ras_lps_matrix(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 point mapping between RAS frames as the same mapping between LPS frames, and back (self-inverse)."""
    flip = np.diag([*np.diag(RAS_TO_LPS), 1.0])
    return flip @ np.asarray(matrix, dtype=np.float64) @ flip


Points = TypeVar("Points", np.ndarray, torch.Tensor)


def map_points(matrix: Points, points: Points) -> Points:
    """Points ``(..., 3)`` (rows) mapped by the 4x4 homogeneous ``matrix``: ``x ↦ M[:3, :3] x + M[:3, 3]``.

    The one way the project applies an affine to points: a voxel-to-RAS affine takes voxel indices to RAS mm, a
    world transform takes RAS mm to RAS mm. NumPy arrays, or torch tensors (the matrix then a tensor of the
    points' dtype and device).
    """
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def point_rows(points: object, what: str = "points") -> np.ndarray:
    """``points`` (an array or nested list of RAS mm points, one per row) as a float64 ``(N, 3)`` array;
    :class:`~svreg_core.errors.InputError` naming ``what`` for any other shape (a single point ``(3,)``, 2-D
    points) or values that are not numbers. NaN coordinates pass (they map to NaN)."""
    try:
        rows = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be an (N, 3) array of RAS millimetres, not {points!r:.80}.") from None
    if rows.ndim != 2 or rows.shape[1] != 3:
        hint = ": give a single point as [[x, y, z]]" if rows.shape == (3,) else ""
        raise InputError(f"{what} must be an (N, 3) array of RAS millimetres, not of shape {rows.shape}{hint}.")
    return rows


def voxel_to_world_vectors(vectors: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map displacement vectors in voxel units (last axis ``(i, j, k)``) to RAS millimetres.

    Only the linear part of the voxel-to-RAS ``affine`` acts on vectors.
    """
    return vectors @ np.asarray(affine, dtype=np.float64)[:3, :3].T


def world_to_voxel_vectors(vectors: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voxel_to_world_vectors`: RAS millimetres to voxel units of ``affine``'s grid."""
    return vectors @ np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3]).T


def ras_to_lps_vectors(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Convert vectors or points (last axis of length 3) between RAS and LPS (self-inverse); into ``out`` when
    given (``out=vectors``: in place)."""
    return np.multiply(vectors, np.diag(RAS_TO_LPS), out=out)


def pad_thin_axes(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An image array ``(I, J, K)`` and its voxel-to-RAS ``affine`` with a slice of 0 on both sides of each axis one
    voxel thick (a single slice), its voxels at the same world positions; unchanged without such an axis.

    grid_sample (``align_corners=True``, :func:`voxel_to_normalized`) reads a one-voxel axis at its only voxel
    wherever a point lies along it, which spreads a single slice through a whole output; padded, it fades to 0
    within a voxel of its plane, as an image does beyond its other faces.
    """
    thin = [n == 1 for n in np.shape(data)[:3]]
    if not any(thin):
        return data, affine
    shift = np.eye(4)
    shift[:3, 3] = [-1.0 if t else 0.0 for t in thin]
    padded = np.pad(np.asarray(data), [(1, 1) if t else (0, 0) for t in thin])
    return padded, np.asarray(affine, dtype=np.float64) @ shift


def voxel_to_normalized(shape: tuple[int, ...], device: torch.device | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the 4x4 matrix taking voxel coordinates ``(i, j, k, 1)`` to grid_sample coordinates.

    The result maps a column ``(i, j, k, 1)`` to ``(x_k, y_j, z_i, 1)``: normalised with
    ``align_corners=True`` and reversed into grid_sample's ``(k, j, i)`` channel order.
    """
    m = torch.zeros(4, 4, dtype=dtype, device=device)
    for axis, n in enumerate(shape):
        row = 2 - axis  # (i, j, k) -> (k, j, i)
        scale = 2.0 / (n - 1) if n > 1 else 0.0
        m[row, axis] = scale
        m[row, 3] = -1.0 if n > 1 else 0.0
    m[3, 3] = 1.0
    return m


def normalized_to_voxel(shape: tuple[int, ...]) -> np.ndarray:
    """The 4x4 float64 inverse of :func:`voxel_to_normalized`: ``(x_k, y_j, z_i, 1)`` → ``(i, j, k, 1)``.

    An axis of one voxel maps every normalised value to voxel 0 (grid_sample's coordinate there is 0).
    """
    m = np.zeros((4, 4))
    for axis, n in enumerate(shape):
        half = (n - 1) / 2.0
        m[axis, 2 - axis] = half
        m[axis, 3] = half
    m[3, 3] = 1.0
    return m


def voxel_displacement_to_normalized(disp: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Convert a voxel-unit displacement ``(N, 3, I, J, K)`` into a grid_sample offset ``(N, I, J, K, 3)``.

    Channel order becomes ``(k, j, i)`` and units the ``align_corners=True`` normalised ones of a grid of
    ``shape`` (default: ``disp``'s own; another when ``disp`` holds some of that grid's rows).
    """
    scale = _normalizing_scale(tuple(shape or disp.shape[2:]), disp.dtype, disp.device)
    # flipped and scaled in one new tensor (a 1 mm field is 87 MB per copy)
    return (disp.flip(1) * scale).permute(0, 2, 3, 4, 1)


@functools.lru_cache(maxsize=32)
def _normalizing_scale(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(1, 3, 1, 1, 1)`` factors from voxels to normalised units along ``(k, j, i)`` for a grid of ``shape``.

    Made once per grid: a tensor made from host numbers is a copy to the device, which on a GPU waits
    for the device (and cannot be recorded in a CUDA graph) — the optimiser calls this several times
    per iteration.
    """
    values = [2.0 / (n - 1) if n > 1 else 0.0 for n in reversed(shape)]
    return torch.tensor(values, dtype=dtype, device=device).view(1, 3, 1, 1, 1)


@functools.lru_cache(maxsize=64)
def _identity_axes(shape: tuple[int, ...], device: torch.device | None,
                   dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Normalised coordinates of the voxel centres along each axis ``(i, j, k)`` of a grid of ``shape``
    (``align_corners=True``: −1 to 1; 0 on a one-voxel axis). Made once per grid (a few KB)."""
    return tuple(torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1
                 else torch.zeros(1, device=device, dtype=dtype) for n in shape)


def identity_grid(shape: tuple[int, ...], device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """grid_sample coordinates ``(1, I, J, K, 3)`` of the voxel centres of a grid of ``shape``."""
    gi, gj, gk = torch.meshgrid(*_identity_axes(tuple(shape), device, dtype), indexing="ij")
    return torch.stack((gk, gj, gi), dim=-1).unsqueeze(0)


def add_identity_(offset: torch.Tensor, shape: tuple[int, ...] | None = None, start: int = 0) -> torch.Tensor:
    """Add :func:`identity_grid` to a grid_sample offset ``(N, I, J, K, 3)`` in place and return it.

    The same values as ``offset + identity_grid(...)``, without making the grid: each channel gets its axis's
    coordinates broadcast (a 1 mm brain's grid is 87 MB). With ``shape``, ``offset`` holds rows
    ``start, start + 1, …`` (along ``i``) of a grid of that shape.
    """
    gi, gj, gk = _identity_axes(tuple(shape or offset.shape[1:4]), offset.device, offset.dtype)
    offset[..., 0].add_(gk)
    offset[..., 1].add_(gj[:, None])
    offset[..., 2].add_(gi[start:start + offset.shape[1], None, None])
    return offset
