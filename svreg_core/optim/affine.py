"""Affine pre-alignment: a 12-parameter world-space affine optimised with Adam on a coarse pyramid, from the
centres of mass, a given matrix, or a rotated start found by the pose search (:mod:`svreg_core.optim.pose_search`)."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from svreg_core.conventions import map_points
from svreg_core.image.grid import Grid
from svreg_core.image.resample import antialiased, level_grid, resample, sample_at_points, target_world_points
from svreg_core.losses import get_similarity, ncc_loss
from svreg_core.optim.adam import Adam, probe_epsilon
from svreg_core.optim.pose_search import (
    POSE_FINALISTS,
    POSE_REFINE_ITERATIONS,
    choose_pose,
    promising_rotations,
    rotation_candidates,
    rotation_degrees,
)
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress

#: Working-grid voxel sizes (mm) and Adam iterations of the affine pyramid, for a field of view of at least
#: :data:`AFFINE_REFERENCE_EXTENT_MM` (see :func:`affine_scale`).
AFFINE_LEVELS: tuple[tuple[float, int], ...] = ((8.0, 120), (4.0, 60))

#: Median extent (mm) of the fixed image's field of view from which the affine pyramid keeps its human-sized
#: :data:`AFFINE_LEVELS` (12 voxels across at 8 mm); smaller fields of view shrink it (:func:`affine_scale`).
AFFINE_REFERENCE_EXTENT_MM = 96.0


def affine_scale(grid: Grid) -> float:
    """The factor (≤ 1) on the affine pyramid's level spacings and translation steps for a fixed image on ``grid``:
    its field of view (:attr:`Grid.field_of_view_mm`) over :data:`AFFINE_REFERENCE_EXTENT_MM`. A human head or
    trunk keeps 1 (8 and 4 mm); a 20 mm mouse brain gets 0.21 (1.7 and 0.8 mm) instead of an 8 mm level 2-3 voxels
    across, on which the alignment went wrong."""
    return min(1.0, grid.field_of_view_mm / AFFINE_REFERENCE_EXTENT_MM)


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


class AffineLevel:
    """One level of the affine pyramid: the fixed image (and mask) on the level's ``spacing``-mm grid, the moving
    image smoothed for sampling every ``spacing`` mm (and its mask), the level grid's RAS points and the
    similarity."""

    def __init__(self, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                 spacing: float, similarity: str, fixed_mask: torch.Tensor | None,
                 moving_mask: torch.Tensor | None = None) -> None:
        grid = level_grid(fixed_grid, spacing)
        self.fixed = resample(antialiased(fixed, fixed_grid, spacing), fixed_grid, grid)
        self.moving = antialiased(moving, moving_grid, spacing)
        self.moving_grid = moving_grid
        self.mask = None if fixed_mask is None else (resample(fixed_mask.float(), fixed_grid, grid) > 0.5).float()
        self.moving_mask = None if moving_mask is None else moving_mask.float()
        self.points = target_world_points(grid, device=fixed.device, dtype=torch.float64)
        self.similarity = get_similarity(similarity, window=5) if similarity == "lncc" else get_similarity(similarity)
        # which alignment is right: MIND compares structure across modalities; the intensity losses' judge is
        # the global NCC (an affine can match local texture in a wrong pose, :func:`ncc_loss`)
        self.pose_similarity = self.similarity if similarity == "mind" else ncc_loss

    def warped(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The moving image sampled at this level's points mapped by the 4x4 float64 ``matrix``, and where to
        compare it: the fixed mask times the moving mask sampled there (trilinear, 0 outside the moving grid, as
        the deformable stage's; not differentiated: the mask says where the images count, the alignment does not
        move it), ``None`` without masks."""
        points = map_points(matrix, self.points).float()
        warped = sample_at_points(self.moving, self.moving_grid, points)
        if self.moving_mask is None:
            return warped, self.mask
        with torch.no_grad():
            inside = sample_at_points(self.moving_mask, self.moving_grid, points.detach())
        return warped, inside if self.mask is None else self.mask * inside

    def loss(self, matrix: torch.Tensor) -> torch.Tensor:
        """The similarity loss of the alignment ``matrix`` (differentiable)."""
        return self.similarity(self.fixed, *self.warped(matrix))

    def pose_loss(self, matrix: np.ndarray) -> float:
        """How well the alignment ``matrix`` matches the images overall (lower is better; see ``__init__``)."""
        with torch.no_grad():
            m = torch.as_tensor(matrix, dtype=torch.float64, device=self.points.device)
            return float(self.pose_similarity(self.fixed, *self.warped(m)))


