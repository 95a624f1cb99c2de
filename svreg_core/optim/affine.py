"""Affine pre-alignment: a 12-parameter world-space affine optimised with Adam on a coarse pyramid."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from svreg_core.image.grid import Grid
from svreg_core.image.resample import antialiased, level_grid, resample, sample_at_points, target_world_points
from svreg_core.losses import get_similarity
from svreg_core.optim.adam import Adam, probe_epsilon
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress

#: Working-grid voxel sizes (mm) and Adam iterations of the affine pyramid.
AFFINE_LEVELS: tuple[tuple[float, int], ...] = ((8.0, 120), (4.0, 60))


def center_of_mass(tensor: torch.Tensor, grid: Grid) -> np.ndarray:
    """Intensity-weighted centre (RAS mm) of a non-negative ``(1, 1, I, J, K)`` image on ``grid``."""
    w = tensor.clamp_min(0).double()[0, 0]
    total = float(w.sum())
    if total <= 0:
        return grid.affine[:3, :3] @ ((np.asarray(grid.shape) - 1) / 2.0) + grid.affine[:3, 3]
    idx = [torch.arange(n, dtype=torch.float64, device=w.device) for n in grid.shape]
    ijk = np.array([float((w.sum(dim=tuple(d for d in range(3) if d != a)) * idx[a]).sum()) / total
                    for a in range(3)])
    return grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]


def _matrix(linear: torch.Tensor, translation: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """4x4 world map ``x -> (I + linear)(x - c) + c + translation``."""
    a = torch.eye(3, dtype=linear.dtype, device=linear.device) + linear
    m = torch.eye(4, dtype=linear.dtype, device=linear.device)
    m[:3, :3] = a
    m[:3, 3] = centre - a @ centre + translation
    return m


def affine_register(fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid, *,
                    similarity: str = "lncc", fixed_mask: torch.Tensor | None = None,
                    initial: np.ndarray | None = None,
                    progress: ProgressCallback = no_progress, progress_span: tuple[float, float] = (0.0, 1.0),
                    ) -> np.ndarray:
    """Find the 4x4 RAS->RAS matrix ``A`` with ``moving(A x) ≈ fixed(x)``.

    Args:
        fixed, moving: normalised intensity tensors ``(1, 1, I, J, K)`` on their grids.
        fixed_mask: optional ``(1, 1, ...)`` mask on the fixed grid restricting the similarity.
        initial: the 4x4 RAS->RAS matrix to start from (e.g. a rigid alignment made elsewhere); by default
            the translation that puts the moving image's centre of mass on the fixed one's.

    Returns:
        ``A`` mapping fixed-world points to moving-world points (resampling direction).
    """
    device = fixed.device
    centre_f = center_of_mass(fixed, fixed_grid)
    centre = torch.as_tensor(centre_f, dtype=torch.float64, device=device)
    if initial is None:
        start_linear, start_shift = np.zeros((3, 3)), center_of_mass(moving, moving_grid) - centre_f
    else:  # the parameters for which _matrix gives ``initial``
        start = np.asarray(initial, dtype=np.float64)
        start_linear, start_shift = start[:3, :3] - np.eye(3), start[:3, 3] - centre_f + start[:3, :3] @ centre_f
    linear = torch.as_tensor(start_linear, dtype=torch.float64, device=device).clone().requires_grad_(True)
    translation = torch.as_tensor(start_shift, dtype=torch.float64, device=device).clone().requires_grad_(True)
    optimizer = Adam([linear, translation], [0.01, 1.0], [0.0, 0.0])  # ε set per level below
    total = sum(n for _, n in AFFINE_LEVELS)
    done = 0
    lo, hi = progress_span
    for spacing, iterations in AFFINE_LEVELS:
        grid = level_grid(fixed_grid, spacing)
        fixed_l = resample(antialiased(fixed, fixed_grid, spacing), fixed_grid, grid)
        moving_s = antialiased(moving, moving_grid, spacing)
        mask_l = None if fixed_mask is None else (resample(fixed_mask.float(), fixed_grid, grid) > 0.5).float()
        points = target_world_points(grid, device=device, dtype=torch.float64)
        sim = get_similarity(similarity, window=5) if similarity == "lncc" else get_similarity(similarity)

        def loss_at(lin: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            m = _matrix(lin, shift, centre)
            warped_points = (points @ m[:3, :3].T + m[:3, 3]).float()
            return sim(fixed_l, sample_at_points(moving_s, moving_grid, warped_points), mask_l)

        def gradient(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            values = [v.requires_grad_(True) for v in values]
            return list(torch.autograd.grad(loss_at(*values), values))

        # ε: the gradients a 1 % scaling and a 1 mm (diagonal) shift make, one step of each
        optimizer.eps = probe_epsilon(gradient, [linear, translation],
                                      [0.01 * torch.eye(3, dtype=torch.float64, device=device),
                                       torch.full((3,), 3 ** -0.5, dtype=torch.float64, device=device)])
        for it in range(iterations):
            optimizer.zero_grad()
            loss = loss_at(linear, translation)
            loss.backward()
            optimizer.step()
            done += 1
            if it % 10 == 0 or it == iterations - 1:
                progress(ProgressEvent("affine", done, total, lo + (hi - lo) * done / total,
                                       values={"loss": loss.item()}))
    with torch.no_grad():
        return _matrix(linear, translation, centre).cpu().numpy()
