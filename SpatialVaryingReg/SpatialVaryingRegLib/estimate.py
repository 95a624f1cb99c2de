"""A rough compute-time estimate on the CPU, shown before a registration starts (MRML only, no torch).

The pairwise optimiser's cost grows with the voxels of each pyramid level's working grid (the fixed
volume's field of view at that level's isotropic spacing, mm) times that level's iterations; the affine
stage, the composition and the outputs grow with the fixed volume's own voxels. The constants were
measured with the engine (``svreg register``, 2 CPU cores shared with other work) on a 182x218x182
1 mm brain MRI pair, 6/3 mm pyramid with 80/60 iterations: 172 s of optimisation over 19.1 million
voxel-iterations, 86 s of affine stage, composition and outputs for 7.2 million fixed voxels. A
machine's speed and thread count shift the real time, so it is an *estimate* and always labelled one.
"""
from __future__ import annotations

import numpy as np

from . import geometry

#: Seconds per working-grid voxel and optimiser iteration (measured, see the module docstring).
CPU_SECONDS_PER_VOXEL_ITERATION = 9.0e-6
#: Seconds per fixed-volume voxel of affine stage, composition and outputs (measured, as above).
CPU_SECONDS_PER_FIXED_VOXEL = 1.2e-5
#: Seconds of engine start-up (Python, torch import).
CPU_OVERHEAD_S = 5.0
#: The engine's default pyramid (``svreg_core.optim.parameters.RegistrationParameters``), mm and iterations.
DEFAULT_LEVEL_SPACINGS = (4.0, 2.0)
DEFAULT_ITERATIONS = (80, 60)


def working_grid_voxels(fixed_node, spacing_mm: float) -> int:
    """Voxels of the fixed volume's field of view resampled at an isotropic ``spacing_mm``."""
    dims = np.array(fixed_node.GetImageData().GetDimensions(), dtype=np.float64)
    spacing, _, _ = geometry.split_affine(geometry.ijk_to_ras(fixed_node))
    extent = dims * spacing
    return int(np.prod(np.maximum(1.0, np.ceil(extent / float(spacing_mm)))))


def cpu_seconds(fixed_node, level_spacings=None, iterations=None, *, refine_steps: int | None = None) -> float:
    """Estimated CPU seconds of a registration onto ``fixed_node``.

    ``level_spacings``/``iterations``: the pyramid (default: the engine's). With ``refine_steps`` (a
    learned model) every level runs that many steps (the network's own pass is cheap).
    """
    spacings = list(level_spacings or DEFAULT_LEVEL_SPACINGS)
    steps = list(iterations or DEFAULT_ITERATIONS)
    if refine_steps is not None:
        steps = [int(refine_steps)] * len(spacings)
    work = sum(working_grid_voxels(fixed_node, s) * n for s, n in zip(spacings, steps))
    fixed_voxels = int(np.prod(fixed_node.GetImageData().GetDimensions()))
    return CPU_OVERHEAD_S + CPU_SECONDS_PER_VOXEL_ITERATION * work + CPU_SECONDS_PER_FIXED_VOXEL * fixed_voxels


def text(seconds: float) -> str:
    """``"about 3 min on the CPU (an estimate)"``."""
    if seconds < 90:
        amount = f"{max(10, int(round(seconds / 10.0)) * 10)} s"
    else:
        amount = f"{int(round(seconds / 60.0))} min"
    return f"about {amount} on the CPU (an estimate from the volume size; the real time depends on the machine)"