Start = tuple[np.ndarray, np.ndarray]
"""The parameters of :func:`_matrix` an optimisation starts from: ``linear`` (3x3) and ``translation`` (mm)."""


def _start(matrix: np.ndarray, centre: np.ndarray) -> Start:
    """The parameters for which :func:`_matrix` about ``centre`` gives the 4x4 ``matrix``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix[:3, :3] - np.eye(3), matrix[:3, 3] - centre + matrix[:3, :3] @ centre


def _optimise(levels: Sequence[AffineLevel], iterations: Sequence[int], centre: torch.Tensor, start: Start,
              step: Callable[[torch.Tensor], None], scale: float) -> np.ndarray:
    """Adam on the 12 parameters of :func:`_matrix` from ``start``, ``iterations[i]`` steps on ``levels[i]`` in
    turn (one optimiser throughout), translation steps of ``scale`` mm (:func:`affine_scale`); ``step`` gets each
    step's loss. Returns the 4x4 matrix."""
    device = centre.device
    linear = torch.as_tensor(start[0], dtype=torch.float64, device=device).clone().requires_grad_(True)
    translation = torch.as_tensor(start[1], dtype=torch.float64, device=device).clone().requires_grad_(True)
    optimizer = Adam([linear, translation], [0.01, scale], [0.0, 0.0])  # ε set per level below
    for level, count in zip(levels, iterations):
        def gradient(values: Sequence[torch.Tensor], level: AffineLevel = level) -> list[torch.Tensor]:
            values = [v.requires_grad_(True) for v in values]
            return list(torch.autograd.grad(level.loss(_matrix(values[0], values[1], centre)), values))

        # ε: the gradients a 1 % scaling and a ``scale`` mm (diagonal) shift make, one step of each
        optimizer.eps = probe_epsilon(gradient, [linear, translation],
                                      [0.01 * torch.eye(3, dtype=torch.float64, device=device),
                                       torch.full((3,), scale * 3 ** -0.5, dtype=torch.float64, device=device)])
        for _ in range(count):
            optimizer.zero_grad()
            loss = level.loss(_matrix(linear, translation, centre))
            loss.backward()
            optimizer.step()
            step(loss)
    with torch.no_grad():
        return _matrix(linear, translation, centre).cpu().numpy()


