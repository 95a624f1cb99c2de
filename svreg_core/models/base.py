"""The contract every learned SPR network fulfils.

A network sees a fixed and a moving image on the *network grid* (RAS-aligned, isotropic, see
:mod:`svreg_core.image.network_grid`), intensities normalised to ``[0, 1]``, and predicts

* a stationary velocity ``v`` ``(N, 3, I, J, K)`` in voxel units of that grid, channels ``(i, j, k)``
  (:mod:`svreg_core.conventions`); the caller integrates it by scaling and squaring
  (:func:`svreg_core.transforms.integrate_velocity`), the network does not;
* the regularisation weight λ ``(N, 1, I, J, K)`` = sigmoid of a logit, clamped to ``[1e-6, 1]``
  (METHOD §3); with ``uniform=True`` the λ head is absent and λ ≡ 1 (uniform diffusion, the baseline
  of the "uniform vs SPR" comparison).

Inputs of any size are accepted: :meth:`SPRNetwork.forward` replicate-pads them to the network's
:attr:`~SPRNetwork.size_multiple`, runs :meth:`SPRNetwork.predict` and crops both outputs back.

A *hyper* network (configuration entry ``hyper``, :mod:`svreg_core.models.film`) is conditioned on the
regularisation codes ``(α′, λ_max)``: its forward pass needs them, a plain network's refuses them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from types import EllipsisType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svreg_core.models.film import CodeRanges, check_codes_tensor

#: Lower clamp of λ (METHOD §2: λ clamped to ``[1e-6, 1]`` before ``log λ``).
LAMBDA_MIN = 1e-6

#: Initial bias of a λ head's last layer: sigmoid(2.2) ≈ 0.90, so an untrained network regularises almost fully.
LAMBDA_BIAS_INIT = 2.2

#: Standard deviation of the velocity head's initial weights (VoxelMorph): an untrained network gives ≈ identity.
VELOCITY_INIT_STD = 1e-5


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[slice, ...]]:
    """Replicate-pad the three spatial axes of ``x`` ``(N, C, I, J, K)`` up to multiples of ``multiple``.

    The padding is split between both ends of each axis (the smaller half first), so the image stays
    centred.

    Returns:
        The padded tensor and the spatial slices that crop it back to ``x``'s grid.
    """
    before, after, crop = [], [], []
    for n in x.shape[2:]:
        total = (-n) % multiple
        before.append(total // 2)
        after.append(total - total // 2)
        crop.append(slice(total // 2, total // 2 + n))
    if any(before) or any(after):
        # F.pad lists the last axis first
        pads = [p for axis in (2, 1, 0) for p in (before[axis], after[axis])]
        x = F.pad(x, pads, mode="replicate")
    return x, tuple(crop)


def init_velocity_head(conv: nn.Conv3d) -> None:
    """Initialise a velocity head: normal weights of std :data:`VELOCITY_INIT_STD`, zero bias."""
    assert conv.bias is not None  # heads are built with a bias
    nn.init.normal_(conv.weight, mean=0.0, std=VELOCITY_INIT_STD)
    nn.init.zeros_(conv.bias)


def init_lambda_head(conv: nn.Conv3d) -> None:
    """Initialise a λ head's last layer so that λ starts uniform at sigmoid(:data:`LAMBDA_BIAS_INIT`) ≈ 0.9.

    The weights are small (std 1e-3) rather than zero so gradients still reach the layers before it.
    """
    assert conv.bias is not None  # heads are built with a bias
    nn.init.normal_(conv.weight, mean=0.0, std=1e-3)
    nn.init.constant_(conv.bias, LAMBDA_BIAS_INIT)


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is a positive integer (a configuration entry), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_ints(name: str, value: Any, length: int | None = None, allow_empty: bool = False) -> list[int]:
    """``value`` as a list of positive integers (a configuration entry), else ``ValueError`` naming ``name``."""
    items = list(value) if isinstance(value, (list, tuple)) else None
    if (items is None or (not items and not allow_empty)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items)
            or (length is not None and len(items) != length)):
        size = f"{length} " if length is not None else ""
        raise ValueError(f"{name} must be a list of {size}positive integers, got {value!r}")
    return items


class SPRNetwork(nn.Module, ABC):
    """Abstract base of the learned SPR networks.

    Subclasses set :attr:`architecture` (the registry name), pass their complete configuration to
    ``super().__init__(**config)`` (JSON-able values: numbers, strings, booleans, lists; ``hyper`` the
    code ranges or ``None``), implement :attr:`size_multiple` and :meth:`predict`, and, when
    :attr:`code_ranges` is set, modulate their decoder features with a
    :class:`~svreg_core.models.film.FiLM` of those ranges.

    Attributes:
        config: the keyword arguments that rebuild this network through
            :func:`svreg_core.models.registry.build_model` (``hyper`` only for a hyper network, so a plain
            network's configuration is what it was before hyper networks existed).
        code_ranges: the trained ranges of the codes ``(α′, λ_max)`` of a hyper network, else ``None``.
    """

    architecture: ClassVar[str]

    def __init__(self, **config: Any) -> None:
        super().__init__()
        hyper = config.pop("hyper", None)
        self.code_ranges: CodeRanges | None = None if hyper is None else CodeRanges.from_value(hyper)
        if self.code_ranges is not None:
            config["hyper"] = self.code_ranges.to_dict()
        self.config: dict[str, Any] = dict(config)

    @property
    def uniform(self) -> bool:
        """Whether λ ≡ 1 (no λ head)."""
        return bool(self.config.get("uniform", False))

    @property
    @abstractmethod
    def size_multiple(self) -> int:
        """The factor each spatial size of :meth:`predict`'s inputs must be divisible by."""

    @abstractmethod
    def predict(self, fixed: Tensor, moving: Tensor, codes: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Velocity and λ logits for inputs whose sizes are multiples of :attr:`size_multiple`.

        Args:
            fixed, moving: ``(N, 1, I, J, K)``, sizes divisible by :attr:`size_multiple`.
            codes: ``(N or 1, 2)`` (α′, λ_max) of a hyper network (checked), ``None`` for a plain one.

        Returns:
            ``(velocity (N, 3, I, J, K) in voxels, λ logits (N, 1, I, J, K))``; the logits are ``None``
            when :attr:`uniform`.
        """

    def forward(self, fixed: Tensor, moving: Tensor, codes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Predict the velocity and λ for a pair on the network grid.

        Args:
            fixed, moving: ``(N, 1, I, J, K)`` float intensities in ``[0, 1]``, same shape, any size.
            codes: hyper networks only (required): ``(N, 2)`` or ``(1, 2)`` regularisation codes
                ``(α′, λ_max)`` per pair, positive; values outside :attr:`code_ranges` are extrapolation
                (callers refuse them, :meth:`CodeRanges.check`).

        Returns:
            ``(velocity, weight)``: ``(N, 3, I, J, K)`` stationary velocity in voxel units of the input
            grid, channels ``(i, j, k)``; ``(N, 1, I, J, K)`` λ in ``[1e-6, 1]`` (≡ 1 when :attr:`uniform`).

        Raises:
            ValueError: wrong shapes; codes missing for a hyper network, given to a plain one, or malformed.
        """
        if fixed.dim() != 5 or fixed.shape[1] != 1 or fixed.shape != moving.shape:
            raise ValueError(f"fixed and moving must both be (N, 1, I, J, K); got {tuple(fixed.shape)} "
                             f"and {tuple(moving.shape)}")
        if self.code_ranges is not None:
            if codes is None:
                raise ValueError("this hyper network needs the regularisation codes (alpha_prime, lambda_max) "
                                 f"({self.code_ranges.describe()})")
            check_codes_tensor(codes, fixed.shape[0])
            codes = codes.to(fixed)
        elif codes is not None:
            raise ValueError("this network is not a hyper network: it was trained at one (alpha_prime, lambda_max) "
                             "and takes no codes")
        fixed_p, crop = pad_to_multiple(fixed, self.size_multiple)
        moving_p, _ = pad_to_multiple(moving, self.size_multiple)
        velocity, logits = self.predict(fixed_p, moving_p, codes)
        index: tuple[EllipsisType | slice, ...] = (..., *crop)
        velocity = velocity[index]
        if logits is None:
            weight = torch.ones_like(velocity[:, :1])
        else:
            weight = torch.sigmoid(logits[index]).clamp(LAMBDA_MIN, 1.0)
        return velocity, weight
