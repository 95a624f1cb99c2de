"""``unet-spr``: a light VoxelMorph-sized 3-D U-Net with an SPR λ head, trainable on a CPU.

Layout (defaults, 300,100 parameters): the pair ``concat(moving, fixed)`` (2 channels) goes through
one 3³ convolution per encoder level (16, 32, 32, 32 features), each followed by a 2× max-pool, so the
deepest features are at 1/16 resolution (:attr:`UNetSPR.size_multiple` = 16). The decoder convolves
at 1/16, 1/8, 1/4 and 1/2 (32 features each), upsampling 2× (nearest) and concatenating the encoder
features of the next finer level after each, then runs the remaining decoder convolutions at full
resolution (16, 16). Every convolution is followed by LeakyReLU(0.2). Two heads read the last
decoder features: a 3³ convolution to the 3 velocity channels (initial weights ~N(0, 1e-5), so an
untrained network predicts ≈ identity) and, unless ``uniform``, a small stack of 3³ convolutions
(``lambda_features``, LeakyReLU) ending in one λ logit (initial bias 2.2: λ ≈ 0.9).

A hyper U-Net (``hyper`` code ranges, :mod:`svreg_core.models.film`) modulates the output of every
decoder convolution by a FiLM of the codes (α′, λ_max): 5,760 more parameters at the defaults.

Cost: one forward and backward pass at 80×96×96 took 2.35 s on 2 CPU threads (measured with another
busy process on the machine).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svreg_core.models.base import SPRNetwork, init_lambda_head, init_velocity_head, positive_ints
from svreg_core.models.film import FiLM, modulate
from svreg_core.models.registry import register_architecture

#: Negative slope of every LeakyReLU of the U-Net.
LEAKY_SLOPE = 0.2


class ChannelsLastConv3d(nn.Conv3d):
    """3³ convolution (padding 1) run on ``channels_last_3d`` tensors with oneDNN on CPUs.

    On CPUs this takes PyTorch's oneDNN path: 2-4× faster than the default layout for these narrow
    layers, forward and backward. The values are the same up to rounding, only the memory layout differs.
    In float32 outside autocast the oneDNN convolution is called directly: for a batch of one, torch's
    ``conv3d`` picks its slow reference kernel whenever ``N·C·D·H ≤ 20480`` (a heuristic for 2-D
    convolutions: here the first layer and two coarse ones), whose forward took 22-42 ms instead of 3-13 ms
    at 64×80×64 and whose standard-layout outputs were copied to channels-last further on; a training
    step of ``scripts/brain-unet-spr.yaml`` took 0.99-1.10 s instead of 1.14-1.31 s (2 threads, 2026-11-28).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        if x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 \
                and torch.backends.mkldnn.is_available() and not torch.is_autocast_enabled("cpu"):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, list(self.padding),
                                                     list(self.stride), list(self.dilation), self.groups)
        return super().forward(x)


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Convolution and LeakyReLU, the activation in place (saves a full-resolution copy per layer).

    The convolution is He-initialised for the LeakyReLU that follows it (normal weights of variance
    ``2 / ((1 + 0.2²) · fan_in)``, zero bias), so signals and gradients keep their scale through the
    network's depth. PyTorch's default (variance ``1 / (3 · fan_in)``) shrinks them by about 3× per layer:
    behind the velocity head's ~1e-5 initial weights the gradients of the deepest layers were 1e-11 to
    1e-10 at the start of training (below Adam's ε), and on held-out synthetic pairs the network learned
    more slowly (README, "What it achieves today").
    """
    conv = ChannelsLastConv3d(in_channels, out_channels)
    assert conv.bias is not None  # built with a bias
    nn.init.kaiming_normal_(conv.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


@register_architecture
class UNetSPR(SPRNetwork):
    """VoxelMorph-style U-Net predicting a stationary velocity and λ.

    Args:
        encoder_features: output width of the encoder convolution at each level; one 2× pooling per level.
        decoder_features: widths of the decoder convolutions: the first ``len(encoder_features)`` run
            at 1/2^L, ..., 1/2 resolution, the rest (at least one) at full resolution.
        lambda_features: widths of the hidden convolutions of the λ head (may be empty).
        uniform: no λ head, λ ≡ 1.
        hyper: ``{"alpha_prime": [low, high], "lambda_max": [low, high]}``: condition the decoder on
            these codes (:class:`~svreg_core.models.film.CodeRanges`); ``None``: a plain network.
    """

    architecture = "unet-spr"

    def __init__(self, *, encoder_features: Sequence[int] = (16, 32, 32, 32),
                 decoder_features: Sequence[int] = (32, 32, 32, 32, 16, 16),
                 lambda_features: Sequence[int] = (16,), uniform: bool = False,
                 hyper: dict | None = None) -> None:
        enc = positive_ints("encoder_features", encoder_features)
        dec = positive_ints("decoder_features", decoder_features)
        lam = positive_ints("lambda_features", lambda_features, allow_empty=True)
        if len(dec) <= len(enc):
            raise ValueError(f"decoder_features needs more than {len(enc)} entries (one per encoder level and "
                             f"at least one at full resolution), got {len(dec)}")
        if not isinstance(uniform, bool):
            raise ValueError(f"uniform must be true or false, got {uniform!r}")
        super().__init__(encoder_features=enc, decoder_features=dec, lambda_features=lam, uniform=uniform,
                         hyper=hyper)
        levels = len(enc)
        self.encoder = nn.ModuleList(_conv(c_in, c_out) for c_in, c_out in zip([2, *enc[:-1]], enc))
        self.decoder = nn.ModuleList()
        width = enc[-1]
        for index, c_out in enumerate(dec):
            self.decoder.append(_conv(width, c_out))
            # the first `levels` convolutions are followed by upsampling and the next finer encoder features
            width = c_out + (enc[levels - 1 - index] if index < levels else 0)
        self.velocity_head = ChannelsLastConv3d(dec[-1], 3)
        init_velocity_head(self.velocity_head)
        self.lambda_head: nn.Sequential | None = None
        if not uniform:
            widths = [dec[-1], *lam]
            layers = [_conv(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])]
            last = ChannelsLastConv3d(widths[-1], 1)
            init_lambda_head(last)
            self.lambda_head = nn.Sequential(*layers, last)
        self.film = None if self.code_ranges is None else FiLM(self.code_ranges, dec)

    @property
    def size_multiple(self) -> int:
        """``2 ** len(encoder_features)`` (16 at the defaults)."""
        return 2 ** len(self.encoder)

    def predict(self, fixed: Tensor, moving: Tensor, codes: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """See :meth:`SPRNetwork.predict`."""
        films = None if self.film is None else self.film(codes)
        x = torch.cat((moving, fixed), dim=1)
        skips = []
        for conv in self.encoder:
            x = conv(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        levels = len(self.encoder)
        for index, conv in enumerate(self.decoder):
            x = conv(x)
            if films is not None:
                x = modulate(x, films[index])
            if index < levels:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = torch.cat((x, skips[levels - 1 - index]), dim=1)
        velocity = self.velocity_head(x).contiguous()
        logits = None if self.lambda_head is None else self.lambda_head(x).contiguous()
        return velocity, logits
