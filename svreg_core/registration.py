"""The public registration API: images with affines in, a :class:`RegistrationResult` out.

The complete mapping is ``T(x) = A(x + u(x))`` for a fixed-world point ``x`` (RAS mm): first the
diffeomorphic displacement ``u = exp(v)`` (fixed space), then the affine pre-alignment ``A`` to the
moving world. ``warped(x) = moving(T(x))``.
"""
from __future__ import annotations

import numbers
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svreg_core.conventions import map_points, pad_thin_axes, point_rows
from svreg_core.errors import InputError
from svreg_core.image import Grid, Image, validate_image
from svreg_core.image.image import MAX_AFFINE_CONDITION, conform_to_grid, foreground_inside, three_d_shape
from svreg_core.image.network_grid import network_grid
from svreg_core.image.normalize import robust_normalize
from svreg_core.image.resample import (
    downsample,
    level_grid,
    resample,
    sample_at_points,
    source_coordinates,
    world_to_source_matrix,
)
from svreg_core.image.sampling import LABEL_INTERPOLATIONS, grid_sample, sample_labels
from svreg_core.memory import available_memory_bytes, check_memory, physical_memory_bytes
from svreg_core.models import ModelInfo, SPRNetwork, load_checkpoint
from svreg_core.models.zoo import resolve_model
from svreg_core.optim.affine import AFFINE_LEVELS, affine_register, affine_scale
from svreg_core.optim.parameters import BOUNDS, PRESETS, RegistrationParameters
from svreg_core.optim.spr import DeformableResult, optimize_spr
from svreg_core.parallel import map_threads
from svreg_core.progress import REGISTERED_FRACTION, ProgressCallback, ProgressEvent, no_progress
from svreg_core.transforms import compose, integrate_velocity
from svreg_core.transforms.field import apply_velocity


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the GPU numbered ``N``).
    :class:`InputError` for another name, CUDA without a CUDA GPU, or a GPU number this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's "Invalid device string"
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda (cuda:N for the GPU numbered N).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available; use --device cpu (or auto).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InputError(f"there is no CUDA GPU {device.index}: this machine has {count} (cuda:0 to cuda:{count - 1}); "
                         "use --device cuda for the first.")
    return device


#: Squarings of the outputs' scaling and squaring done on the fixed grid (the rest on the working grid):
#: see :meth:`RegistrationResult._world_field`.
OUTPUT_SQUARINGS = 1

#: ``CUBLAS_WORKSPACE_CONFIG`` values under which cuBLAS gives reproducible results (CUDA 10.2 and later).
CUBLAS_DETERMINISTIC_CONFIGS = (":4096:8", ":16:8")


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """PyTorch's deterministic mode (``torch.use_deterministic_algorithms``) inside the block when
    ``enabled``, and the previous setting (warn-only included) restored after it; nothing when not.

    The mode is process-wide: other threads running torch meanwhile run in it too.
    """
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _tensor(data: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32), device=device)[None, None]


