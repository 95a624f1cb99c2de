"""HyperSPR conditioning (METHOD §3): one network for any regularisation strength (α′, λ_max).

A *hyper* network is trained with the codes ``(α′, λ_max)`` of the SPR loss drawn per batch from
ranges (:class:`CodeRanges`); at test time the user picks the codes and the same weights predict the
velocity and λ that a network trained at those codes would. The conditioning is FiLM (feature-wise
linear modulation): a small MLP (:class:`FiLM`, about six thousand parameters at the U-Net's
defaults) maps the codes, log-scaled into ``[0, 1]`` over the trained ranges, to a per-channel scale
``1 + γ`` and shift ``β`` of each modulated decoder feature map, ``x ↦ (1 + γ) · x + β``. It is not a
hypernetwork generating every weight (the authors' one has about 1.6 billion parameters).

The ranges live in the network's configuration (``hyper: {alpha_prime: [low, high], lambda_max:
[low, high]}``), hence in every checkpoint's ``model.json``; a network without them is a plain one
and its weights and configuration are unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from svreg_core.errors import InputError

#: The two codes, in the order of the columns of a codes tensor ``(N, 2)``.
CODE_NAMES = ("alpha_prime", "lambda_max")

#: Hidden width of the two hidden layers of the FiLM MLP.
FILM_HIDDEN = 16

#: Standard deviation of the FiLM output layer's initial weights (bias 0): an untrained hyper network
#: is the plain network up to modulations of order 1e-2, and every MLP weight gets gradients from the start.
FILM_INIT_STD = 1e-2


def _number_pair(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        return None
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class CodeRanges:
    """Closed ranges ``[low, high]`` of the codes a hyper network is trained on (dimensionless).

    ``0 < low <= high``; ``low == high`` fixes that code. Codes are sampled and normalised on a log
    scale: α′ and λ_max act multiplicatively on the loss.

    Attributes:
        alpha_prime: range of the hyperprior strength α′.
        lambda_max: range of the weight λ_max of the λ-weighted diffusion.
    """

    alpha_prime: tuple[float, float]
    lambda_max: tuple[float, float]

    @classmethod
    def from_value(cls, value: Any) -> CodeRanges:
        """Validate a configuration entry ``{"alpha_prime": [low, high], "lambda_max": [low, high]}``.

        Raises:
            ValueError: one plain line saying what is wrong.
        """
        if isinstance(value, CodeRanges):
            return value
        if not isinstance(value, dict) or set(value) != set(CODE_NAMES):
            raise ValueError("hyper must be a mapping {alpha_prime: [low, high], lambda_max: [low, high]}, "
                             f"got {value!r}")
        ranges = {}
        for name in CODE_NAMES:
            pair = _number_pair(value[name])
            if pair is None or not 0 < pair[0] <= pair[1]:
                raise ValueError(f"hyper {name} range must be two numbers [low, high] with 0 < low <= high, "
                                 f"got {value[name]!r}")
            ranges[name] = pair
        return cls(**ranges)

    def to_dict(self) -> dict[str, list[float]]:
        """The configuration entry (JSON-able)."""
        return {name: list(getattr(self, name)) for name in CODE_NAMES}

    def describe(self) -> str:
        """``"alpha_prime in [0.05, 0.5], lambda_max in [0.5, 10]"``."""
        return ", ".join(f"{name} in [{getattr(self, name)[0]:g}, {getattr(self, name)[1]:g}]" for name in CODE_NAMES)

    def contains(self, alpha_prime: float, lambda_max: float) -> bool:
        """Whether both codes lie in their ranges (bounds included)."""
        return all(low <= value <= high for value, (low, high)
                   in zip((alpha_prime, lambda_max), (self.alpha_prime, self.lambda_max)))

    def check(self, alpha_prime: float, lambda_max: float) -> None:
        """Raise :class:`InputError` (one line) unless both codes lie in the trained ranges."""
        for name, value in zip(CODE_NAMES, (alpha_prime, lambda_max)):
            low, high = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InputError(f"{name} {value!r} is outside the range this model was trained on "
                                 f"[{low:g}, {high:g}]; choose a value inside it.")

    def normalise(self, codes: Tensor) -> Tensor:
        """Codes ``(N, 2)`` (α′, λ_max) → ``log(c / low) / log(high / low)``, ``[0, 1]`` inside the ranges
        (0 for a fixed code)."""
        low = codes.new_tensor([self.alpha_prime[0], self.lambda_max[0]])
        high = codes.new_tensor([self.alpha_prime[1], self.lambda_max[1]])
        span = torch.log(high / low)
        return torch.log(codes / low) / torch.where(span > 0, span, torch.ones_like(span))

    def sample(self, generator: torch.Generator) -> tuple[float, float]:
        """One code pair drawn log-uniformly from the ranges with ``generator`` (never the global RNG)."""
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        return tuple(math.exp(math.log(low) + t * math.log(high / low))  # type: ignore[return-value]
                     for t, (low, high) in zip(u, (self.alpha_prime, self.lambda_max)))


def check_codes_tensor(codes: Tensor, batch: int) -> None:
    """Raise ``ValueError`` unless ``codes`` is a finite, positive ``(batch or 1, 2)`` tensor (α′, λ_max)."""
    if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.shape[1] != 2 or codes.shape[0] not in (1, batch):
        shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a (N, 2) tensor of (alpha_prime, lambda_max) per pair (N = {batch} or 1), "
                         f"got {shape}")
    if not bool(torch.isfinite(codes).all()) or not bool((codes > 0).all()):
        raise ValueError("codes (alpha_prime, lambda_max) must be finite and positive")


class FiLM(nn.Module):
    """MLP of the normalised codes → per-channel scale and shift of several feature maps.

    ``2 → FILM_HIDDEN → FILM_HIDDEN → 2·Σ channels``, LeakyReLU(0.2) between the layers.

    Args:
        ranges: the trained code ranges (normalise the codes).
        channels: channels of each modulated feature map, in the order the network applies them.
    """

    def __init__(self, ranges: CodeRanges, channels: Sequence[int]) -> None:
        super().__init__()
        self.ranges = ranges
        self.channels = [int(c) for c in channels]
        self.mlp = nn.Sequential(nn.Linear(2, FILM_HIDDEN), nn.LeakyReLU(0.2),
                                 nn.Linear(FILM_HIDDEN, FILM_HIDDEN), nn.LeakyReLU(0.2),
                                 nn.Linear(FILM_HIDDEN, 2 * sum(self.channels)))
        last = cast(nn.Linear, self.mlp[-1])
        nn.init.normal_(last.weight, mean=0.0, std=FILM_INIT_STD)
        nn.init.zeros_(last.bias)

    def forward(self, codes: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(scale, shift)`` per feature map, each ``(N, C, 1, 1, 1)``, for codes ``(N, 2)`` (α′, λ_max)."""
        out = self.mlp(self.ranges.normalise(codes))
        scales, shifts = out.split(sum(self.channels), dim=1)
        return [(1.0 + s[..., None, None, None], b[..., None, None, None])
                for s, b in zip(scales.split(self.channels, dim=1), shifts.split(self.channels, dim=1))]


def modulate(x: Tensor, scale_shift: tuple[Tensor, Tensor]) -> Tensor:
    """``scale · x + shift`` for features ``x`` ``(N, C, I, J, K)`` and one entry of :meth:`FiLM.forward`."""
    scale, shift = scale_shift
    return torch.addcmul(shift, x, scale)
