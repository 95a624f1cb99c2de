"""A rough compute-time estimate on the CPU, shown before a registration starts (MRML only, no torch).

The pairwise optimiser's cost grows with the voxels of each pyramid level's working grid (the fixed
volume's field of view at that level's isotropic spacing, never finer than the volume's own voxels, as
the engine's ``RegistrationParameters.working_levels``) times that level's iterations; the affine stage
with the voxels of the field of view at 4 mm; composing the outputs and writing them with the fixed
volume's own voxels. MIND (the CT presets) costs more per voxel than LNCC.

The constants were measured on 2026-11-28 with ``svreg register`` (the whole child process, 2 threads of
this project's 2-core machine) on four pairs: the 1 mm brain pair (182 x 218 x 182, ``brain-mri``: 29.4 s;
the estimate 29.4 s), chest CT 117 x 91 x 48 at 2.5 x 2.5 x 5 mm (``lung-ct``: 34.8 s; 33.0 s), CT
72 x 76 x 98 at 2.5 mm (``ct``: 25.9 s; 27.9 s) and a 40 x 48 x 40 2 mm pair (6.1 s; 5.1 s); the learned
model with 50 refinement steps on the brain pair took 31.3 s (estimate 26 s). The constants of
2026-11-24 (a 30 times slower engine) had estimated 11 minutes for the brain pair. A machine's speed and
thread count shift the real time, so it is an *estimate* and always labelled one.
"""
from __future__ import annotations

import numpy as np

from . import geometry

#: Seconds the engine's child process spends on start-up (Python, torch import), the affine stage's and the
#: outputs' fixed parts (measured, see the module docstring).
CPU_OVERHEAD_S = 3.2
#: Seconds per working-grid voxel and optimiser iteration, by similarity (measured: LNCC on the brain pair,
#: MIND on the two CT pairs; MSE is taken as LNCC).
CPU_SECONDS_PER_VOXEL_ITERATION = {"lncc": 3.1e-7, "mse": 3.1e-7, "mind": 5.5e-7}
#: Seconds of affine stage per voxel of the fixed field of view at :data:`AFFINE_SPACING_MM`, by similarity.
CPU_AFFINE_SECONDS_PER_VOXEL = {"lncc": 1.6e-5, "mse": 1.6e-5, "mind": 2.8e-5}
AFFINE_SPACING_MM = 4.0
#: Seconds per fixed-volume voxel of composing and writing the outputs.
CPU_SECONDS_PER_FIXED_VOXEL = 6.5e-7
#: The engine's presets (``svreg_core.optim.parameters.PRESETS``): pyramid spacings (mm), iterations per level
#: and similarity; a test checks them against the engine. A preset file estimates as ``brain-mri``.
PRESET_PYRAMIDS = {
    "brain-mri": ((4.0, 2.0), (80, 60), "lncc"),
    "cardiac-mri": ((4.0, 2.0), (80, 60), "lncc"),
    "ct": ((5.0, 2.0), (80, 60), "mind"),
    "lung-ct": ((5.0, 2.0), (80, 60), "mind"),
}


