"""Transform files read back: an svreg output folder, ``transform.h5`` or an ITK displacement NIfTI.

A :class:`Transform` maps world RAS millimetre points in the resampling (pull) direction of
:mod:`svreg_core.conventions`: read from an output folder, ``transform_points`` maps fixed-world
points to moving-world points (as ITK's ``TransformPoint`` does with the same file), and an image
is warped as ``out(x) = image(T(x))``. Files hold **LPS** vectors (see :mod:`svreg_core.outputs.itk`);
they are converted to RAS on reading.

A displacement field is interpolated trilinearly, and, as in ITK, it is taken as zero more than half a
voxel beyond its grid (within that half voxel the border vectors continue). The fields of an output folder hold
the registration's affine ``A`` too (``T(x) = A(x + u(x))``): beyond their grid they map by ``A`` (``A⁻¹`` for the
inverse), as ``transform.h5`` (``u`` zero beyond its grid, then ``A``) does in ITK, not by the identity.
"""
from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

import nibabel as nib
import numpy as np
import torch
from nibabel.spatialimages import SpatialImage

from svreg_core.conventions import map_points, ras_affine_from_itk, ras_lps_matrix, ras_to_lps_vectors
from svreg_core.errors import InputError
from svreg_core.image.grid import Grid
from svreg_core.image.io import affine_in_mm, check_orientation, header_fixes_warned, xform_codes
from svreg_core.image.resample import sample_at_points

if TYPE_CHECKING:
    import SimpleITK as sitk

#: Fixed-point iterations and tolerance (fraction of the field's smallest voxel size) of :meth:`Transform.inverse`.
INVERSE_ITERATIONS = 50
INVERSE_TOLERANCE = 0.01