@dataclass
class RegistrationResult:
    """What :func:`register` found, with everything needed to write outputs.

    Attributes:
        fixed, moving: the input images.
        parameters: the parameters used.
        affine: 4x4 RAS->RAS matrix ``A`` (fixed world -> moving world).
        working_grid: the finest working grid of the deformable stage.
        velocity: ``(1, 3, I, J, K)`` velocity, voxel units of ``working_grid`` (CPU tensor).
        weight: ``(1, 1, I, J, K)`` λ(x) on ``working_grid`` (CPU tensor).
        displacement: ``(I, J, K, 3)`` RAS mm on the fixed grid: ``T(x) = x + displacement(x)`` (without an
            affine stage the same array as ``deformable_displacement``).
        deformable_displacement: ``(I, J, K, 3)`` RAS mm on the fixed grid: ``u`` alone (before ``A``).
        timing: seconds per stage.
        device: the torch device used.
        model: the learned model's description when a network predicted the fields, else ``None``.
        refine_steps: pairwise iterations per pyramid level run after the network's prediction.
        codes: ``(α′, λ_max)`` a hyper model was conditioned on, else ``None``.
    """

    fixed: Image
    moving: Image
    parameters: RegistrationParameters
    affine: np.ndarray
    working_grid: Grid
    velocity: torch.Tensor
    weight: torch.Tensor
    displacement: np.ndarray
    deformable_displacement: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    losses: list[dict[str, float]] = field(default_factory=list)
    model: ModelInfo | None = None
    refine_steps: int = 0
    codes: tuple[float, float] | None = None
    #: λ resampled onto the fixed grid by :meth:`compute_displacements` (with the half field, sharing its
    #: sampling coordinates); :meth:`regularization_map` returns it.
    _fixed_weight: np.ndarray | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        """``"pairwise"`` (optimiser only) or ``"learned"`` (a network's prediction, maybe refined)."""
        return "pairwise" if self.model is None else "learned"

    def _world_field(self, inverse: bool = False, weight: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``u = exp(v)`` (or the displacement of ``exp(−v)``) in RAS mm, ``(1, 3, I, J, K)`` on the fixed grid,
        and, with ``weight``, λ resampled there too (``(1, 1, I, J, K)``, in the same grid_sample call as
        the half field: the sampling coordinates are computed once; else ``None``).

        Scaling and squaring split between the grids: ``h = exp(v / 2^s)`` is integrated on the working
        grid (where ``v`` was optimised or predicted), resampled (trilinear) onto the fixed grid, and the
        last :data:`OUTPUT_SQUARINGS` (``s``) squarings ``h ← h ∘ h`` run there. The final composition at
        the output resolution keeps the fine field's Jacobian a product of two half-field Jacobians, so
        the upsampling of the (smaller) half field does not fold voxels the way upsampling the whole
        field could, at a quarter of the cost of integrating everything on the fixed grid (brain pair,
        1 mm: 0.9 s instead of 2.2–3.1 s on 2 cores; Dice and folding the same).
        """
        try:
            return self._world_field_on(torch.device(self.device), inverse, weight)
        except torch.cuda.OutOfMemoryError:  # the fixed grid's fields do not fit beside the optimiser's: the CPU
            torch.cuda.empty_cache()
            return self._world_field_on(torch.device("cpu"), inverse, weight)

    def _world_field_on(self, device: torch.device, inverse: bool,
                        weight: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_world_field` computed on ``device`` (the registration's: no host round trip between the
        squarings on a GPU); the fields come back as CPU tensors."""
        fixed_grid = self.fixed.grid
        work_to_fixed = np.linalg.solve(fixed_grid.affine[:3, :3], self.working_grid.affine[:3, :3])
        steps = self.parameters.integration_steps
        fine = min(OUTPUT_SQUARINGS, steps)
        with torch.no_grad():
            velocity = self.velocity.to(device)
            v = -velocity if inverse else velocity
            half = integrate_velocity(v / 2.0 ** fine, steps - fine)
            # into fixed-grid voxel units on the (coarse) working grid: a constant linear map commutes with
            # the trilinear resampling
            half = torch.einsum("rc,ncijk->nrijk", torch.as_tensor(work_to_fixed, dtype=half.dtype, device=device),
                                half)
            if weight:
                half = torch.cat((half, self.weight.to(device=device, dtype=half.dtype)), dim=1)
            both = resample(half, self.working_grid, fixed_grid, padding_mode="border")
            del half
            disp = both[:, :3]
            lam = both[:, 3:].to("cpu", copy=True) if weight else None
            del both  # freed with the first composition (``disp`` is a view): one fine field less at the peak
            for _ in range(fine):
                disp = compose(disp, disp)
            lin = torch.as_tensor(fixed_grid.affine[:3, :3], dtype=disp.dtype, device=device)
            return torch.einsum("rc,ncijk->nrijk", lin, disp).cpu(), lam

    def compute_displacements(self) -> None:
        """Fill :attr:`deformable_displacement` (``u``) and :attr:`displacement` (``T``) from velocity and affine
        (and λ on the fixed grid for :meth:`regularization_map`)."""
        world, lam = self._world_field(weight=True)
        assert lam is not None  # asked for with weight=True
        self._fixed_weight = lam[0, 0].numpy().clip(1e-6, 1.0).astype(np.float32)
        u = world[0].permute(1, 2, 3, 0).contiguous().numpy()
        del world  # 87 MB at 1 mm: not alive beside the affine's copy below
        self.deformable_displacement = u
        if np.array_equal(self.affine, np.eye(4)):  # no affine stage: T(x) − x = u, the same array
            self.displacement = u
            return
        # T(x) − x = A(x + u) − x = L u + (A x − x), with A = [L t]
        out = torch.from_numpy(u) @ torch.from_numpy(self.affine[:3, :3].T.astype(np.float32))
        _add_affine_offset(out, self.affine, self.fixed.grid)
        self.displacement = out.numpy()

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map fixed-world RAS mm points ``(N, 3)`` to moving-world points: ``T(x) = A(x + u(x))``.

        ``u`` is interpolated (trilinear) from :attr:`deformable_displacement`; as in ITK (and the output files
        read back, :mod:`svreg_core.outputs.read`), it is zero more than half a voxel beyond the fixed grid
        (within that half voxel its border values continue), where points map by ``A`` alone. Other shapes than
        ``(N, 3)`` (a single point ``(3,)``) are an :class:`InputError`.
        """
        x = point_rows(points)
        pts = torch.as_tensor(x.astype(np.float32)).view(1, -1, 1, 1, 3)
        field_ = torch.as_tensor(self.deformable_displacement).permute(3, 0, 1, 2)[None]
        u = sample_at_points(field_, self.fixed.grid, pts, padding_mode="border")[0, :, :, 0, 0].T.double().numpy()
        return map_points(self.affine, x + u * self.fixed.grid.contains(x)[:, None])

    def inverse_displacement(self) -> np.ndarray:
        """``(I, J, K, 3)`` RAS mm on the moving grid: ``T⁻¹(y) = y + d(y) = z + w(z)``, ``z = A⁻¹ y``.

        ``w`` is the displacement of ``exp(−v)`` on the fixed grid (:meth:`_world_field`), resampled through
        ``A⁻¹`` onto the moving grid (trilinear, border values beyond the fixed grid); ``z − y = A⁻¹ y − y``
        is added row by row (:func:`_add_affine_offset`), so no per-voxel world points are formed.
        """
        a_inv = np.linalg.inv(self.affine)
        field_, _ = self._world_field(inverse=True)
        w = resample(field_, self.fixed.grid, self.moving.grid, a_inv, padding_mode="border")
        del field_  # one fine field less beside the permuted copy below
        out = w[0].permute(1, 2, 3, 0).contiguous()
        if not np.array_equal(self.affine, np.eye(4)):
            _add_affine_offset(out, a_inv, self.moving.grid)
        return out.numpy()

    def regularization_map(self) -> Image:
        """λ(x) resampled (trilinear) onto the fixed grid."""
        if self._fixed_weight is None:
            lam = resample(self.weight, self.working_grid, self.fixed.grid, padding_mode="border")
            self._fixed_weight = lam[0, 0].numpy().clip(1e-6, 1.0).astype(np.float32)
        return Image.on(self.fixed.grid, self._fixed_weight)

    def _moving_coords(self, source: Grid, identity: bool = False) -> torch.Tensor:
        """grid_sample coordinates ``(1, I, J, K, 3)`` in ``source`` (a moving-space grid) of ``T(x)`` (or of ``x``
        itself with ``identity``) for every fixed voxel, float32.

        World → source coordinates is affine, so ``coords(x + d) = coords(x) + L d`` with ``L`` its linear part:
        the identity's coordinates come from :func:`source_coordinates` (composed in float64, no world points)
        and ``L d`` is added in place (1 mm: 0.08 s, against 0.2 s through float64 world points).
        """
        coords = source_coordinates(self.fixed.grid, source)
        if not identity:
            linear = torch.as_tensor(world_to_source_matrix(source)[:3, :3].T, dtype=torch.float32)
            coords.view(-1, 3).addmm_(torch.as_tensor(self.displacement, dtype=torch.float32).reshape(-1, 3), linear)
        return coords

    def warp_image(self, image: Image, *, labels: bool = False, label_mode: str = "linear",
                   identity: bool = False) -> Image:
        """Resample an image of the moving space onto the fixed grid through ``T``.

        Intensities: trilinear. Labels: ``label_mode="linear"`` warps each label's indicator
        trilinearly and takes the argmax (the TransMorph/MIR convention); ``"nearest"`` is plain
        nearest-neighbour. ``identity``: through the identity in world space instead of ``T`` (the
        image as it lies on the fixed grid before registration, for the "before" metrics). A 4-D image of one
        volume (trailing axes of length 1) is taken as 3-D; other shapes are an :class:`InputError`. An image one
        voxel thick along an axis (a single slice) fades to 0 within a voxel of its plane
        (:func:`~svreg_core.conventions.pad_thin_axes`), as beyond its other faces.
        """
        if labels and label_mode not in LABEL_INTERPOLATIONS:
            raise InputError(f"unknown label interpolation {label_mode!r}; use {' or '.join(LABEL_INTERPOLATIONS)}.")
        shape = three_d_shape(np.shape(image.data), "the image to warp")
        if np.ndim(image.data) != 3 or 1 in shape:
            data, affine = pad_thin_axes(np.asarray(image.data).reshape(shape), image.affine)
            image = Image(data, affine, image.xform_codes)
        if identity and image.grid.same_as(self.fixed.grid):  # every sample falls on its own voxel's centre
            data = np.asarray(image.data)
            return Image.on(self.fixed.grid, data.astype(np.int32) if labels else data.astype(np.float32))
        coords = self._moving_coords(image.grid, identity)
        try:  # sampled on the registration's device (a GPU samples labels in milliseconds)
            return self._sample(image, coords.to(self.device), labels, label_mode)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return self._sample(image, coords, labels, label_mode)

    def _sample(self, image: Image, coords: torch.Tensor, labels: bool, label_mode: str) -> Image:
        """:meth:`warp_image` at grid_sample coordinates ``coords`` on their device; the result on the CPU."""
        device = coords.device
        if not labels:
            out = grid_sample(_tensor(image.data, device), coords)
            return Image.on(self.fixed.grid, out[0, 0].cpu().numpy())
        data = torch.as_tensor(np.asarray(image.data).astype(np.int32)).to(device)
        return Image.on(self.fixed.grid, sample_labels(data, coords, label_mode).to(torch.int32).cpu().numpy())

    @property
    def warped(self) -> Image:
        """The moving image resampled onto the fixed grid (one trilinear interpolation)."""
        return self.warp_image(self.moving)


def _add_affine_offset(out: torch.Tensor, affine: np.ndarray, grid: Grid) -> None:
    """Add ``A x − x`` (RAS mm) at every voxel centre ``x`` of ``grid`` to ``out`` ``(I, J, K, 3)``, in place.

    With ``A = [L t]`` and ``x = M ijk + b`` (the grid's voxel-to-world affine), ``A x − x = P ijk + q``,
    ``P = (L − I) M``, ``q = (L − I) b + t``: a sum of one row per voxel index along each axis (no float64
    world-point arrays: 0.1 s instead of 1.1 s at 1 mm).
    """
    lin = affine[:3, :3] - np.eye(3)
    p = lin @ grid.affine[:3, :3]
    q = lin @ grid.affine[:3, 3] + affine[:3, 3]
    for axis, n in enumerate(grid.shape):
        rows = np.arange(n)[:, None] * p[:, axis] + (q if axis == 0 else 0.0)
        out += torch.from_numpy(rows.astype(np.float32)).view([n if a == axis else 1 for a in range(3)] + [3])


LoadedModel = tuple[SPRNetwork, ModelInfo]


def load_model(model: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """A shipped model by name, or a checkpoint (folder, or a file in it), ready for :func:`register`."""
    return load_checkpoint(resolve_model(model), device=device)


def model_parameters(info: ModelInfo, params: RegistrationParameters, refine: int = 0) -> RegistrationParameters:
    """``params`` with the SPR loss a model was trained with (for its prediction and refinement).

    The codes ``(α′, λ_max)`` are the model's own, except that a refinement (``refine > 0``) takes those of
    ``params`` (its ``refine_codes``, else its ``alpha_prime`` and ``lambda_max``; for ``brain-mri`` since
    2026-11-27 the refinement codes 0.0303 and 2.93) unless codes are chosen (a hyper model then predicts
    for them and its refinement uses them too, :meth:`PreparedPair.register_at`): the refinement is the
    pairwise optimiser's, on its control grid (2 mm for MRI), where the presets' values were chosen,
    while the network's λ_max was a training value on its own grid (3 mm for the shipped models). On the
    Mindboggle validation pairs 1→2, 3→4, 5→6 (2026-11-27, 2 mm only, 50 steps) ``brain-unet-spr``'s mean
    Dice was 0.6459 / 0.6261 / 0.6072 at the model's (0.175, 3.35) and 0.6601 / 0.6422 / 0.6260 at the
    preset's (0.175, 1.0), SDlogJ 0.35–0.43 and 0.44–0.54, no folding (20 steps: +0.013 to +0.015);
    ``brain-hyper-unet-spr`` predicting at its own codes and refined 20 steps on both levels, 0.6421 /
    0.6223 / 0.6069 at its λ_max 3.35 and 0.6559 / 0.6368 / 0.6232 at the preset's. Those runs used the
    preset's earlier codes (0.175, 1.0). On the held-out validation pairs 07→08, 07→09, 08→09,
    ``brain-unet-spr`` refined 50 steps scored 0.6607 at those, 0.6613 at the tuned preset's (0.0102, 1.82;
    SDlogJ 0.58, a few folded voxels) and 0.6632 at the refinement codes tuned for it (0.0303, 2.93; SDlogJ
    0.48), the ``brain-mri`` default since.

    The network's prediction is integrated with the model's scaling-and-squaring steps; a refinement
    optimises the velocity, and integrates the result, with those of ``params`` (the pairwise engine's,
    3 in ``brain-mri`` and 4 in ``cardiac-mri``, rather than a model's 7: each squaring is a resampling of the
    field in every iteration).
    """
    if refine:
        alpha_prime, lambda_max = params.refine_codes or (params.alpha_prime, params.lambda_max)
    else:
        alpha_prime, lambda_max = info.alpha_prime, info.lambda_max
    return params.replace(similarity=info.similarity, lncc_window=info.lncc_window, prior=info.prior,
                          alpha_prime=alpha_prime, lambda_max=lambda_max, spr=info.spr,
                          integration_steps=params.integration_steps if refine else info.integration_steps)


def learned_parameters(info: ModelInfo, params: RegistrationParameters, codes: tuple[float, float] | None = None,
                       refine: int = 0) -> RegistrationParameters:
    """The parameters of a registration with a learned model at ``codes`` (:func:`model_codes`; ``None``: the
    defaults of :func:`model_parameters`) before :func:`refinement_parameters`: the model's SPR loss and those
    codes. :class:`InputError` for codes the model cannot use."""
    base = model_parameters(info, params, refine)
    alpha_prime, lambda_max = model_codes(info, codes, refine) if codes is not None else (base.alpha_prime,
                                                                                            base.lambda_max)
    return base.replace(alpha_prime=alpha_prime, lambda_max=lambda_max)


def refinement_parameters(params: RegistrationParameters, refine: int) -> RegistrationParameters:
    """``params`` of a refinement: ``refine`` iterations at every level of the pyramid (4 and 2 mm for MRI),
    starting from the network's velocity and λ resampled onto the coarsest level's grid.

    The coarse level corrects the large-scale part of the prediction at an eighth of a fine iteration's
    cost. On the Mindboggle validation pairs 1→2, 3→4, 5→6 (2026-11-27, ``brain-unet-spr``, the preset's
    codes) mean Dice 0.6281 with 20 iterations at 2 mm only, 0.6375 with 20 at 4 mm and 20 at 2 mm;
    0.6428 with 50 at 2 mm only, 0.6506 with 40 + 40, 0.6536 with 50 + 50 (the pairwise optimiser, 80 +
    60 from zero: 0.6519), no folding (``benchmarks/results/refine_codes_2026-11-27/``).
    """
    try:
        return params.replace(iterations=(int(refine),) * len(params.level_spacings))
    except InputError as exc:
        raise InputError(f"refine {refine}: {exc}") from None


def model_codes(info: ModelInfo, codes: tuple[float, float] | None = None, refine: int = 0) -> tuple[float, float]:
    """The regularisation ``(α′, λ_max)`` of a registration with a learned model, checked before any work.

    A hyper model (trained over ranges of codes, :attr:`ModelInfo.code_ranges`) is conditioned on the
    codes and its refinement minimises the SPR loss at them; a plain model's prediction cannot change,
    so other codes only set its refinement's loss (``refine > 0``).

    Args:
        info: the model's description.
        codes: the codes asked for; ``None``: the model's own (``info.alpha_prime``, ``info.lambda_max``).
        refine: refinement iterations that will follow the prediction.

    Raises:
        InputError: codes that are not two non-negative numbers, outside a hyper model's trained ranges,
            or different from a plain model's own without refinement.
    """
    own = (info.alpha_prime, info.lambda_max)
    if codes is None:
        return own
    if isinstance(codes, np.ndarray) and codes.ndim == 1:  # NumPy numbers below pass as the numbers they are
        codes = tuple(codes)
    if (not isinstance(codes, (tuple, list)) or len(codes) != 2
            or any(isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real) or not c >= 0 for c in codes)):
        raise InputError(f"codes must be two non-negative numbers (alpha_prime, lambda_max), not {codes!r}.")
    alpha_prime, lambda_max = float(codes[0]), float(codes[1])
    ranges = info.code_ranges
    if ranges is not None:
        ranges.check(alpha_prime, lambda_max)
    elif (alpha_prime, lambda_max) != own and not refine:
        raise InputError(f"model {info.name or info.architecture} is not a hyper model: it was trained at alpha_prime "
                         f"{own[0]:g}, lambda_max {own[1]:g} and its prediction cannot change; other values "
                         "(--alpha-prime/--lambda-max) only set the loss of a refinement (--refine N).")
    return alpha_prime, lambda_max


def network_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a network's prediction for :attr:`RegistrationParameters.network_precision`:
    ``torch.bfloat16``, or ``None`` for float32. ``"auto"``: bfloat16 on a CPU that computes it natively
    (AVX-512 BF16 or AMX; elsewhere it is emulated, slower than float32), float32 on a GPU (where the
    network takes a fraction of a second anyway, and bfloat16 has not been measured)."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    native = device.type == "cpu" and any(getattr(torch.cpu, probe, lambda: False)()
                                          for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return torch.bfloat16 if native else None


#: A learned model warns when the fixed image needs a network grid of more than this many times the voxels of the
#: grid it was trained on: a whole-head MR (up to 1.5 times the shipped brain models' 192 x 240 x 192 mm, whose
#: training label maps are whole heads) stays silent, a chest CT (2.6 times) does not.
TRAINED_FIELD_FACTOR = 2.0

#: ... and when it needs less than this fraction of them: a mouse or rat brain (a 16³ grid of 3 mm, 1/80 of the
#: shipped brain models') is anatomy of another scale than the network learned; a tightly cropped adult brain
#: (about 1/1.3) or a child's stays silent.
TRAINED_FIELD_SMALL_FRACTION = 1 / 8


def _check_trained_field(grid: Grid, info: ModelInfo) -> None:
    """Warn when the network grid the fixed image needs has more than :data:`TRAINED_FIELD_FACTOR` times, or less
    than :data:`TRAINED_FIELD_SMALL_FRACTION` of, the voxels of the training grid the checkpoint records
    (``training["grid_shape"]``; nothing is checked without one): the network has not seen such a field of view
    (a brain model given a chest CT, or a mouse brain), and its prediction may be poor."""
    trained = info.training.get("grid_shape")
    if not (isinstance(trained, list) and len(trained) == 3 and all(isinstance(n, int) for n in trained)):
        return
    needed, seen = float(np.prod(grid.shape)), float(np.prod(trained))
    if TRAINED_FIELD_SMALL_FRACTION * seen <= needed <= TRAINED_FIELD_FACTOR * seen:
        return
    size = lambda shape: " x ".join(f"{n * info.network_spacing_mm:g}" for n in shape)  # noqa: E731
    what = ("more than twice" if needed > seen else "less than an eighth of") + f" the {size(trained)} mm"
    advice = "" if needed > seen else ", for a small animal with finer grids (see the warning without --model)"
    warnings.warn(f"the fixed image's foreground needs a network grid of {size(grid.shape)} mm (R x A x S), {what} "
                  f"model {info.name or info.architecture} was trained on: the network has not seen such a field of "
                  f"view and its prediction may be poor; register without --model (pairwise optimisation, no "
                  f"training needed{advice}) or refine the prediction (--refine).", stacklevel=3)


def predict_fields(network: SPRNetwork, info: ModelInfo, fixed: Image, fixed_tensor: torch.Tensor,
                   moving: Image, moving_tensor: torch.Tensor, affine: np.ndarray,
                   codes: tuple[float, float] | None = None, symmetric: bool = True,
                   passes: int = 1, precision: str = "float32") -> DeformableResult:
    """The network's prediction: both images onto the RAS network grid, velocity and λ out.

    The fixed image and the moving image (through the affine pre-alignment ``affine``) are smoothed
    against aliasing and resampled onto :func:`~svreg_core.image.network_grid.network_grid` of the fixed
    image at the model's voxel size; the prediction lives on that grid. A hyper network is conditioned on
    ``codes`` ``(α′, λ_max)``, default its own; a plain one accepts only its own (:func:`model_codes`).
    ``symmetric``: the network also runs with the two images swapped and predicts ``v′`` with
    ``exp(v′) ≈ exp(−v)`` (the inverse map, on the same grid); the velocity is ``(v − v′)/2``
    (:attr:`RegistrationParameters.symmetric_prediction`). ``passes``: each pass after the first predicts,
    in the same way, from the fixed image and the moving image warped by the velocity so far, and adds
    its velocity (:attr:`RegistrationParameters.prediction_passes`). λ is the first pass's. ``precision``:
    the network's arithmetic (:func:`network_autocast`); its velocity and λ are returned in float32.
    """
    chosen = model_codes(info, codes)
    spacing = info.network_spacing_mm
    grid = network_grid(fixed, spacing, info.size_multiple)
    _check_trained_field(grid, info)
    f_net = resample(*downsample(fixed_tensor, fixed.grid, spacing), grid)
    m_net = resample(*downsample(moving_tensor, moving.grid, spacing), grid, affine)
    network.eval()
    autocast = network_autocast(precision, f_net.device)
    rows = None if info.code_ranges is None else torch.tensor([chosen], dtype=f_net.dtype, device=f_net.device)

    def velocity_and_weight(warped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # both directions in one batch of two: on a CPU a batch of two costs little more than one volume
        first, second = (torch.cat((f_net, warped)), torch.cat((warped, f_net))) if symmetric else (f_net, warped)
        with nullcontext() if autocast is None else torch.autocast(f_net.device.type, dtype=autocast):
            velocity, weight = network(first, second) if rows is None else network(first, second, rows)
        velocity, weight = velocity.float(), weight.float()
        return (0.5 * (velocity[:1] - velocity[1:]) if symmetric else velocity), weight[:1]

    with torch.no_grad():
        velocity, weight = velocity_and_weight(m_net)
        for _ in range(passes - 1):
            warped = apply_velocity(m_net, velocity, info.integration_steps).warped
            velocity = velocity + velocity_and_weight(warped)[0]
    return DeformableResult(grid, velocity, weight)


@dataclass
class PreparedPair:
    """A pair made ready for registrations at any codes: the code-independent work of :func:`register`.

    :func:`prepare_pair` validates the inputs, resolves the device and loads the model; :meth:`align`
    normalises the intensities and runs the affine stage; :meth:`register_at` then registers (network
    pass, optional refinement, displacements on the fixed grid) as often as wanted, each time at other
    codes, with the same result as :func:`register` with those codes. ``svreg preview`` keeps one alive.

    Attributes:
        fixed, moving: the validated images.
        fixed_mask, moving_mask: the validated masks, or ``None``.
        parameters: the parameters given (a model's loss settings are applied per registration).
        device: the torch device.
        network, info: the loaded model on ``device``, or ``None`` (pairwise optimisation).
        fixed_tensor, moving_tensor: robustly normalised ``(1, 1, I, J, K)`` intensities (after :meth:`align`).
        fixed_mask_tensor, moving_mask_tensor: masks as ``(1, 1, I, J, K)`` 0/1 tensors, or ``None``.
        affine: 4x4 RAS->RAS matrix ``A`` (fixed world -> moving world) of the affine stage (without it the
            initial matrix, else the identity); ``None`` before :meth:`align`.
        initial_affine: the 4x4 RAS->RAS matrix the affine stage starts from (used as it is without that
            stage), or ``None``.
        timing: seconds of the preparation stages (``prepare_s``, ``affine_s``).
    """

    fixed: Image
    moving: Image
    fixed_mask: Image | None
    moving_mask: Image | None
    parameters: RegistrationParameters
    device: torch.device
    network: SPRNetwork | None = None
    info: ModelInfo | None = None
    fixed_tensor: torch.Tensor | None = None
    moving_tensor: torch.Tensor | None = None
    fixed_mask_tensor: torch.Tensor | None = None
    moving_mask_tensor: torch.Tensor | None = None
    affine: np.ndarray | None = None
    initial_affine: np.ndarray | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def _loss_parameters(self, codes: tuple[float, float] | None,
                         refine: int) -> tuple[RegistrationParameters, tuple[float, float] | None]:
        """The parameters of a registration at ``codes`` (a model's SPR loss, at the chosen codes, else at
        :func:`model_parameters`' defaults) and a hyper model's conditioning (the chosen codes or its own;
        ``None`` for a plain model); :class:`InputError` for codes the model cannot use."""
        if self.info is None:
            return self.parameters, None
        params = learned_parameters(self.info, self.parameters, codes, refine)
        return params, None if self.info.code_ranges is None else model_codes(self.info, codes, refine)

    def check_codes(self, codes: tuple[float, float] | None = None, refine: int = 0) -> None:
        """Raise :class:`InputError` (before any work) when a registration at ``codes`` (with ``refine``
        refinement iterations: :func:`refinement_parameters`) could not run."""
        params, _ = self._loss_parameters(codes, refine)
        if refine:
            refinement_parameters(params, refine)

    def align(self, progress: ProgressCallback = no_progress) -> PreparedPair:
        """Normalise the intensities and run the affine stage (once; the progress spans 0 to 0.15)."""
        params, _ = self._loss_parameters(None, 0)  # the affine stage uses the model's similarity
        with deterministic_algorithms(params.deterministic):
            t = time.perf_counter()
            progress(ProgressEvent("prepare", 0, 1, 0.0, "normalising intensities"))
            device = self.device

            def normalized(image: Image) -> torch.Tensor:
                return _tensor(robust_normalize(image.data), device)

            # the two images at once (NumPy releases the GIL): 1 mm brain pair, 2 cores, 0.11 s -> 0.08 s
            self.fixed_tensor, self.moving_tensor = map_threads(normalized, (self.fixed, self.moving))
            masks = [None if mask is None else _tensor(np.asarray(mask.data) != 0, device)
                     for mask in (self.fixed_mask, self.moving_mask)]
            self.fixed_mask_tensor, self.moving_mask_tensor = masks
            self.timing["prepare_s"] = self.timing.get("prepare_s", 0.0) + time.perf_counter() - t

            t = time.perf_counter()
            if params.affine:
                self.affine = affine_register(self.fixed_tensor, self.fixed.grid, self.moving_tensor,
                                              self.moving.grid, similarity=params.similarity,
                                              fixed_mask=self.fixed_mask_tensor,
                                              moving_mask=self.moving_mask_tensor, initial=self.initial_affine,
                                              pose_search=params.pose_search, progress=progress,
                                              progress_span=(0.0, 0.15))
            else:
                self.affine = np.eye(4) if self.initial_affine is None else self.initial_affine.copy()
            self.timing["affine_s"] = time.perf_counter() - t
        return self

    def register_at(self, codes: tuple[float, float] | None = None, refine: int = 0,
                    progress: ProgressCallback = no_progress) -> RegistrationResult:
        """The deformable stage at ``codes`` (see :func:`register`) after :meth:`align`; the result's
        timing holds this call's stages only (``network_s``/``deformable_s``, ``refine_s``, ``compose_s``
        and their sum ``registration_s``)."""
        if self.affine is None or self.fixed_tensor is None or self.moving_tensor is None:
            raise RuntimeError("align() the prepared pair before registering it")
        t0 = time.perf_counter()
        params, conditioning = self._loss_parameters(codes, refine)
        f, m, fm, mm = self.fixed_tensor, self.moving_tensor, self.fixed_mask_tensor, self.moving_mask_tensor
        fixed, moving, affine, info = self.fixed, self.moving, self.affine, self.info
        timing: dict[str, float] = {}
        with deterministic_algorithms(params.deterministic):
            start = 0.15 if params.affine else 0.0
            if self.network is None:
                t = time.perf_counter()
                deformable = optimize_spr(f, fixed.grid, m, moving.grid, affine, params, fixed_mask=fm,
                                          moving_mask=mm, progress=progress, progress_span=(start, REGISTERED_FRACTION))
                timing["deformable_s"] = time.perf_counter() - t
            else:
                assert info is not None  # loaded with the network (prepare_pair)
                t = time.perf_counter()
                progress(ProgressEvent("network", 0, 1, start, f"predicting with {info.name or info.architecture}"))
                deformable = predict_fields(self.network, info, fixed, f, moving, m, affine, conditioning,
                                            params.symmetric_prediction, params.prediction_passes,
                                            params.network_precision)
                timing["network_s"] = time.perf_counter() - t
                if refine:
                    t = time.perf_counter()
                    params = refinement_parameters(params, refine)
                    deformable = optimize_spr(f, fixed.grid, m, moving.grid, affine, params, fixed_mask=fm,
                                              moving_mask=mm, initial=deformable, progress=progress,
                                              progress_span=(start + 0.05, REGISTERED_FRACTION))
                    timing["refine_s"] = time.perf_counter() - t

            t = time.perf_counter()
            empty = np.zeros((*fixed.shape, 3), np.float32)
            result = RegistrationResult(fixed, moving, params, affine, deformable.grid, deformable.velocity.cpu(),
                                        deformable.weight.cpu(), empty, empty, timing, str(self.device),
                                        deformable.losses, model=info, refine_steps=int(refine),
                                        codes=conditioning)
            result.compute_displacements()
            timing["compose_s"] = time.perf_counter() - t
            timing["registration_s"] = time.perf_counter() - t0
            progress(ProgressEvent("registered", 1, 1, REGISTERED_FRACTION, "registration finished"))
        return result


#: Without the affine stage, a fixed image with less than this fraction of its foreground inside the moving
#: image's field of view gets a warning (none of it: an error): the headers probably place the images apart.
OVERLAP_WARNING_FRACTION = 0.05


def _check_overlap(fixed: Image, moving: Image, initial: np.ndarray | None, warn_stacklevel: int,
                   affine_stage: bool = False) -> None:
    """Refuse a pair whose images do not overlap in the world (mapped through ``initial`` when given), and warn
    when they barely do (:data:`OVERLAP_WARNING_FRACTION`): without the affine stage the deformable stage
    starts from there and cannot bridge such a gap; with it (``affine_stage``, checked only for an ``initial``
    transform) the affine stage starts from ``initial`` instead of aligning the centres of mass."""
    inside = foreground_inside(fixed, moving.grid, initial)
    if inside >= OVERLAP_WARNING_FRACTION:
        return
    centres = [image.grid.corner_points().mean(0) for image in (fixed, moving)]
    where = (f"of the fixed image's foreground{', mapped through the initial transform,' if affine_stage else ''} "
             f"lies in the moving image's field of view (their centres are "
             f"{np.linalg.norm(centres[0] - centres[1]):.0f} mm apart)")
    advice = ("check the initial transform (it maps fixed points to moving points; the affine stage starts from "
              "it), or leave it out (the affine stage then starts by aligning the centres of mass)"
              if affine_stage else "check the images' headers (origin and orientation) and the initial transform, "
              "if any, or keep the affine stage (drop --no-affine)")
    if inside == 0:
        raise InputError(f"the images do not overlap: none {where}; {advice}.")
    warnings.warn(f"the images barely overlap: only {100 * inside:.1f} % {where}; {advice}.",
                  stacklevel=warn_stacklevel)


#: The pairwise optimiser warns when its finest control grid (the velocity's) has fewer voxels than this across the
#: fixed image's field of view (:attr:`Grid.field_of_view_mm`) while the image has finer voxels: the presets' grids
#: (2-5 mm) are made for human anatomy; a 15 mm mouse brain would be registered with 7 control points across.
MIN_WORKING_VOXELS = 12

#: ... and suggests grids with this many voxels across it at the finest level: a human brain's at 2 mm.
SUGGESTED_WORKING_VOXELS = 96


def _check_field_of_view(grid: Grid, params: RegistrationParameters, stacklevel: int) -> None:
    """Warn when ``params``' finest control grid is too coarse for a fixed image on ``grid``
    (:data:`MIN_WORKING_VOXELS`), suggesting grids with :data:`SUGGESTED_WORKING_VOXELS` across at the finest level
    (never finer than the image's voxels)."""
    image_spacing = float(grid.spacing.min())
    control = params.working_levels(image_spacing)[-1][1]
    extent = grid.field_of_view_mm
    if control <= image_spacing * (1 + 1e-6) or extent / control >= MIN_WORKING_VOXELS:
        return
    s = max(extent / SUGGESTED_WORKING_VOXELS, image_spacing, BOUNDS["level_spacings"][0])
    warnings.warn(f"the fixed image's field of view is {extent:.3g} mm across (median of its extents): the finest "
                  f"control grid, {control:g} mm, has only {extent / control:.0f} voxels across it, too few to "
                  f"follow its anatomy (the presets' grids are made for human anatomy); for a small field of view "
                  f"(small animals, a crop) give finer grids, e.g. --level-spacings {2 * s:.2g} {s:.2g} "
                  f"--control-spacing {s:.2g} (the affine stage adapts by itself).", stacklevel=stacklevel)


def _check_fixed_mask_reach(mask: Image, params: RegistrationParameters, deformable: bool, stacklevel: int) -> None:
    """Refuse a fixed ``mask`` (on the fixed grid) that covers no point of the deformable stage's image grids (with
    ``deformable``): the similarity would compare nothing and the registration would not move. Warn when it covers
    no point of the affine stage's levels (with ``params.affine``): that stage would keep its start. A mask thinner
    than those grids' voxels (one slice of a finer image) can fall between their points; each stage is checked as
    it samples the mask (trilinear; the affine stage keeps points above 0.5)."""
    tensor = torch.as_tensor(np.asarray(mask.data) != 0, dtype=torch.float32)[None, None]
    grid = mask.grid

    def reached(spacings: list[float], threshold: float) -> bool:
        return any(bool((resample(tensor, grid, level_grid(grid, s)) > threshold).any()) for s in spacings)

    def named(spacings: list[float]) -> str:
        return " and ".join(f"{s:.2g}" for s in spacings) + " mm voxels"

    advice = "give a mask at least as thick as those voxels (dilate it), or none"
    spacings = [s for s, _, _ in params.working_levels(float(grid.spacing.min()))]
    if deformable and not reached(spacings, 0.0):
        raise InputError(f"the fixed mask ({int(tensor.sum())} voxels) covers no point of the working grids "
                         f"({named(spacings)}): it is thinner than their voxels, so the registration would compare "
                         f"nothing and not move; {advice}.")
    spacings = [affine_scale(grid) * s for s, _ in AFFINE_LEVELS]
    if params.affine and not reached(spacings, 0.5):
        warnings.warn(f"the fixed mask covers no point of the affine stage's levels ({named(spacings)}): that stage "
                      f"would compare nothing and keep its start (the centres of mass aligned, or the initial "
                      f"transform); {advice}.", stacklevel=stacklevel)


def _checked_initial(matrix: np.ndarray | None) -> np.ndarray | None:
    """``matrix`` as a float64 4x4 affine map, or :class:`InputError` (not 4x4, not finite, a last row other than
    ``0 0 0 1``, a (nearly) singular linear part, or a reflection)."""
    if matrix is None:
        return None
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
        raise InputError("the initial transform must be a 4x4 affine matrix with finite values and a last row "
                         "0 0 0 1.")
    singular = np.linalg.svd(m[:3, :3], compute_uv=False)
    if not singular[-1] > singular[0] / MAX_AFFINE_CONDITION:
        raise InputError(f"the initial transform is (nearly) singular (singular values "
                         f"{', '.join(f'{v:.3g}' for v in singular)}); give an invertible rigid or affine map.")
    if np.linalg.det(m[:3, :3]) < 0:  # a diffeomorphic registration cannot undo a mirroring: all of it would fold
        raise InputError("the initial transform is a reflection (its 3x3 part has a negative determinant: it mirrors "
                         "the image), likely an LPS/RAS or axis-flip mix-up; give a rigid or affine map without "
                         "mirroring.")
    return m


def prepare_pair(fixed: Image, moving: Image, parameters: RegistrationParameters | None = None, *,
                 fixed_mask: Image | None = None, moving_mask: Image | None = None,
                 model: str | Path | LoadedModel | None = None, initial_affine: np.ndarray | None = None,
                 warn_stacklevel: int = 2) -> PreparedPair:
    """Validate the inputs, resolve the device and load ``model`` (see :func:`register` for the
    arguments): quick checks that raise :class:`InputError` before any slow work. Then call
    :meth:`PreparedPair.align` and :meth:`PreparedPair.register_at`.

    ``warn_stacklevel``: the ``stacklevel`` of the low-memory warning (2: the caller of this function).
    """
    params = PRESETS["brain-mri"] if parameters is None else parameters
    if not isinstance(params, RegistrationParameters):
        raise InputError(f"parameters must be RegistrationParameters, e.g. load_parameters({params!r:.60}) for a "
                         f"preset's name or preset file, not {type(params).__name__} {params!r:.60}."
                         if isinstance(params, (str, Path)) else
                         f"parameters must be RegistrationParameters (load_parameters(...)), not "
                         f"{type(params).__name__}.")
    t0 = time.perf_counter()
    fixed = validate_image(fixed, "fixed image")
    moving = validate_image(moving, "moving image")
    masks = []
    for mask, ref, name in ((fixed_mask, fixed, "fixed mask"), (moving_mask, moving, "moving mask")):
        if mask is not None:
            mask = conform_to_grid(validate_image(mask, name, labels=True), ref.grid, name, name.split()[0] + " image")
        masks.append(mask)
    initial = _checked_initial(initial_affine)
    if not params.affine or initial is not None:
        _check_overlap(fixed, moving, initial, warn_stacklevel + 1, affine_stage=params.affine)
    if model is None:
        _check_field_of_view(fixed.grid, params, warn_stacklevel + 1)
    device = resolve_device(params.device)
    if device.type == "cpu":
        finest = params.working_levels(float(fixed.grid.spacing.min()))[-1][0]
        note = check_memory(fixed.shape, moving.shape, int(np.prod(level_grid(fixed.grid, finest).shape)),
                            physical=physical_memory_bytes(), available=available_memory_bytes())
        if note:
            warnings.warn(note, stacklevel=warn_stacklevel)
    if params.deterministic and device.type == "cuda" \
            and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC_CONFIGS:
        raise InputError("deterministic registration on CUDA needs the environment variable "
                         "CUBLAS_WORKSPACE_CONFIG=:4096:8, set before CUDA starts (svreg register --deterministic "
                         "sets it).")
    if masks[0] is not None:
        _check_fixed_mask_reach(masks[0], params, model is None, warn_stacklevel + 1)
    network = info = None
    if model is not None:
        with deterministic_algorithms(params.deterministic):
            network, info = load_model(model, device) if isinstance(model, (str, Path)) else model
            network = network.to(device)
    return PreparedPair(fixed, moving, masks[0], masks[1], params, device, network, info, initial_affine=initial,
                        timing={"prepare_s": time.perf_counter() - t0})


def register(fixed: Image, moving: Image, parameters: RegistrationParameters | None = None, *,
             fixed_mask: Image | None = None, moving_mask: Image | None = None,
             model: str | Path | LoadedModel | None = None, refine: int = 0,
             codes: tuple[float, float] | None = None, initial_affine: np.ndarray | None = None,
             progress: ProgressCallback = no_progress) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: pairwise SPR optimisation, or a learned SPR network.

    Args:
        fixed, moving: 3-D images in any orientation, voxel size or oblique affine.
        parameters: a preset or custom :class:`RegistrationParameters` (default: brain-MRI preset).
            With a ``model``, its SPR loss settings (similarity, α′, λ_max, integration steps of its
            prediction) come from the model; the affine stage, device, and the pyramid and integration
            steps of a refinement from ``parameters``.
        fixed_mask, moving_mask: optional masks (non-zero = inside) on the fixed / moving grids.
        model: ``None`` (pairwise optimisation, no training needed), the name of a shipped model, a
            checkpoint path, or a model already loaded with :func:`load_model`.
        refine: with a ``model``, continue from its prediction with this many pairwise iterations of
            the same SPR loss at each level of the pyramid (:func:`refinement_parameters`), regularised
            with ``parameters``' ``refine_codes`` (else its α′ and λ_max) unless ``codes`` are given
            (:func:`model_parameters`).
        codes: with a ``model``, the regularisation ``(α′, λ_max)`` instead of the model's own: a hyper
            model (HyperSPR) predicts for these codes, which must lie in its trained ranges, and its
            refinement uses them; a plain model only refines with them (they need ``refine``). See
            :func:`model_codes`. Without a model, set ``parameters.alpha_prime``/``lambda_max`` instead.
        initial_affine: a 4x4 RAS->RAS matrix mapping fixed-world points to moving-world points (the
            resampling direction of an ITK transform file, e.g. a rigid alignment from Slicer or ANTs): the
            affine stage starts from it instead of from the centres of mass; without that stage
            (``parameters.affine`` false) the deformable stage starts from it as it is.
        progress: callback receiving :class:`ProgressEvent` updates.

    Determinism: on CPU, the same inputs and parameters give bit-identical results (any thread count).
    On CUDA, torch's default kernels (``grid_sample``'s backward, ...) add in a varying order, and the
    optimiser amplifies those last-bit differences (brain pair, H200: two runs' displacements up to
    3.8 mm apart, mean Dice within 0.0002). With ``parameters.deterministic`` the registration runs in
    PyTorch's deterministic mode (:func:`deterministic_algorithms`; the sampling switches to
    :func:`~svreg_core.image.sampling.gather_sample`) and gives bit-identical results on the same GPU,
    driver and torch version; the optimisation runs step by step, without the CUDA graph of the default
    (:mod:`svreg_core.optim.cuda_graph`), and is much slower (brain pair, H200, a fresh process: 7-8 s
    against 0.6 s; ``benchmarks/gpu.sh``). cuBLAS then needs the environment variable
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) set before CUDA is first used in the process;
    without it, an :class:`InputError` is raised before any work (``svreg register --deterministic``
    sets it). On CPU the option changes nothing.

    The stages are :func:`prepare_pair`, :meth:`PreparedPair.align` and :meth:`PreparedPair.register_at`
    (what ``svreg preview`` runs at many codes for one pair).
    """
    t0 = time.perf_counter()
    if isinstance(refine, bool) or not isinstance(refine, numbers.Real) or not float(refine).is_integer() \
            or refine < 0:
        raise InputError(f"refine must be a whole number of iterations (0 or more), not {refine!r}.")
    if refine and model is None:
        raise InputError("refine needs a learned model (--model); the pairwise optimiser already runs to the end.")
    if codes is not None and model is None:
        raise InputError("codes choose a learned model's regularisation; for pairwise registration set alpha_prime "
                         "and lambda_max in the parameters.")
    pair = prepare_pair(fixed, moving, parameters, fixed_mask=fixed_mask, moving_mask=moving_mask, model=model,
                        initial_affine=initial_affine, warn_stacklevel=3)
    pair.check_codes(codes, int(refine))
    result = pair.align(progress).register_at(codes, int(refine), progress)
    result.timing = {**pair.timing, **result.timing, "registration_s": time.perf_counter() - t0}
    return result


def summarize(result: RegistrationResult) -> dict[str, Any]:
    """Parameters, device and timing of a result as plain JSON-able values."""
    summary = {"method": result.method, "parameters": result.parameters.to_dict(), "device": result.device,
               "timing": dict(result.timing), "affine_ras": result.affine.tolist(),
               "working_grid_spacing_mm": float(result.working_grid.spacing[0])}
    if result.model is not None:
        summary["model"] = {key: value for key, value in result.model.to_dict().items() if key != "config"}
        summary["model"]["hyper"] = result.model.config.get("hyper")
        summary["refine_steps"] = result.refine_steps
        # a hyper model's conditioning codes, else the loss's (a plain model's own, or its refinement's); a
        # refinement's are the parameters' refine_codes, else alpha_prime and lambda_max (model_parameters)
        alpha_prime, lambda_max = result.codes or (result.parameters.alpha_prime, result.parameters.lambda_max)
        summary["codes"] = {"alpha_prime": alpha_prime, "lambda_max": lambda_max,
                            "conditioned": result.codes is not None}
    return summary


def warm_up(parameters: RegistrationParameters | None = None) -> Callable[[], Exception | None]:
    """Start the GPU in the background; returns a function that waits until it is ready.

    A process's first registration on CUDA pays for creating the CUDA context, loading each kernel on
    its first launch (cuDNN, cuBLAS and PyTorch's kernels) and recording the optimiser's CUDA graphs.
    Here a thread registers a small synthetic pair (16³ voxels of 4 mm, a few iterations, with the same
    settings) and runs a tiny convolution, so that this happens while the caller reads its images
    (``svreg register``); call the returned function before registering. Off CUDA, or when
    ``parameters.deterministic`` asks for CUDA's deterministic mode (a process-wide setting), nothing is
    started. The returned function gives the warm-up's own error, if any, which callers may ignore: the
    registration that follows reports whatever goes wrong.
    """
    params = parameters or PRESETS["brain-mri"]
    try:
        device = resolve_device(params.device)
    except InputError:
        return lambda: None
    if device.type != "cuda" or params.deterministic:
        return lambda: None
    failure: list[Exception] = []

    def run() -> None:
        try:
            grid = np.indices((16, 16, 16)).astype(np.float32)
            fixed = np.exp(-((grid - 7.5) ** 2).sum(0) / 20.0)
            moving = np.exp(-((grid - np.array([7.5, 7.5, 8.5], np.float32)[:, None, None, None]) ** 2).sum(0) / 20.0)
            affine = np.diag([4.0, 4.0, 4.0, 1.0])
            small = params.replace(affine=False, iterations=(4,) * len(params.iterations))
            register(Image(fixed, affine), Image(moving, affine), small)
            torch.nn.functional.conv3d(torch.ones(1, 2, 8, 8, 8, device=device),
                                       torch.ones(4, 2, 3, 3, 3, device=device), padding=1)
            torch.cuda.synchronize(device)
        except Exception as exc:  # noqa: BLE001 - given to the caller, who may ignore it
            failure.append(exc)

    thread = threading.Thread(target=run, name="svreg-cuda-warm-up", daemon=True)
    thread.start()

    def ready() -> Exception | None:
        thread.join()
        return failure[0] if failure else None

    return ready
