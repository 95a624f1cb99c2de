"""Pairwise SPR optimisation: a stationary velocity field and the regularisation weight λ(x) jointly.

Alternating updates: Adam moves the velocity with λ held fixed, then λ moves ``lambda_step`` of the way
to the exact per-voxel minimiser of the SPR loss for that displacement (:meth:`SPRLoss.optimal_weight`);
on the coarsest of several levels λ stays 1. The λ returned is the optimum of the loss for the returned
deformation.

Every grid here is derived from the fixed grid, with its axis directions. At each pyramid level the images
are compared on an *image grid* of voxel size ``s`` (isotropic, :meth:`Grid.resampled`; the fixed grid itself,
cropped, where its voxels are all at least ``s``: a 4.5 x 5.5 x 5 mm image at its 4.5 mm level), while the
velocity and λ live on an isotropic *control grid* of voxel size ``c ≥ s``
(:meth:`RegistrationParameters.working_levels`);
the displacement integrated there is upsampled (trilinear) to the image grid for warping. Velocities and
displacements are in voxel units of the control grid, so their finite differences are dimensionless
(mm per mm) at every level.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from svreg_core.errors import InputError
from svreg_core.image.grid import Grid
from svreg_core.image.resample import antialiased, level_grid, resample
from svreg_core.image.smoothing import smooth_field, smooth_field_weighted
from svreg_core.optim.adam import Adam, probe_epsilon
from svreg_core.optim.cuda_graph import GraphedIteration
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress
from svreg_core.transforms.field import GridTransfer
from svreg_core.transforms.svf import integrate_velocity


@dataclass
class DeformableResult:
    """Velocity and λ on the final working grid.

    Attributes:
        grid: the finest control grid.
        velocity: ``(1, 3, I, J, K)`` stationary velocity, voxel units of ``grid`` (already smoothed).
        weight: ``(1, 1, I, J, K)`` λ(x) in (0, 1] on ``grid`` (≡ 1 without SPR).
        losses: final loss terms per level.
    """

    grid: Grid
    velocity: torch.Tensor
    weight: torch.Tensor
    losses: list[dict[str, float]] = field(default_factory=list)


def _to_grid(field_: torch.Tensor, source: Grid, target: Grid, *, vector: bool) -> torch.Tensor:
    """Move a field between two grids; voxel-unit vectors are re-expressed in the target's voxels.

    The grids may differ in spacing and in axis directions (e.g. a network's RAS grid → a control grid).
    """
    out = resample(field_, source, target, padding_mode="border")
    if vector:
        source_to_target = np.linalg.solve(target.affine[:3, :3], source.affine[:3, :3])
        out = torch.einsum("rc,ncijk->nrijk", torch.as_tensor(source_to_target, dtype=out.dtype,
                                                              device=out.device), out)
    return out


def foreground_box(image: torch.Tensor, grid: Grid, margin_mm: float, threshold: float = 0.01) -> Grid:
    """``grid`` cropped to the bounding box of ``image > threshold`` plus ``margin_mm``.

    Where the fixed image is flat (e.g. zero background) local NCC carries no signal, so the
    deformable stage only needs this box; outside it, fields continue with their border values.
    """
    inside = torch.nonzero(image[0, 0] > threshold)
    if inside.numel() == 0:
        return grid
    margin = np.ceil(margin_mm / grid.spacing).astype(int)
    start = inside.min(0).values.cpu().numpy() - margin
    stop = inside.max(0).values.cpu().numpy() + 1 + margin
    return grid.cropped(tuple(start), tuple(stop))


def _linear_decay(iterations: int, final_fraction: float):
    """Learning-rate factor at iteration ``it`` of a level: 1 at the first, ``final_fraction`` at the last."""
    span = max(iterations - 1, 1)
    return lambda it: 1.0 - (1.0 - final_fraction) * min(it, span) / span


def _reported(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The similarity, regularisation and prior terms as floats, read from the device in one transfer (one
    host synchronisation on a GPU instead of one per term)."""
    names = ("similarity", "regularization", "prior")
    return dict(zip(names, torch.stack([terms[name].detach() for name in names]).tolist()))


def _check_masks_meet(fixed_mask: torch.Tensor | None, moving_mask: torch.Tensor | None, spacing: float) -> None:
    """Refuse a moving mask that, placed by the affine alignment, covers no voxel of the first level's image grid
    inside the fixed mask (both on that grid; ``None``: no mask): the similarity would compare nothing, no
    gradient would move the velocity, and the result would be the identity without a word."""
    if moving_mask is None:
        return
    overlap = moving_mask if fixed_mask is None else moving_mask * fixed_mask
    if not bool(overlap.gt(0).any()):
        where = "the fixed image's working grid" if fixed_mask is None else "the fixed mask"
        raise InputError(f"the moving mask, placed by the affine alignment, covers no voxel of {where} at "
                         f"{spacing:g} mm: nothing would be compared and the result would be the identity. Check that "
                         "each mask belongs to its image and that the pair overlaps; a mask thinner than the working "
                         "grid's voxels must be dilated.")


def optimize_spr(fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                 affine: np.ndarray, params: RegistrationParameters, *,
                 fixed_mask: torch.Tensor | None = None, moving_mask: torch.Tensor | None = None,
                 initial: DeformableResult | None = None,
                 progress: ProgressCallback = no_progress, progress_span: tuple[float, float] = (0.0, 1.0),
                 ) -> DeformableResult:
    """Optimise ``v`` and λ so that ``moving(A(x + u(x)))`` matches ``fixed(x)``, ``u = exp(v)``.

    Args:
        fixed, moving: normalised ``(1, 1, I, J, K)`` intensity tensors on their own grids.
        affine: 4x4 RAS->RAS pre-alignment ``A`` (fixed world -> moving world).
        params: similarity, λ prior and strengths, pyramid, step sizes.
        fixed_mask, moving_mask: optional masks on the fixed / moving grids.
        initial: start from this velocity and λ (e.g. a network's prediction, *refinement*) instead of
            ``v = 0``, λ ≡ 1; λ then moves to the loss's optimum for the refined deformation.
    """
    loss_fn = params.spr_loss()
    device = fixed.device
    levels = params.working_levels(float(fixed_grid.spacing.min()))
    # progress: an iteration's cost grows with its level's voxels, so each counts by them (80^3 voxels of 2 mm, one
    # thread, 2026-11-29: 1.05 s per 2 mm iteration, 0.2 s per 4 mm one); counted alike, the cheap coarse
    # iterations of 80 + 60 filled 57 % of the bar in a fifth of the time
    voxels = [float(np.prod(level_grid(fixed_grid, spacing).shape)) for spacing, _, _ in levels]
    total = sum(n * iterations for n, (_, _, iterations) in zip(voxels, levels))
    done = 0.0
    lo, hi = progress_span
    # the grid, velocity and λ of the previous level (or of ``initial``)
    previous: tuple[Grid, torch.Tensor, torch.Tensor] | None = None
    if initial is not None:
        previous = (initial.grid, initial.velocity.to(device=device, dtype=torch.float32),
                    initial.weight.to(device=device, dtype=torch.float32))
    losses: list[dict[str, float]] = []
    region = fixed if fixed_mask is None else fixed_mask.float()
    margin = 2 * max(control for _, control, _ in levels)
    for level_index, (spacing, control, iterations) in enumerate(levels):
        level = level_grid(fixed_grid, spacing)
        image_grid = foreground_box(resample(region, fixed_grid, level), level, margin)
        fixed_l = resample(antialiased(fixed, fixed_grid, spacing), fixed_grid, image_grid)
        moving_l = resample(antialiased(moving, moving_grid, spacing), moving_grid, image_grid, affine)
        grid = image_grid if np.allclose(image_grid.spacing, control) else image_grid.resampled(control)
        transfer = GridTransfer(grid, image_grid, device)
        stage = f"deformable {spacing:g} mm"
        mask_f = None if fixed_mask is None else resample(fixed_mask.float(), fixed_grid, image_grid)
        mask_m = None if moving_mask is None else resample(moving_mask.float(), moving_grid, image_grid, affine)
        if level_index == 0 and initial is None:
            _check_masks_meet(mask_f, mask_m, spacing)
        if previous is None:
            velocity = torch.zeros(1, 3, *grid.shape, device=device)
            weight = torch.ones(1, 1, *grid.shape, device=device)
        else:
            prev_grid, velocity, weight = previous
            previous = None  # the previous level's fields are not kept alive through this level
            velocity = _to_grid(velocity, prev_grid, grid, vector=True)
            weight = _to_grid(weight, prev_grid, grid, vector=False)
        # λ stays 1 on the coarsest of several levels: the first Adam steps strain the field everywhere,
        # and a λ that followed them would switch the regulariser off where nothing needs to move
        update_weight = params.spr and (level_index > 0 or len(levels) == 1 or initial is not None)

        def smooth(v: torch.Tensor) -> torch.Tensor:
            if params.spr and params.lambda_smoothing:
                return smooth_field_weighted(v, weight, params.smoothing_passes)
            return smooth_field(v, params.smoothing_passes)

        def evaluate(v: torch.Tensor):
            return loss_fn.evaluate(fixed_l, moving_l, smooth(v),
                                    weight if params.spr else None, integration_steps=params.integration_steps,
                                    transfer=transfer, fixed_mask=mask_f, moving_mask=mask_m)

        def gradient(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            v = values[0].requires_grad_(True)
            return [torch.autograd.grad(evaluate(v)[0]["total"], v)[0]]

        velocity = velocity.detach()
        # ε: the gradient a one-voxel shift of the whole field makes (diagonal, length 1 voxel)
        optimizer = Adam([velocity], [params.learning_rate],
                         probe_epsilon(gradient, [velocity], [torch.full_like(velocity, 3 ** -0.5)]))
        # the step size falls linearly to ``final_learning_rate_fraction`` of its value over the level
        decay = _linear_decay(iterations, params.final_learning_rate_fraction)

        def iteration() -> dict[str, torch.Tensor]:
            """One step of the velocity, then of λ (in place): device work only, so a CUDA graph can hold it."""
            # a fresh leaf each time: a graph recorded on its own stream then builds its own autograd nodes
            v = velocity.detach().requires_grad_(True)
            terms, fields = evaluate(v)
            optimizer.update(torch.autograd.grad(terms["total"], [v]))
            if update_weight:  # λ moves part of the way to the loss's optimum for the displacement just used
                with torch.no_grad():
                    weight.add_(params.lambda_step * (loss_fn.optimal_weight(fields.displacement) - weight))
            return terms

        # PyTorch's deterministic mode samples with gathers that a graph may not hold: step by step there
        step = GraphedIteration(iteration, device, enabled=not params.deterministic)
        for it in range(iterations):
            optimizer.prepare(decay(it))
            terms = step()
            done += voxels[level_index]
            if it % 5 == 0 or it == iterations - 1:
                progress(ProgressEvent(stage, it + 1, iterations, lo + (hi - lo) * done / total,
                                       values=_reported(terms)))
        losses.append({"spacing_mm": spacing, **_reported(terms)})
        previous = grid, velocity, weight
    with torch.no_grad():
        velocity = smooth(velocity.detach())
        weight = loss_fn.optimal_weight(integrate_velocity(velocity, params.integration_steps)) if params.spr \
            else torch.ones_like(velocity[:, :1])
    return DeformableResult(grid, velocity, weight, losses)