def affine_register(fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid, *,
                    similarity: str = "lncc", fixed_mask: torch.Tensor | None = None,
                    moving_mask: torch.Tensor | None = None, initial: np.ndarray | None = None,
                    pose_search: bool = True, on_rotated_pose: Callable[[float], None] | None = None,
                    progress: ProgressCallback = no_progress, progress_span: tuple[float, float] = (0.0, 1.0),
                    ) -> np.ndarray:
    """Find the 4x4 RAS->RAS matrix ``A`` with ``moving(A x) ≈ fixed(x)``.

    Args:
        fixed, moving: normalised intensity tensors ``(1, 1, I, J, K)`` on their grids.
        fixed_mask, moving_mask: optional ``(1, 1, ...)`` masks on the fixed / moving grids restricting the
            similarity (the moving one where the alignment maps the fixed points into it).
        initial: the 4x4 RAS->RAS matrix to start from (e.g. a rigid alignment made elsewhere); by default
            the translation that puts the moving image's centre of mass on the fixed one's (with both masks, of
            what each keeps).
        pose_search: without ``initial``, also score rotations of the moving image about the centres of mass
            (:mod:`svreg_core.optim.pose_search`) on the coarsest level; when some score better than the usual
            start, the best few are optimised briefly, the best :data:`POSE_FINALISTS` of those run the whole
            pyramid beside the usual start, and the result that matches the images best on the finest level
            (:meth:`AffineLevel.pose_loss`) is kept, the usual one when they found the same alignment. Choosing
            another pose warns. Costs 0.5–1 s on 2 CPU cores for a 1 mm brain; several times the stage's time
            when the search finds something.
        on_rotated_pose: called with the rotation (degrees) between the usual start and the pose chosen when the
            pose search chose another; by default a warning for ``svreg register`` (which names
            ``--no-pose-search``).

    Returns:
        ``A`` mapping fixed-world points to moving-world points (resampling direction).
    """
    device = fixed.device
    # with both masks, the centres of mass of what they keep (a neck, a table outside them does not count); with
    # one, of the whole images: the masked part of one image and the whole other one need not share a centre
    kept = (fixed, moving) if fixed_mask is None or moving_mask is None else (fixed * fixed_mask, moving * moving_mask)
    centre_f = center_of_mass(kept[0], fixed_grid)
    centre = torch.as_tensor(centre_f, dtype=torch.float64, device=device)
    scale = affine_scale(fixed_grid)
    levels = [AffineLevel(fixed, fixed_grid, moving, moving_grid, scale * spacing, similarity, fixed_mask,
                          moving_mask) for spacing, _ in AFFINE_LEVELS]
    iterations = [count for _, count in AFFINE_LEVELS]
    shift = center_of_mass(kept[1], moving_grid) - centre_f  # puts the centres of mass together
    starts = [(np.zeros((3, 3)), shift) if initial is None else _start(initial, centre_f)]
    rotations: list[np.ndarray] = []

    def rotated(rotation: np.ndarray) -> Start:  # ``rotation`` about the fixed centre of mass, then ``shift``
        return rotation - np.eye(3), shift

    if initial is None and pose_search:
        progress(ProgressEvent("affine", 0, 1, progress_span[0], "searching the orientation"))

        def score(rotation: np.ndarray) -> float:
            linear, translation = (torch.as_tensor(p, dtype=torch.float64, device=device) for p in rotated(rotation))
            with torch.no_grad():
                return float(levels[0].loss(_matrix(linear, translation, centre)))

        rotations = promising_rotations(score, rotation_candidates())
    total = len(rotations) * POSE_REFINE_ITERATIONS + (1 + min(len(rotations), POSE_FINALISTS)) * sum(iterations)
    done = 0
    lo, hi = progress_span

    def step(loss: torch.Tensor) -> None:
        nonlocal done
        done += 1
        if done % 10 == 0 or done == total:
            progress(ProgressEvent("affine", done, total, lo + (hi - lo) * done / total, values={"loss": loss.item()}))

    if rotations:
        refined = [_optimise(levels[:1], [POSE_REFINE_ITERATIONS], centre, rotated(rotation), step, scale)
                   for rotation in rotations]
        starts += [_start(matrix, centre_f) for matrix in sorted(refined, key=levels[0].pose_loss)[:POSE_FINALISTS]]
    results = [_optimise(levels, iterations, centre, start, step, scale) for start in starts]
    chosen = choose_pose(results, [levels[-1].pose_loss(result) for result in results]) if rotations else 0
    if chosen and on_rotated_pose is not None:
        on_rotated_pose(rotation_degrees(results[chosen], np.eye(4)))
    elif chosen:
        warnings.warn(f"the images' orientations disagree by about {rotation_degrees(results[chosen], np.eye(4)):.0f}°"
                      " (a wrong or missing orientation in a header?): the affine stage found the alignment from a "
                      "rotated start. Check the result; --no-pose-search turns the search off.", stacklevel=2)
    return results[chosen]
