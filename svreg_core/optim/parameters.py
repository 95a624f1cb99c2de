"""Registration parameters and the per-modality presets (tuned values from the SPR paper)."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svreg_core.errors import InputError
from svreg_core.losses.spr import SPRLoss
from svreg_core.text_input import read_text

SIMILARITIES = ("lncc", "mse", "mind")

#: Accepted range ``(low, high, unit)`` of each numeric parameter: wide enough for any sensible use,
#: narrow enough that a typo (1e300, a 0.001 mm grid, a trillion iterations) is refused before any work.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "alpha_prime": (0.0, 1e3, ""), "lambda_max": (0.0, 1e3, ""),
    "level_spacings": (0.1, 100.0, " mm"), "min_control_spacing": (0.1, 100.0, " mm"),
    "iterations": (1, 100_000, " iterations"), "learning_rate": (0.0, 100.0, " voxels"),
    "final_learning_rate_fraction": (0.0, 1.0, ""), "lambda_step": (0.0, 1.0, ""),
    "smoothing_passes": (0, 10, " passes"),
    "lncc_window": (3, 51, " voxels"), "integration_steps": (0, 20, " squarings"),
    "prediction_passes": (1, 10, " passes"),
}
#: Parameters of :data:`BOUNDS` whose lower bound 0 is itself refused (a step size of 0 would not move).
OPEN_AT_LOW = frozenset({"learning_rate", "final_learning_rate_fraction", "lambda_step"})
PRIORS = ("beta", "gaussian")
NETWORK_PRECISIONS = ("auto", "float32", "bfloat16")
#: Parameters of earlier versions, with why they are gone; ignored (with a warning) when read.
RETIRED: dict[str, str] = {
    "lambda_learning_rate": "λ now follows the SPR loss's closed-form optimum, see lambda_step",
    "seed": "the pairwise registration is deterministic; seed had no effect",
}


@dataclass(frozen=True)
class RegistrationParameters:
    """Everything that controls one pairwise registration.

    Units: spacings in millimetres; ``lncc_window`` in voxels of the working grid. The pairwise
    registration draws no random numbers, hence has no seed (older preset files' ``seed`` is retired).

    Attributes:
        similarity: ``"lncc"`` (mono-modal MRI), ``"mse"`` or ``"mind"`` (MIND-SSC, CT/multi-modal).
        spr: learn the spatially varying weight λ(x); ``False`` keeps λ ≡ 1 (uniform diffusion of the
            same strength ``lambda_max``).
        prior: hyperprior on λ: ``"beta"`` (``alpha_prime`` = α′) or ``"gaussian"`` (``alpha_prime`` = w).
        alpha_prime: hyperprior weight (α′ of Beta(1 + α′, 1), or w of the Gaussian N(1, σ²)).
        lambda_max: weight of the λ-weighted diffusion regulariser.
        refine_codes: ``(α′, λ_max)`` of a learned model's refinement (``--refine``) when no codes are
            chosen; ``None`` (the default, and every preset but ``brain-mri``): ``alpha_prime`` and
            ``lambda_max``. The refinement starts from a network's prediction rather than from zero, and
            prefers its own values: ``brain-mri``'s were tuned on the Mindboggle validation pairs with
            ``brain-unet-spr`` refined 50 steps (2026-11-27, README).
        affine: run an affine pre-alignment stage first.
        pose_search: let the affine stage also try rotated starts (:mod:`svreg_core.optim.pose_search`), so
            images whose headers disagree by more than the optimiser's 30–40° reach are still aligned; it
            keeps the usual result unless a rotated start matches the images clearly better (brain pair: the
            moving image's header rotated by 26–177° about 17 axes, all recovered, against 2 of 17 without;
            unrotated pairs give bit-identical matrices). Ignored with an initial transform.
        level_spacings: working-grid voxel sizes (mm) of the multi-resolution pyramid, coarse to fine.
        iterations: Adam iterations per level (same length as ``level_spacings``).
        min_control_spacing: finest voxel size (mm) of the control grid holding the velocity and λ;
            a level's control grid has voxel size ``max(level spacing, min_control_spacing)``.
        learning_rate: Adam step for the velocity field, in voxels of the control grid (the velocity's units, see
            ``min_control_spacing``: 4 mm voxels for the CT presets), ``brain-mri``: 3.
        lambda_step: each iteration λ moves this fraction of the way to the loss's per-voxel optimum for
            the current displacement (1: straight to it); the returned λ is that optimum.
        smoothing_passes: 3-voxel box-filter passes applied to the velocity every iteration (the
            parameterisation's own smoothing, on top of the λ-weighted regulariser; 3 = the SPR
            authors' three 3³ average pools; fewer let the regulariser shape sliding motion).
        lambda_smoothing: with SPR, those passes exchange between two neighbouring voxels in proportion
            to the smaller of their λ (:func:`~svreg_core.image.smoothing.smooth_field_weighted`), so the
            smoothing does not carry motion across where λ has dropped; λ ≡ 1 gives the box passes.
            Off by default (2026-11-26, README "Does the spatially varying λ help?"): on the sliding
            phantom the end-point error at the plane fell from 1.74 to 0.84 mm, but on the known-warp CT
            cases the boundary error did not fall (lung 1.94 vs 1.95 mm, aorta 2.69 vs 2.68 at the
            presets' λ_max) and the fields were rougher (SDlogJ 0.111 vs 0.076, 0.108 vs 0.082).
        final_learning_rate_fraction: the Adam step falls linearly over each level to this fraction of
            its initial value at its last iteration (1 = constant steps; a one-iteration level keeps the full step).
        lncc_window: LNCC window width in voxels, odd, at least 3 (a 1-voxel window's correlation is 1 for any two
            images: nothing would move).
        integration_steps: scaling-and-squaring steps. 4 rather than 5 since 2026-11-26: each squaring is a
            fifth of an iteration's time on the finest level; on three Mindboggle validation pairs (subjects
            1→2, 3→4, 5→6, not evaluation data) 4 gave mean Dice +0.0005 on each, SDlogJ +0.002, no
            folding, and the brain pair's CPU registration went from 34–35 s to 28–29 s. ``brain-mri`` takes 3
            since 2026-11-28: on the same validation pairs mean Dice +0.0003 to +0.0004 on each (0.6799 / 0.6559 /
            0.6479), SDlogJ +0.006 to +0.014, folding 0 / 0.0001 / 0.0002 % (4 steps: 0 / 0 / 0.0002 %); refined
            ``brain-unet-spr`` (1→2) +0.0001 (50 steps) and +0.0005 (20); held-out pairs 07–09 0.6676 → 0.6679, no
            folding; registration about 10 % faster (brain pair, alternating runs: 26.4 / 28.1 s against 29.4 /
            30.9 s). 2 steps folded 0.001 % on 1→2.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        symmetric_prediction: with a learned model, run its network both ways (moving → fixed and, with
            the images swapped on the same network grid, fixed → moving) and take ``(v − v′)/2``: ``exp(v′)``
            estimates the inverse map, ``exp(−v)``, so the average of the two estimates of ``v`` (λ from the
            first pass). Twice the network evaluations; on the Mindboggle validation pairs 1→2, 3→4, 5→6
            (2026-11-26, ``brain-unet-spr``) mean Dice +0.006 to +0.008 and SDlogJ −0.02 to −0.03 in one
            pass. ``False``: one pass, moving → fixed.
        prediction_passes: with a learned model, how many times its network predicts: each later pass
            predicts the deformation left between the fixed image and the moving image warped by the
            velocity so far (on the network grid) and adds its velocity, ``v ← v + v_k`` (a stationary
            velocity again, so still diffeomorphic; ``exp(v + v_k) ≈ exp(v) ∘ exp(v_k)`` for small fields).
            λ is the first pass's. On the Mindboggle validation pairs 1→2, 3→4, 5→6 (2026-11-26,
            ``brain-unet-spr``, symmetric) mean Dice with 1 / 2 / 3 / 5 passes: 0.517 / 0.538 / 0.546 /
            0.552 (1→2), SDlogJ 0.20 / 0.27 / 0.32 / 0.40; no folding.
        network_precision: arithmetic of a learned model's network: ``"float32"``, ``"bfloat16"`` (autocast:
            convolutions in bfloat16, the velocity and λ returned in float32), or ``"auto"``: bfloat16 on a
            CPU that computes it natively (AVX-512 BF16 or AMX), float32 elsewhere (GPUs included). On 2
            cores of an AMD EPYC with AVX-512 BF16 the shipped U-Net takes 0.26 s instead of 0.48 s per
            batch of two 64³ pairs, its velocities within 0.03 voxels of float32's; on the Mindboggle
            validation pairs 1→2, 3→4, 5→6 (``brain-unet-spr``, default prediction) mean Dice 0.5550 /
            0.5430 / 0.5236 against float32's 0.5551 / 0.5430 / 0.5234. The network's grid and every later
            step stay in float32.
        deterministic: run in PyTorch's deterministic mode (see :func:`svreg_core.registration.register`):
            bit-identical results from run to run on the same GPU, driver and torch version; the
            optimisation is about 7x slower. CUDA's default kernels differ in the last bits from run to
            run, which the optimiser amplifies (brain pair: displacements up to 3.8 mm apart, mean Dice
            within 0.0002). On CPU it
            changes nothing: CPU runs are bit-identical anyway. Like ``device``, an execution setting
            rather than part of a preset.
    """

    similarity: str = "lncc"
    spr: bool = True
    prior: str = "beta"
    alpha_prime: float = 0.0102
    lambda_max: float = 1.82
    refine_codes: tuple[float, float] | None = None
    affine: bool = True
    pose_search: bool = True
    level_spacings: tuple[float, ...] = (4.0, 2.0)
    iterations: tuple[int, ...] = (80, 60)
    min_control_spacing: float = 2.0
    learning_rate: float = 2.0
    final_learning_rate_fraction: float = 0.1
    lambda_step: float = 0.1
    smoothing_passes: int = 3
    lambda_smoothing: bool = False
    lncc_window: int = 5
    integration_steps: int = 4
    symmetric_prediction: bool = True
    prediction_passes: int = 2
    network_precision: str = "auto"
    device: str = "auto"
    deterministic: bool = False

    def __post_init__(self) -> None:
        def finite(value: Any, name: str) -> float | None:
            """``value`` (a Python or NumPy number: ``np.float32(0.1)``, ``np.int64(80)``) as a float, ``None`` when
            it is no finite number; an integer beyond a float's range (a JSON typo of over 300 digits, which
            ``math.isfinite`` cannot take) is out of range."""
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                return None
            try:
                as_float = float(value)
            except OverflowError:
                raise InputError(f"{name} is out of range: a number of more than 300 digits.") from None
            return as_float if math.isfinite(as_float) else None

        def whole(value: Any, name: str) -> int:
            as_float = finite(value, name)
            if as_float is None or int(value) != value:
                raise InputError(f"{name} must be a whole number, not {value!r}.")
            return int(value)

        def number(value: Any, name: str) -> float:
            as_float = finite(value, name)
            if as_float is None:
                raise InputError(f"{name} must be a finite number, not {value!r}.")
            return as_float

        for name in ("level_spacings", "iterations"):
            if isinstance(getattr(self, name), (str, bytes)) or not hasattr(getattr(self, name), "__iter__"):
                raise InputError(f"{name} must be a list of numbers, not {getattr(self, name)!r}.")
        object.__setattr__(self, "level_spacings", tuple(number(v, "level_spacings") for v in self.level_spacings))
        object.__setattr__(self, "iterations", tuple(whole(v, "iterations") for v in self.iterations))
        for name in ("alpha_prime", "lambda_max", "min_control_spacing", "learning_rate",
                     "final_learning_rate_fraction", "lambda_step"):
            object.__setattr__(self, name, number(getattr(self, name), name))
        if self.refine_codes is not None:
            if isinstance(self.refine_codes, (str, bytes)) or not hasattr(self.refine_codes, "__iter__") \
                    or len(tuple(self.refine_codes)) != 2:
                raise InputError(f"refine_codes must be two numbers (alpha_prime, lambda_max) or null, not "
                                 f"{self.refine_codes!r}.")
            codes = tuple(number(v, "refine_codes") for v in self.refine_codes)
            for name, v in zip(("alpha_prime", "lambda_max"), codes):
                low, high, _ = BOUNDS[name]
                if not low <= v <= high:
                    raise InputError(f"refine_codes' {name} {v:g} is out of range: it must lie in "
                                     f"[{low:g}, {high:g}].")
            object.__setattr__(self, "refine_codes", codes)
        for name in ("lncc_window", "integration_steps", "smoothing_passes", "prediction_passes"):
            object.__setattr__(self, name, whole(getattr(self, name), name))
        for name in ("spr", "affine", "pose_search", "symmetric_prediction", "deterministic", "lambda_smoothing"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name} must be true or false, not {getattr(self, name)!r}.")
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name in ("similarity", "prior", "device", "network_precision"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"{name} must be a name (text), not {getattr(self, name)!r}.")
        if self.similarity not in SIMILARITIES:
            raise InputError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}.")
        if self.prior not in PRIORS:
            raise InputError(f"unknown prior {self.prior!r}; choose one of {', '.join(PRIORS)}.")
        if self.network_precision not in NETWORK_PRECISIONS:
            raise InputError(f"unknown network_precision {self.network_precision!r}; choose one of "
                             f"{', '.join(NETWORK_PRECISIONS)}.")
        if len(self.level_spacings) != len(self.iterations) or not self.level_spacings:
            raise InputError("level_spacings and iterations must have the same, non-zero length.")
        if self.lncc_window < BOUNDS["lncc_window"][0]:  # before the range check: say why
            raise InputError(f"lncc_window must be at least {BOUNDS['lncc_window'][0]:g} voxels, not "
                             f"{self.lncc_window}: the local correlation over one voxel is 1 for any two images, so "
                             "the registration would not move.")
        for name, value in BOUNDS.items():
            low, high, unit = value
            values = getattr(self, name)
            open_low = name in OPEN_AT_LOW
            for v in values if isinstance(values, tuple) else (values,):
                if not (low < v if open_low else low <= v) or not v <= high:
                    raise InputError(f"{name} {v:g} is out of range: it must lie in {'(' if open_low else '['}"
                                     f"{low:g}, {high:g}]{unit}.")
        if any(finer > coarser for coarser, finer in zip(self.level_spacings, self.level_spacings[1:])):
            # the last level's grid is the result's: a coarser one there would register on the wrong grid
            raise InputError(f"level_spacings go from coarse to fine (each level's voxel size at most the one "
                             f"before), not {' '.join(f'{v:g}' for v in self.level_spacings)} mm.")
        if self.lncc_window % 2 == 0:
            raise InputError(f"lncc_window must be an odd number of voxels, not {self.lncc_window}.")

    def working_levels(self, image_spacing: float) -> list[tuple[float, float, int]]:
        """``(image grid spacing, control grid spacing, iterations)`` per level, coarse to fine, for a
        fixed image whose finest voxel size is ``image_spacing`` mm.

        The working grids follow the image: no level is finer than the image's voxel (a 6 mm image
        registers on a 6 mm grid, not on the preset's 2 mm one), and levels that then coincide merge into
        one with the larger iteration count, so a coarser image never costs more than a finer one. (A grid
        at half the image's voxel was measured too: sub-voxel accuracy was a little better — 0.29-0.35 of
        the true displacement left on a 5 mm test pair instead of 0.40 — but a 4 mm brain then took longer
        than the 2 mm one: 38 s vs 32 s.)
        """
        finest = float(image_spacing)
        levels: list[tuple[float, float, int]] = []
        for spacing, iterations in zip(self.level_spacings, self.iterations):
            spacing = max(spacing, finest)
            if levels and np.isclose(levels[-1][0], spacing):
                iterations = max(iterations, levels.pop()[2])
            levels.append((spacing, max(spacing, self.min_control_spacing), iterations))
        return levels

    def spr_loss(self) -> SPRLoss:
        """The SPR loss these parameters define (similarity, prior, α′, λ_max, spatially varying or not)."""
        return SPRLoss(similarity=self.similarity, lncc_window=self.lncc_window, prior=self.prior,
                       alpha_prime=self.alpha_prime, lambda_max=self.lambda_max, spr=self.spr)

    def replace(self, **changes: Any) -> RegistrationParameters:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: RegistrationParameters | None = None) -> RegistrationParameters:
        """Parameters from a mapping (a preset file's ``parameters``); unknown names are refused, retired
        ones (:data:`RETIRED`, found in older preset files and tuning studies) ignored with a warning."""
        retired = sorted(set(values) & set(RETIRED))
        if retired:
            warnings.warn("ignoring retired parameter(s): " + "; ".join(f"{k} ({RETIRED[k]})" for k in retired),
                          stacklevel=2)
            values = {k: v for k, v in values.items() if k not in RETIRED}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown registration parameter(s): {', '.join(unknown)}.")
        return dataclasses.replace(base or cls(), **values)


#: Presets by name. ``brain-mri`` (the defaults above, its own ``refine_codes`` and step) was tuned by ``svreg tune``
#: (``benchmarks/brain_tune.py``, 2026-11-27, 16 + 8 TPE trials, full settings) on three Mindboggle validation pairs
#: (subjects 01→02, 03→04, 05→06; never the brain pair or the test subjects): mean Dice 0.6399 with the paper's α′ 0.175
#: and the earlier λ_max 1.0 (itself chosen on the brain pair, our evaluation pair) → 0.6445 at α′ 0.0102, λ_max 1.82;
#: on three held-out pairs (subjects 07, 08, 09) 0.6596 → 0.6641, higher on each, no folding. Its ``refine_codes`` were
#: tuned the same way for a learned model's refinement (``svreg tune --model brain-unet-spr --refine 50``, 10 trials):
#: 0.6418 at the preset's codes (0.0001 % folded) → 0.6446 at α′ 0.0303, λ_max 2.93 (no folding); held-out pairs 0.6613
#: → 0.6632. Its Adam step (``learning_rate`` 3 voxels instead of 2, for the optimiser and a refinement alike) was
#: chosen on the same validation pairs on 2026-11-27: mean Dice 0.6519 → 0.6609 (pairwise), 0.6536 → 0.6604
#: (``brain-unet-spr`` refined 50 steps), higher on each pair, and a lower final SPR loss (05→06: −0.9404 → −0.9455
#: at 2 mm) at SDlogJ +0.05–0.13; a few folded voxels on one pair (≤ 0.002 %); 2.5 gained less, 4 (refinement) a little
#: more but folded on two pairs. Held-out pairs 07–09: 0.6641 → 0.6676 (pairwise), 0.6632 → 0.6680 (refined), each
#: pair higher (``benchmarks/results/refine_step_2026-11-27/``). Its 3 scaling-and-squaring steps (not 4): see
#: ``integration_steps`` above. The step 2 had been chosen on the brain pair; the CT
#: presets keep it (steps 3 and 4 raised the landmark error on their tuning cases, same folder).
#: ``cardiac-mri``: the paper's α′ 0.493 with λ_max 1.0, untested here. CT presets use
#: MIND-SSC features, with α′ and λ_max tuned by ``svreg tune`` (``benchmarks/ct_tune.py``, 16 trials each)
#: on known-warp CT tuning cases of other patients than the CT evaluation cases. 2026-11-26, on the mean
#: Dice: ``ct`` on an upper abdomen (21 structures: 0.9542 with the paper's α′ 0.005, λ_max 1 → 0.9596 at
#: α′ 0.0015, λ_max 0.44), ``lung-ct`` on a chest CT with sliding lungs (0.98896 with α′ 0.062, λ_max 1 →
#: 0.98971). 2026-11-27, on the mean landmark error (``--objective tre``, 2000 random body points of the
#: known warp; the accuracy the CT benchmark measures): ``ct`` 1.328 → 1.308 mm at α′ 0.0329, λ_max 0.556;
#: ``lung-ct`` kept (its Dice-tuned values were also the best of the TRE study, 0.690 mm). They keep the 5
#: scaling-and-squaring steps they were tuned and evaluated with (the MRI presets' 4 were validated on
#: brains only). Since 2026-11-27 their coarse level is 5 mm, as in their tuning (5 / 2.5 mm on images of
#: 2.5 mm and coarser, so 5 / 2 mm gives the same working levels there and keeps finer CT's 2 mm level),
#: with the full 80 / 60 iterations: on the tuning cases the brain's 4 / 2 mm pyramid (4 / 3 mm on the 3 mm
#: abdomen) gave a mean landmark error of 1.43 mm on the abdomen against 1.32 mm, 0.65 mm on the lungs with
#: either (``benchmarks/results/ct_pyramid_2026-11-27/``). Their velocity and λ live on a 4 mm control grid
#: (``min_control_spacing``; the images are still compared at 2–2.5 mm): on the same tuning cases the
#: landmark error fell from 1.316 to 1.263 mm (abdomen) and from 0.654 to 0.608 mm (lungs), Dice within
#: 0.001, the lung case 2.5x faster; 5, 6 and 8 mm gained more on the abdomen but lost Dice (lungs at 5 and 6,
#: abdomen at 8). Retuned for it the same way (``benchmarks/results/ct_tuning_2026-11-27_control4/``):
#: ``ct`` 1.260 → 1.238 mm at α′ 0.00104, λ_max 0.748; ``lung-ct`` kept (its values were again the best).
PRESETS: dict[str, RegistrationParameters] = {
    "brain-mri": RegistrationParameters(refine_codes=(0.0303, 2.93), learning_rate=3.0, integration_steps=3),
    "cardiac-mri": RegistrationParameters(alpha_prime=0.493, lambda_max=1.0),
    "ct": RegistrationParameters(similarity="mind", alpha_prime=0.00104, lambda_max=0.748, integration_steps=5,
                                 level_spacings=(5.0, 2.0), min_control_spacing=4.0),
    "lung-ct": RegistrationParameters(similarity="mind", alpha_prime=0.0014, lambda_max=2.0, integration_steps=5,
                                      level_spacings=(5.0, 2.0), min_control_spacing=4.0),
}


#: The presets made for MR images (``ct`` and ``lung-ct`` are for CT in Hounsfield units).
MR_PRESETS = ("brain-mri", "cardiac-mri")


def preset_modality_warning(preset: str | Path, similarity: str, fixed: np.ndarray, moving: np.ndarray) -> str | None:
    """One line when an MR preset (:data:`MR_PRESETS`, with its own similarity) is to register two images that
    read as CT (:func:`~svreg_core.image.modality.looks_like_ct`), else ``None``: on svreg's known-warp CT cases
    the CT presets' mean end-point error was 32–44 % below ``brain-mri``'s and their fields smoother (README,
    "Presets")."""
    from svreg_core.image.modality import looks_like_ct

    if str(preset) not in MR_PRESETS or similarity == "mind" or not (looks_like_ct(fixed) and looks_like_ct(moving)):
        return None
    return (f"both images look like CT (Hounsfield units), but the {preset} preset was tuned on MR: --preset ct "
            "(or lung-ct for the chest), tuned on CT, gave a 32-44 % lower mean end-point error and smoother fields "
            "on svreg's CT test cases.")


#: What a preset file is meant to change: the SPR hyperparameters. Everything else (pyramid, iterations,
#: affine stage, ...) is a fixed setting, and a preset file that changes one gets a warning.
HYPERPARAMETERS = ("alpha_prime", "lambda_max", "refine_codes")


#: Top-level keys of a preset file (``svreg tune --apply-best`` writes all of them).
PRESET_FILE_KEYS = frozenset({"base", "parameters", "tuning", "svreg_version", "description"})


def _preset_file(path: Path) -> tuple[dict[str, Any], str]:
    """The document of a preset file and its base preset name."""
    try:
        doc = json.loads(read_text(path, "preset file"))
    except ValueError as exc:
        raise InputError(f"preset file {path} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
        raise InputError(f"preset file {path} must hold an object with a 'parameters' object.")
    unknown = sorted(set(doc) - PRESET_FILE_KEYS)
    if unknown:
        raise InputError(f"preset file {path} has unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(PRESET_FILE_KEYS))}.")
    base = doc.get("base", "brain-mri")
    if not isinstance(base, str) or base not in PRESETS:
        named = json.dumps(base)  # as the file spells it: "ct", null, 3
        raise InputError(f"preset file {path} names an unknown base preset {named}; use one of {', '.join(PRESETS)}.")
    searched = doc["tuning"].get("searched", []) if isinstance(doc.get("tuning"), dict) else []
    if not isinstance(searched, list) or not all(isinstance(name, str) for name in searched):
        raise InputError(f"preset file {path}: tuning.searched must be a list of parameter names, not {searched!r}.")
    return doc, base


def load_parameters(preset: str | Path = "brain-mri", **overrides: Any) -> RegistrationParameters:
    """Parameters from a preset name or a preset JSON file, then ``overrides`` (``None`` values ignored; unknown
    names are refused, as in a preset file: :meth:`RegistrationParameters.from_dict`).

    A preset file is a JSON object ``{"base": "<preset name>", "parameters": {...}}`` (``base``
    optional, default ``brain-mri``), as written by ``svreg tune --apply-best``.
    """
    name = str(preset)
    if name in PRESETS:
        params = PRESETS[name]
    else:
        path = Path(name)
        if not path.is_file():
            raise InputError(f"unknown preset {name!r}: not one of {', '.join(PRESETS)} and no such file.")
        doc, base = _preset_file(path)
        params = RegistrationParameters.from_dict(doc.get("parameters", {}), PRESETS[base])
    changes = {k: v for k, v in overrides.items() if v is not None}
    return RegistrationParameters.from_dict(changes, params) if changes else params


def base_preset(preset: str | Path) -> str:
    """The built-in preset a preset name or preset file derives from."""
    return str(preset) if str(preset) in PRESETS else _preset_file(Path(preset))[1]


def preset_warning(preset: str | Path) -> str | None:
    """One line when a preset file changes fixed settings of its base preset, else ``None``.

    Fixed settings are all but :data:`HYPERPARAMETERS`, the parameters the file's ``tuning.searched``
    lists (written by ``svreg tune --apply-best``), ``device`` and ``deterministic`` (retired parameters are
    ignored): e.g. the quick pyramid of a tuning study carried into every registration
    (``--apply-best --include-fixed-settings``).
    """
    name = str(preset)
    if name in PRESETS:
        return None
    path = Path(name)
    doc, base = _preset_file(path)
    tuning = doc["tuning"] if isinstance(doc.get("tuning"), dict) else {}
    allowed = {*HYPERPARAMETERS, *tuning.get("searched", ()), "device", "deterministic", *RETIRED}
    params = load_parameters(path)
    default = PRESETS[base]
    changed = [k for k in doc.get("parameters", {}) if k not in allowed and getattr(params, k) != getattr(default, k)]
    if not changed:
        return None
    return (f"preset {path.name} changes fixed settings of the {base} preset ({', '.join(changed)}); "
            f"results can differ from the tested defaults.")