@dataclass(frozen=True, eq=False)
class DisplacementField:
    """``x -> x + u(x)`` with ``u`` ``(I, J, K, 3)`` RAS mm on ``grid`` (trilinear; zero beyond it, as in ITK).

    Attributes:
        beyond: a 4x4 RAS->RAS matrix mapping the points beyond the grid (more than half a voxel beyond its outer
            voxel centres) instead of the identity: the affine ``A`` an output folder's field holds
            (``u(x) = A(x + w(x)) − x``), so that it maps like ``transform.h5`` there; ``None``: the identity.
    """

    displacement: np.ndarray
    grid: Grid
    beyond: np.ndarray | None = None

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Map RAS mm points ``(..., 3)``; returns float64 points of the same shape."""
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        field = torch.as_tensor(np.ascontiguousarray(self.displacement, dtype=np.float32)).permute(3, 0, 1, 2)[None]
        u = sample_at_points(field, self.grid, torch.as_tensor(flat)[None, :, None, None, :],
                             padding_mode="border")[0, :, :, 0, 0].T.double().numpy()
        inside = self.grid.contains(flat)
        out = flat + u * inside[:, None]
        if self.beyond is not None and not inside.all():
            out[~inside] = map_points(self.beyond, flat[~inside])
        return out.reshape(pts.shape)

    def split(self) -> tuple[Step, ...]:
        """The same mapping as steps without :attr:`beyond`: the field itself when it has none, else a field
        ``w(x) = B⁻¹(x + u(x)) − x`` (float32, RAS mm, on the grid; zero beyond it) followed by ``B``, so
        ``x + u(x) = B(x + w(x))`` on the grid (within half a voxel beyond it, where the border vectors continue,
        the two differ by ``(B − I)`` times the distance)."""
        if self.beyond is None:
            return (self,)
        inverse = np.linalg.inv(self.beyond)
        w = np.empty(self.displacement.shape, np.float32)
        for start, stop, slab in self.grid.slabs():
            x = slab.world_points()
            w[start:stop] = map_points(inverse, x + self.displacement[start:stop]) - x
        return DisplacementField(w, self.grid), self.beyond


Step = Union[np.ndarray, DisplacementField, "_InverseField"]


@dataclass(frozen=True, eq=False)
class Transform:
    """A chain of steps applied to a point in order: 4x4 RAS->RAS matrices and displacement fields.

    Attributes:
        steps: the mapping ``T = s_n ∘ … ∘ s_1`` (``steps[0]`` acts first).
        grid: the grid the transform was defined on (the fixed grid for svreg's forward outputs, the
            moving grid for the inverse), the default reference grid of :func:`svreg_core.apply`;
            ``None`` for a purely linear transform.
        inverse_grid: the grid of the other side, when known (the moving grid of an output folder).
    """

    steps: tuple[Step, ...]
    grid: Grid | None = None
    inverse_grid: Grid | None = None

    @property
    def field_voxels(self) -> int:
        """Voxels of the displacement fields among the steps (an inverted field's own; 0 for a linear transform)."""
        fields = [s.field if isinstance(s, _InverseField) else s for s in self.steps if not isinstance(s, np.ndarray)]
        return sum(int(np.prod(f.grid.shape)) for f in fields)

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map RAS mm points ``(..., 3)`` through every step; returns float64 points."""
        out = np.asarray(points, dtype=np.float64)
        for step in self.steps:
            out = map_points(step, out) if isinstance(step, np.ndarray) else step(out)
        return out

    def map_grid(self, grid: Grid) -> np.ndarray:
        """``T(x)`` ``(I, J, K, 3)`` RAS mm (float64) at every voxel centre ``x`` of ``grid``.

        A first step that is a displacement field on ``grid`` itself (an svreg output folder applied on its own
        fixed grid) is read at its voxels instead of interpolated there: the same points up to the float32
        sampling coordinates' rounding (1 mm brain: 0.3 s instead of 1.8 s).
        """
        points = grid.world_points()
        steps = self.steps
        first = steps[0] if steps else None
        if isinstance(first, DisplacementField) and first.grid.same_as(grid):
            points += first.displacement
            steps = steps[1:]
        return Transform(steps).transform_points(points)

    def inverse(self) -> Transform:
        """The inverse mapping: matrices inverted exactly, displacement fields numerically.

        A field step ``y = x + u(x)`` is inverted per point by the fixed-point iteration
        ``x <- y - u(x)`` (converges where the mapping is smooth and does not fold); a point that has not
        converged to :data:`INVERSE_TOLERANCE` of a voxel raises :class:`InputError`, unless it lies along the
        field's edge (:class:`_InverseField`: it takes its best iterate, with a warning).
        """
        # a field mapping by a matrix beyond its grid is inverted as that field zero beyond, then the matrix
        split = [part for s in self.steps for part in (s.split() if isinstance(s, DisplacementField) else (s,))]
        steps = tuple(np.linalg.inv(s) if isinstance(s, np.ndarray) else
                      s.field if isinstance(s, _InverseField) else _InverseField(s) for s in reversed(split))
        return Transform(steps, grid=self.inverse_grid, inverse_grid=self.grid)


class _InverseField:
    """The inverse of a :class:`DisplacementField`, evaluated per point by fixed-point iteration.

    Within :meth:`edge_band` of the field's edge the mapping is discontinuous (the field drops to zero half a voxel
    beyond its grid) and some points have no exact inverse: they take their best iterate (the identity where the
    field never reaches them, as ITK's zero beyond the grid), counted in one warning. A point farther inside that
    does not converge raises :class:`InputError` (the field folds there).
    """

    def __init__(self, field: DisplacementField) -> None:
        self.field = field

    @functools.cached_property
    def edge_band(self) -> float:
        """Width (mm) of the band along the field's edge where the inverse may not exist: the largest vector of
        its outer layer of voxels (the jump at the edge) and one voxel."""
        u = np.asarray(self.field.displacement)
        layer = max(float(np.linalg.norm(face, axis=-1).max(initial=0.0))
                    for axis in range(3) for face in (np.take(u, 0, axis), np.take(u, -1, axis)))
        return layer + float(self.field.grid.spacing.max())

    def _near_edge(self, points: np.ndarray) -> np.ndarray:
        """Whether each RAS point ``(N, 3)`` lies within :attr:`edge_band` of the field's edge (or beyond it)."""
        grid = self.field.grid
        voxel = grid.to_voxel(points)
        inside_mm = np.minimum(voxel + 0.5, np.asarray(grid.shape) - 0.5 - voxel) * grid.spacing
        return inside_mm.min(axis=-1) < self.edge_band

    def __call__(self, points: np.ndarray) -> np.ndarray:
        y = np.asarray(points, dtype=np.float64)
        flat = y.reshape(-1, 3)
        x = flat.copy()
        best, best_residual = x.copy(), np.full(len(flat), np.inf)
        tolerance = INVERSE_TOLERANCE * float(self.field.grid.spacing.min())
        for _ in range(INVERSE_ITERATIONS):
            error = self.field(x) - flat
            residual = np.abs(error).max(axis=-1, initial=0.0)
            better = residual < best_residual
            best[better], best_residual[better] = x[better], residual[better]
            if not (best_residual > tolerance).any():
                break
            x = x - error
        failed = best_residual > tolerance
        if failed.any():
            edge = self._near_edge(flat[failed]) | self._near_edge(best[failed])
            if not edge.all():
                worst = float(best_residual[failed][~edge].max())
                raise InputError(f"the displacement field could not be inverted numerically (residual {worst:.3g} "
                                 f"mm after {INVERSE_ITERATIONS} iterations; it may fold); use an inverse "
                                 "displacement file.")
            warnings.warn(f"{int(failed.sum())} of {len(flat)} points near the edge of the displacement field have no "
                          f"exact inverse there (up to {float(best_residual.max()):.3g} mm off); they take the "
                          "closest point found.", stacklevel=2)
        return best.reshape(y.shape)


def read_displacement(path: str | Path) -> DisplacementField:
    """A displacement NIfTI in the ITK/ANTs layout: ``(I, J, K, 1, 3)`` or ``(I, J, K, 3)``, LPS mm vectors; its grid
    keeps the file's space (:func:`~svreg_core.image.io.xform_codes`), which images resampled onto it get."""
    path = Path(path)
    try:
        with header_fixes_warned(path.name):
            nii = nib.load(str(path))
        if not isinstance(nii, SpatialImage):  # e.g. a GIFTI surface: no voxel array or affine
            raise TypeError(f"{type(nii).__name__} is not a volume")
        data = np.asarray(nii.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read {path} as a displacement field ({exc.__class__.__name__}).") from None
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        raise InputError(f"{path.name} has shape {data.shape}; a displacement field is (I, J, K, 1, 3) or "
                         "(I, J, K, 3) with LPS vectors in mm (the ITK/ANTs layout).")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path.name} contains NaN or infinite displacement vectors.")
    # placed as svreg places an image, with its refusals and warnings where ITK (ANTs, Slicer) would place it
    # elsewhere: sform and qform disagreeing, negative voxel sizes, no orientation stored
    check_orientation(nii, f"displacement field {path.name}")
    # a grid in metres or microns (NIfTI xyzt_units) is converted to mm as ITK converts it (with a warning); the
    # vectors stay as they are, millimetres for ITK whatever the header says
    affine = affine_in_mm(nii, f"displacement field {path.name}")
    return DisplacementField(ras_to_lps_vectors(data), Grid(data.shape[:3], affine, xform_codes(nii)))


def _field_from_sitk(image: sitk.Image) -> DisplacementField:
    """A SimpleITK vector image (LPS geometry and vectors) as a RAS :class:`DisplacementField`."""
    import SimpleITK as sitk

    lps = sitk.GetArrayFromImage(image).transpose(2, 1, 0, 3)
    affine = ras_affine_from_itk(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    return DisplacementField(ras_to_lps_vectors(lps).astype(np.float32), Grid(lps.shape[:3], affine))


def _linear_from_sitk(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 RAS->RAS matrix of a linear ITK transform, found from the images of four points."""
    corners = np.array([[0.0, 0, 0], [100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]])
    lps_out = np.array([transform.TransformPoint(tuple(p)) for p in corners])
    lps = np.eye(4)
    lps[:3, 3] = lps_out[0]
    lps[:3, :3] = (lps_out[1:] - lps_out[0]).T / 100.0
    return ras_lps_matrix(lps)


def read_itk_transform(path: str | Path) -> Transform:
    """An ITK transform file (``.h5``/``.tfm``/``.txt``): linear transforms and displacement fields, composed.

    ITK applies a composite transform's last-added component first; the returned steps are in that
    order. Other transform types (B-spline, …) raise :class:`InputError`. Reads with SimpleITK
    (imported here: writing svreg's outputs does not need it).
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        # opened with h5py first, which keeps HDF5's error stack quiet: ITK's HDF5 prints dozens of lines to stderr
        # for a truncated file (an interrupted copy or download) before SimpleITK raises
        try:
            with h5py.File(path, "r"):
                pass
        except OSError:
            raise InputError(f"cannot read {path} as an ITK transform file: it is not a complete HDF5 file "
                             "(truncated or damaged).") from None
    try:
        itk = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"cannot read {path} as an ITK transform file.") from None
    steps = _steps_from_sitk(itk, path.name)
    grid = next((s.grid for s in steps if isinstance(s, DisplacementField)), None)
    return Transform(tuple(steps), grid=grid)


def _steps_from_sitk(transform: sitk.Transform, name: str) -> list[Step]:
    """The steps of a SimpleITK transform in the order they act: a linear one (whatever its class, e.g. ANTs'
    ``MatrixOffsetTransformBase``, which SimpleITK returns inside a composite) as one matrix, a displacement field
    as a field, a composite's components last-added first."""
    import SimpleITK as sitk

    if transform.IsLinear():
        return [_linear_from_sitk(transform)]
    kind = transform.GetName()
    if kind == "DisplacementFieldTransform":
        return [_field_from_sitk(sitk.DisplacementFieldTransform(transform).GetDisplacementField())]
    if kind == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        parts = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
        return [step for part in reversed(parts) for step in _steps_from_sitk(part, name)]
    raise InputError(f"{name} holds an ITK {kind}; svreg applies linear transforms and displacement fields only.")


def load_transform(path: str | Path, *, inverse: bool = False) -> Transform:
    """Read a transform: an svreg output folder, an ITK transform file, or a displacement NIfTI.

    Args:
        path: an output folder of ``svreg register`` (its ``displacement.nii.gz``, else ``transform.h5``;
            with ``inverse`` its ``inverse_displacement.nii.gz``, which may be its only one), a
            ``.h5``/``.tfm``/``.txt`` ITK transform, or a ``.nii``/``.nii.gz`` displacement in the ITK/ANTs layout.
        inverse: return the inverse mapping (moving-world points to fixed-world points; warping a
            fixed-space image onto the moving grid). Without the folder's inverse file it is computed
            numerically (:meth:`Transform.inverse`).

    Raises:
        InputError: a missing or unreadable file, or a folder without transform files.
    """
    path = Path(path)
    if path.is_dir():
        forward = next((path / n for n in ("displacement.nii.gz", "transform.h5") if (path / n).is_file()), None)
        inverse_file = path / "inverse_displacement.nii.gz"
        affine = _folder_affine(path)  # what the fields map by beyond their grids
        back_beyond = None if affine is None else np.linalg.inv(affine)
        if forward is None and inverse and inverse_file.is_file():  # kept by svreg register --outputs inverse
            back = replace(read_displacement(inverse_file), beyond=back_beyond)
            return Transform((back,), grid=back.grid)
        if forward is None:
            raise InputError(f"{path} holds neither displacement.nii.gz nor transform.h5"
                             f"{' (nor inverse_displacement.nii.gz)' if inverse else ''}; name an svreg output "
                             "folder or a transform file.")
        tx = _read_file(forward)
        if forward.name == "displacement.nii.gz":  # transform.h5 holds the affine as a step of its own
            tx = Transform(tuple(replace(s, beyond=affine) for s in tx.steps if isinstance(s, DisplacementField)),
                           grid=tx.grid)
        if not inverse_file.is_file():
            return tx.inverse() if inverse else tx
        back = replace(read_displacement(inverse_file), beyond=back_beyond)
        if inverse:
            return Transform((back,), grid=back.grid, inverse_grid=tx.grid)
        return Transform(tx.steps, grid=tx.grid, inverse_grid=back.grid)
    if not path.is_file():
        raise InputError(f"transform not found: {path}")
    tx = _read_file(path)
    return tx.inverse() if inverse else tx


def _folder_affine(folder: Path) -> np.ndarray | None:
    """The affine ``A`` (4x4 RAS->RAS) of the registration whose outputs ``folder`` holds, from its report.json's
    ``affine_ras``; ``None`` when it is the identity, or the report is missing, unreadable or has no valid one."""
    try:
        matrix = np.asarray(json.loads((folder / "report.json").read_text(encoding="utf-8"))["affine_ras"],
                            dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or not np.array_equal(matrix[3], [0, 0, 0, 1]) \
            or abs(np.linalg.det(matrix[:3, :3])) < 1e-6 or np.array_equal(matrix, np.eye(4)):
        return None
    return matrix


#: File endings of ITK transform files (lower case): HDF5, text and ANTs' binary ``.mat``.
ITK_TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def read_linear_transform(path: str | Path) -> np.ndarray:
    """The 4x4 RAS->RAS matrix (fixed world -> moving world, the resampling direction ITK files hold) of a linear
    transform file: an ITK ``.tfm``/``.txt``/``.h5``/``.mat`` (Slicer's and ANTs' rigid and affine files), its
    components composed. :class:`InputError` for a missing or unreadable file or one with a displacement field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"initial transform not found: {path}")
    if path.suffix.lower() not in ITK_TRANSFORM_SUFFIXES:
        raise InputError(f"{path.name}: an initial transform is a linear ITK transform file "
                         f"({', '.join(ITK_TRANSFORM_SUFFIXES)}), e.g. a rigid or affine transform saved by Slicer "
                         "or ANTs.")
    matrix = np.eye(4)
    for step in _read_file(path).steps:  # steps[0] acts first
        if not isinstance(step, np.ndarray):
            raise InputError(f"{path.name} holds a displacement field; an initial transform must be linear (rigid "
                             "or affine).")
        matrix = step @ matrix
    return matrix


def _read_file(path: Path) -> Transform:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        field = read_displacement(path)
        return Transform((field,), grid=field.grid)
    if path.suffix.lower() in ITK_TRANSFORM_SUFFIXES:
        return read_itk_transform(path)
    raise InputError(f"{path.name}: unknown transform file type; use an svreg output folder, an ITK .h5/.tfm "
                     "transform or a displacement .nii.gz.")
