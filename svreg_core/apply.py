"""Apply a saved transform to an image, a label map or points (what ``svreg apply`` runs).

Directions follow :mod:`svreg_core.conventions`. With the forward transform of an output folder an
image of the moving space is resampled onto the fixed grid (``out(x) = image(T(x))``, the
``warped.nii.gz`` of the run), and points are mapped from the fixed world to the moving world
(``T(x)``, what ITK's ``TransformPoint`` does with the same file). So to carry landmarks of the moving
image onto the fixed image, or to warp a fixed-space image onto the moving grid, use ``inverse``.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from svreg_core.atomic import replaced_when_complete
from svreg_core.conventions import pad_thin_axes, ras_to_lps_vectors
from svreg_core.errors import InputError
from svreg_core.image.grid import Grid
from svreg_core.image.image import Image
from svreg_core.image.resample import world_to_source_normalized
from svreg_core.image.sampling import LABEL_INTERPOLATIONS, grid_sample, sample_labels
from svreg_core.memory import available_memory_bytes, check_apply_memory, physical_memory_bytes
from svreg_core.outputs.read import Transform
from svreg_core.text_input import read_text

#: How :func:`apply_to_image` resamples images (label maps: :data:`~svreg_core.image.sampling.LABEL_INTERPOLATIONS`).
IMAGE_INTERPOLATIONS = ("linear", "bspline")
#: Point file suffixes :func:`read_points` understands.
POINT_SUFFIXES = (".csv", ".fcsv", ".mrk.json")


def _reference(transform: Transform, reference: Grid | None, source: Image) -> Grid:
    """The output grid (``reference``, else the transform's own), after checking that resampling ``source`` onto it
    fits in memory (:func:`~svreg_core.memory.check_apply_memory`: refused when it cannot, a warning when it may
    swap)."""
    if reference is None and transform.grid is None:
        raise InputError("this transform has no grid of its own (a linear transform, or an inverse computed "
                         "numerically); give a reference image.")
    grid = reference if reference is not None else transform.grid
    assert grid is not None
    note = check_apply_memory(int(np.prod(grid.shape)), transform.field_voxels, int(np.prod(source.shape)),
                              physical=physical_memory_bytes(), available=available_memory_bytes())
    if note:
        warnings.warn(note, stacklevel=3)
    return grid


def _check_coverage(points: np.ndarray, source: Grid, what: str) -> None:
    """Warn when none of the mapped output voxel centres ``points`` ``(I, J, K, 3)`` (RAS mm) falls in the field of
    view of the ``source`` being resampled: the output would be all background, the usual sign of an input from the
    other side of the transform. Every 4th voxel along each axis is checked first; only when none of them falls
    inside are all voxels checked (slab by slab), so a source thinner than 4 output voxels is still found."""
    if not source.contains(points[::4, ::4, ::4]).any() and \
            not any(source.contains(points[i:i + 4]).any() for i in range(0, len(points), 4)):
        warnings.warn(f"no voxel of the output maps into the {what}'s field of view, so the output is all "
                      "background: the forward transform takes images of the moving space onto the fixed grid, "
                      "--inverse images of the fixed space onto the moving grid.", stacklevel=3)


def _thin_axes_padded(image: Image) -> Image:
    """``image`` with a slice of 0 on both sides of each axis one voxel thick, on the same world positions
    (:func:`~svreg_core.conventions.pad_thin_axes`: a single slice fades to 0 within a voxel of its plane)."""
    data, affine = pad_thin_axes(image.data, image.affine)
    return image if data is image.data else Image(data, affine, image.xform_codes)


def apply_to_image(transform: Transform, image: Image, *, reference: Grid | None = None,
                   interpolation: str = "linear") -> Image:
    """Resample ``image`` onto ``reference`` (default: the transform's grid) through ``transform``.

    Args:
        interpolation: ``"linear"`` (trilinear, fading to 0 over the voxel beyond the image, as
            :meth:`RegistrationResult.warp_image`) or ``"bspline"`` (cubic B-spline with mirror boundary;
            0 more than half a voxel beyond the image, as ITK's ``sitkBSpline``).
    """
    grid = _reference(transform, reference, image)
    points = transform.map_grid(grid)
    _check_coverage(points, image.grid, "image")
    if interpolation == "linear":
        padded = _thin_axes_padded(image)
        coords = world_to_source_normalized(torch.as_tensor(points), padded.grid).float()[None]
        out = grid_sample(torch.as_tensor(np.asarray(padded.data, dtype=np.float32))[None, None], coords)[0, 0].numpy()
    elif interpolation == "bspline":
        from scipy import ndimage  # imported here: 0.3 s, which every svreg command would pay

        voxel = image.grid.to_voxel(points)
        data = np.asarray(image.data, dtype=np.float32).astype(np.float64)
        coeffs = ndimage.spline_filter(data, order=3, mode="mirror")
        out = ndimage.map_coordinates(coeffs, voxel.reshape(-1, 3).T, order=3, mode="mirror", prefilter=False)
        out = (out.reshape(grid.shape) * image.grid.contains_voxels(voxel)).astype(np.float32)
    else:
        raise InputError(f"unknown image interpolation {interpolation!r}; use {' or '.join(IMAGE_INTERPOLATIONS)}.")
    return Image.on(grid, out)


def apply_to_labels(transform: Transform, labels: Image, *, reference: Grid | None = None,
                    interpolation: str = "linear") -> Image:
    """Resample a label map onto ``reference`` (default: the transform's grid); returns int32 labels.

    Args:
        interpolation: ``"linear"`` (each label's indicator interpolated trilinearly, then the largest:
            :func:`svreg_core.image.sampling.sample_labels`) or ``"nearest"``.
    """
    grid = _reference(transform, reference, labels)
    points = transform.map_grid(grid)
    _check_coverage(points, labels.grid, "label map")
    labels = _thin_axes_padded(labels)
    coords = world_to_source_normalized(torch.as_tensor(points), labels.grid).float()[None]
    data = np.asarray(labels.data).astype(np.int32)
    if interpolation not in LABEL_INTERPOLATIONS:
        raise InputError(f"unknown label interpolation {interpolation!r}; use {' or '.join(LABEL_INTERPOLATIONS)}.")
    return Image.on(grid, sample_labels(torch.as_tensor(data), coords, interpolation).to(torch.int32).numpy())


def apply_to_points(transform: Transform, points_ras: np.ndarray) -> np.ndarray:
    """Map RAS mm points ``(N, 3)`` through ``transform`` (fixed world -> moving world for a forward one)."""
    points = np.asarray(points_ras, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array of RAS millimetres, not {points.shape}.")
    return transform.transform_points(points)


def points_suffix(path: str | Path) -> str | None:
    """The ending (one of :data:`POINT_SUFFIXES`, which gives the format) of a point file's name, else ``None``."""
    name = str(path).lower()
    return next((suffix for suffix in POINT_SUFFIXES if name.endswith(suffix)), None)


def is_points_file(path: str | Path) -> bool:
    """Whether ``path`` names a point file (``.csv``, Slicer ``.fcsv`` or ``.mrk.json``)."""
    return points_suffix(path) is not None


def transform_points_file(transform: Transform, source: str | Path, target: str | Path, *,
                          coordinates: str = "ras") -> int:
    """Map the points of a file through ``transform`` and write them in the same format; returns their number.

    Formats: ``.csv`` with a header holding columns ``x``, ``y``, ``z`` (in ``coordinates``, ``"ras"``
    or ``"lps"``; other columns are copied), or 3D Slicer's control point table (columns ``r``, ``a``, ``s``
    in RAS or ``l``, ``p``, ``s`` in LPS, which say their frame; ``coordinates`` is not used); Slicer
    ``.fcsv`` (its ``CoordinateSystem`` line is obeyed); Slicer ``.mrk.json`` (each markup's
    ``coordinateSystem`` and ``coordinateUnits``, mm or um, are obeyed; ROI and plane markups, :data:`SHAPE_MARKUPS`,
    are refused). Every other field is copied unchanged.
    """
    outside = [0]

    def mapping(ras: np.ndarray) -> np.ndarray:
        if transform.grid is not None:
            outside[0] += int(np.count_nonzero(~transform.grid.contains(ras)))
        return apply_to_points(transform, ras)

    out, count = _rewrite_points(source, mapping, coordinates)
    if outside[0]:
        warnings.warn(f"{outside[0]} of {count} points lie outside the transform's grid, where only its linear "
                      "part (if any) moves them: are they in the right space (fixed for the forward transform, "
                      "moving with --inverse) and frame (a .csv is read as RAS unless --coordinates lps)?",
                      stacklevel=2)
    with replaced_when_complete(target) as tmp:
        tmp.write_text(out, encoding="utf-8")
    return count


def read_points(source: str | Path, *, coordinates: str = "ras") -> np.ndarray:
    """The points of a file (formats of :func:`transform_points_file`) as ``(N, 3)`` RAS mm, in file order."""
    found: list[np.ndarray] = []

    def keep(ras: np.ndarray) -> np.ndarray:
        found.append(np.asarray(ras, dtype=np.float64))
        return ras

    _rewrite_points(source, keep, coordinates)
    return np.concatenate(found) if found else np.zeros((0, 3))


Landmarks = tuple[np.ndarray, np.ndarray]


def read_landmarks(fixed: str | Path | None, moving: str | Path | None, *,
                   names: tuple[str, str] = ("a fixed", "a moving landmark file")) -> Landmarks | None:
    """Corresponding landmarks: the points of a fixed and a moving point file (:func:`read_points`, RAS mm),
    the n-th of one matching the n-th of the other; ``None`` when neither file is given.

    Args:
        names: how the messages call the two files (e.g. the command-line flags).

    Raises:
        InputError: only one file given, or files with different numbers of points, or none.
    """
    if fixed is None and moving is None:
        return None
    if fixed is None or moving is None:
        raise InputError(f"give both {names[0]} and {names[1]} (corresponding points), or neither.")
    points = read_points(fixed), read_points(moving)
    if len(points[0]) != len(points[1]) or not len(points[0]):
        raise InputError(f"the landmark files must hold the same number of corresponding points, at least one "
                         f"(found {len(points[0])} fixed and {len(points[1])} moving).")
    return points


PointMap = Callable[[np.ndarray], np.ndarray]


def _rewrite_points(source: str | Path, mapping: PointMap, coordinates: str) -> tuple[str, int]:
    """The text of the point file ``source`` with every point replaced by ``mapping(point)`` (RAS mm in and
    out, each file's own frame kept), and the number of points."""
    source = Path(source)
    if coordinates not in ("ras", "lps"):
        raise InputError(f"unknown coordinates {coordinates!r}; use ras or lps.")
    text = read_text(source, "points file")
    name = source.name.lower()
    if name.endswith(".mrk.json"):
        return _map_markups_json(mapping, text, source.name)
    if name.endswith(".fcsv"):
        return _map_fcsv(mapping, text, source.name)
    if name.endswith(".csv"):
        return _map_csv(mapping, text, source.name, lps=coordinates == "lps")
    raise InputError(f"{source.name}: unknown points format; use .csv, .fcsv or .mrk.json.")


def _map(mapping: PointMap, points: np.ndarray, lps: bool) -> np.ndarray:
    """Map points given in RAS (or LPS with ``lps``) and return them in the same frame."""
    if len(points) == 0:
        return points
    ras = ras_to_lps_vectors(points) if lps else points
    moved = mapping(ras)
    return ras_to_lps_vectors(moved) if lps else moved


def _number(value: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {value!r} is not a number.") from None
    if not np.isfinite(number):
        raise InputError(f"{where}: {value!r} is not a finite number.")
    return number


def _map_csv(mapping: PointMap, text: str, name: str, *, lps: bool) -> tuple[str, int]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise InputError(f"{name} is empty; a header with columns x, y, z is needed.")
    header = [h.strip().lower() for h in rows[0]]
    axes = next((axes for axes in ("xyz", "ras", "lps") if set(axes) <= set(header)), None)
    if axes is None:
        raise InputError(f"{name} has no x, y, z columns in its header (nor 3D Slicer's r, a, s or l, p, s; found: "
                         f"{', '.join(rows[0])}).")
    cols = [header.index(c) for c in axes]
    lps = lps if axes == "xyz" else axes == "lps"
    lines = [(n + 2, r) for n, r in enumerate(rows[1:]) if any(v.strip() for v in r)]  # (line number, fields)
    short = next((n for n, r in lines if len(r) <= max(cols)), None)
    if short is not None:
        raise InputError(f"{name} line {short}: fewer fields than the header's x, y, z columns need.")
    body = [r for _, r in lines]
    pts = np.array([[_number(r[c], f"{name} line {n}") for c in cols] for n, r in lines]).reshape(-1, 3)
    moved = _map(mapping, pts, lps)
    for r, p in zip(body, moved):
        for c, v in zip(cols, p):
            r[c] = repr(float(v))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([rows[0], *body])
    return buffer.getvalue(), len(body)


def _map_fcsv(mapping: PointMap, text: str, name: str) -> tuple[str, int]:
    lines = text.splitlines()
    lps = any(ln.startswith("#") and "coordinatesystem" in ln.lower().replace(" ", "")
              and ln.split("=")[-1].strip().upper() in ("LPS", "1") for ln in lines)
    data = [n for n, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")]
    rows = [next(csv.reader([lines[n]])) for n in data]
    if any(len(r) < 4 for r in rows):
        raise InputError(f"{name}: a point line has fewer than 4 fields (id, x, y, z, ...).")
    pts = np.array([[_number(v, f"{name} line {n + 1}") for v in r[1:4]] for n, r in zip(data, rows)]).reshape(-1, 3)
    moved = _map(mapping, pts, lps)
    for n, r, p in zip(data, rows, moved):
        r[1:4] = [repr(float(v)) for v in p]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(r)
        lines[n] = buffer.getvalue()
    return "\n".join(lines) + "\n", len(rows)


def _map_markups_json(mapping: PointMap, text: str, name: str) -> tuple[str, int]:
    try:
        doc = json.loads(text)
        markups = doc["markups"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{name} is not a Slicer markups file (no 'markups' list).") from None
    if not isinstance(markups, list) or not all(isinstance(m, dict) for m in markups):
        raise InputError(f"{name} is not a Slicer markups file (its 'markups' is not a list of markups).")
    count = 0
    for markup in markups:
        if markup.get("type") in SHAPE_MARKUPS:
            raise InputError(f"{name} holds a {markup['type']} markup, whose center, orientation and size a mapping "
                             "cannot carry point by point; svreg maps point lists, lines, angles and curves (remove "
                             "it, or save those markups apart).")
        lps = str(markup.get("coordinateSystem", "LPS")).upper() == "LPS"
        listed = markup.get("controlPoints", [])
        if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
            raise InputError(f"{name}: a markup's 'controlPoints' is not a list of points.")
        points = [p for p in listed if "position" in p]
        if not points:
            continue
        if any(not isinstance(p["position"], list) or len(p["position"]) != 3 for p in points):
            raise InputError(f"{name}: a control point's 'position' is not 3 numbers.")
        pts = np.array([[_number(v, name) for v in p["position"]] for p in points], dtype=np.float64)
        mm = _markup_unit_mm(markup.get("coordinateUnits", "mm"), name)
        in_mm = mapping if mm == 1.0 else lambda ras, mm=mm: mapping(ras * mm) / mm
        for p, q in zip(points, _map(in_mm, pts, lps)):
            p["position"] = [float(v) for v in q]
        count += len(points)
    return json.dumps(doc, indent=4) + "\n", count


#: Slicer markup types whose geometry is more than their control points (a center, orientation and size).
SHAPE_MARKUPS = ("ROI", "Plane")

#: Millimetres per unit of a Slicer markup's ``coordinateUnits`` (UCUM codes Slicer writes).
MARKUP_UNITS_MM = {"mm": 1.0, "um": 1e-3}


def _markup_unit_mm(units: object, name: str) -> float:
    """Millimetres per coordinate unit of a markup: its ``coordinateUnits``, a UCUM code (``"um"``) or a coded entry
    ``["um", "UCUM", "micrometer"]`` (:data:`MARKUP_UNITS_MM`); :class:`InputError` for another unit."""
    code = units[0] if isinstance(units, list) and units else units
    if not isinstance(code, str) or code not in MARKUP_UNITS_MM:
        raise InputError(f"{name}: a markup's coordinateUnits is {units!r}; svreg reads mm or um.")
    return MARKUP_UNITS_MM[code]