def _block(fixed_node, box) -> np.ndarray:
    """Voxels along each axis of the fixed volume's block the engine registers: the whole volume, or (``box``: two
    opposite world RAS corners, mm, as ``--crop-fixed``) the voxels whose centres lie in the box where the user
    sees the volume, parent transforms applied (the engine's ``Grid.box_voxels`` of the exported volume; at least
    2 per axis)."""
    dims = np.array(fixed_node.GetImageData().GetDimensions(), dtype=np.float64)
    if box is None:
        return dims
    low, high = np.minimum(box[:3], box[3:]), np.maximum(box[:3], box[3:])
    corners = np.array([[(low, high)[c][a] for a, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    affine = geometry.world_ijk_to_ras(fixed_node)
    ijk = (corners - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    start = np.maximum(np.ceil(ijk.min(0) - 1e-6), 0)
    stop = np.minimum(np.floor(ijk.max(0) + 1e-6) + 1, dims)
    return np.maximum(stop - start, 2)


def _field_of_view(fixed_node, box=None) -> tuple[np.ndarray, float]:
    """The extent of the registered voxel centres (:func:`_block`) along the volume's axes (mm) and its finest voxel
    size (mm)."""
    spacing, _, _ = geometry.split_affine(geometry.world_ijk_to_ras(fixed_node))
    return (_block(fixed_node, box) - 1.0) * spacing, float(spacing.min())


def working_grid_voxels(fixed_node, spacing_mm: float, box=None) -> int:
    """Voxels of the fixed volume's field of view (in ``box`` when given, :func:`_block`) resampled at an isotropic
    ``spacing_mm`` (at least 2 per axis; the engine's ``Grid.resampled``)."""
    extent, _ = _field_of_view(fixed_node, box)
    return int(np.prod(np.maximum(np.floor(extent / float(spacing_mm) + 1e-6) + 1, 2)))


#: The engine's ``optim.affine.AFFINE_REFERENCE_EXTENT_MM``: the affine pyramid's sizes are for a field of view (the
#: median of the three extents) at least this large; a smaller one scales them (:func:`affine_scale`).
AFFINE_REFERENCE_EXTENT_MM = 96.0


def affine_scale(fixed_node, box=None) -> float:
    """The engine's ``optim.affine.affine_scale`` of the fixed block it registers (:func:`_block`: the volume, or the
    part in the crop ``box``): ``min(1, median extent / 96 mm)``."""
    spacing, _, _ = geometry.split_affine(geometry.world_ijk_to_ras(fixed_node))
    return min(1.0, float(np.median(_block(fixed_node, box) * spacing)) / AFFINE_REFERENCE_EXTENT_MM)


def working_levels(level_spacings, iterations, finest_mm: float) -> list[tuple[float, int]]:
    """``(spacing, iterations)`` per level as the engine runs them: no level finer than the volume's finest
    voxel ``finest_mm``, and levels that then coincide merged with the larger iteration count."""
    levels: list[tuple[float, int]] = []
    for spacing, steps in zip(level_spacings, iterations):
        spacing = max(float(spacing), finest_mm)
        if levels and np.isclose(levels[-1][0], spacing):
            steps = max(int(steps), levels.pop()[1])
        levels.append((spacing, int(steps)))
    return levels


def cpu_seconds(fixed_node, preset: str = "brain-mri", overrides: dict | None = None, *,
                refine_steps: int | None = None, box=None) -> float:
    """Estimated CPU seconds of a registration onto ``fixed_node``.

    ``preset`` and ``overrides`` (``level_spacings``, ``iterations``, ``similarity``, ``affine``) give the pyramid,
    the similarity and whether the affine stage runs. With ``refine_steps`` (a learned model) every level runs
    that many steps (the network's own pass is cheap). ``box``: the crop box (two opposite RAS corners, mm, of the
    fixed ROI): only the fixed voxels in it are registered.
    """
    o = overrides or {}
    spacings, steps, similarity = PRESET_PYRAMIDS.get(preset, PRESET_PYRAMIDS["brain-mri"])
    spacings, steps = list(o.get("level_spacings") or spacings), list(o.get("iterations") or steps)
    similarity = o.get("similarity") or similarity
    if refine_steps is not None:
        steps = [int(refine_steps)] * len(spacings)
    _, finest = _field_of_view(fixed_node)
    work = sum(working_grid_voxels(fixed_node, s, box) * n for s, n in working_levels(spacings, steps, finest))
    affine = (working_grid_voxels(fixed_node, affine_scale(fixed_node, box) * AFFINE_SPACING_MM, box)
              if o.get("affine", True) else 0)
    fixed_voxels = int(np.prod(_block(fixed_node, box)))
    if similarity not in CPU_SECONDS_PER_VOXEL_ITERATION:
        similarity = "lncc"
    return (CPU_OVERHEAD_S + CPU_SECONDS_PER_VOXEL_ITERATION[similarity] * work
            + CPU_AFFINE_SECONDS_PER_VOXEL[similarity] * affine + CPU_SECONDS_PER_FIXED_VOXEL * fixed_voxels)


def text(seconds: float) -> str:
    """``"about 30 s on the CPU (an estimate …)"``."""
    if seconds < 90:
        amount = f"{max(10, int(round(seconds / 10.0)) * 10)} s"
    else:
        amount = f"{int(round(seconds / 60.0))} min"
    return f"about {amount} on the CPU (an estimate from the volume size; the real time depends on the machine)"
