"""``transmorph-tvf-spr``: TransMorph with time-varying-field steps and an SPR λ head (METHOD §3).

Data flow for an input pair on the network grid (sizes divisible by :attr:`TransMorphTVFSPR.size_multiple`,
32 at the defaults; :meth:`SPRNetwork.forward` pads other sizes):

1. Both images are average-pooled 2× (the *half grid*); ``concat(moving, fixed)`` enters a Swin
   transformer: 4³ patch embedding (``embed_dim`` features), then one stage per entry of ``depths``
   (stage ``s`` at 1/(4·2^s) of the half grid with ``embed_dim·2^s`` features) of shifted-window
   self-attention blocks, patch merging (8 neighbours → 2× the features) between stages.
2. A convolutional decoder climbs back from the deepest stage, concatenating each finer stage's
   features, then the features of a convolution of the 2×-pooled pair (1/2 of the half grid).
3. Seven *time-varying-field* steps on the half grid: step ``t`` convolves ``concat(moving∘F_{t-1},
   fixed)``, decodes it with the shared decoder output into ``flow_features`` features and predicts
   an increment ``v_t``; the field is composed, ``F_t = F_{t-1} + v_t(x + F_{t-1}(x))``, and the
   moving image re-warped by ``F_t``.
4. λ head on the *sum* of the step features: 3³ conv ``flow_features → embed_dim/2 → embed_dim/2 → 1``.
5. ``F_7`` (×2 in value) and the λ logits are upsampled 2× trilinearly to the input grid.

A hyper TransMorph (``hyper`` code ranges, :mod:`svreg_core.models.film`) modulates the shared decoder's
output and every step's decoder output by a FiLM of the codes (α′, λ_max); the flow and λ heads only
read those features. 5,760 more parameters at the defaults.

``F_7`` is returned as the velocity; the caller integrates it by scaling and squaring (7 squarings)
as the paper does. Pooling and upsampling by exactly 2 treat voxels as cells (``align_corners=False``):
coarse voxel ``c`` covers fine voxels ``2c, 2c + 1``, which is the geometry under which a coarse
displacement times 2 is the fine one.

Differences from the authors' code, all deliberate: instance normalisation (no running statistics)
in every conv block, so training and evaluation behave alike at batch size 1; padded tokens of a
partial window are masked out of attention (results do not depend on the padding); windows larger
than a stage's token grid shrink to it along that axis, without shift.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svreg_core.models.base import SPRNetwork, init_lambda_head, init_velocity_head, positive_int, positive_ints
from svreg_core.models.film import FiLM, modulate
from svreg_core.models.registry import register_architecture
from svreg_core.transforms.warp import compose, warp

#: Side of the cubic patches of the patch embedding (voxels of the half grid).
PATCH_SIZE = 4

#: Negative slope of the LeakyReLU of the conv blocks (torch's default, as in the reference).
LEAKY_SLOPE = 0.01


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch per sample with probability ``rate``, rescale the rest."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def _partition(x: Tensor, window: tuple[int, ...]) -> Tensor:
    """``(B, D, H, W, C)`` (sizes multiples of ``window``) -> windows ``(B, nW, w0·w1·w2, C)``."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, window[0] * window[1] * window[2], c)


def _merge(windows: Tensor, window: tuple[int, ...], shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`_partition`: windows ``(B, nW, N, C)`` -> ``(B, *shape, C)``."""
    b, c = windows.shape[0], windows.shape[-1]
    d, h, w = shape
    x = windows.view(b, d // window[0], h // window[1], w // window[2], window[0], window[1], window[2], c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    The bias table covers every offset of the configured ``window``; a smaller effective window (a
    stage whose token grid is smaller than the window) uses the sub-table of its offsets.
    """

    def __init__(self, dim: int, heads: int, window: tuple[int, ...]) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.bias_table = nn.Parameter(torch.zeros(size, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self._index: dict[tuple[int, ...], Tensor] = {}

    def relative_bias(self, window: tuple[int, ...]) -> Tensor:
        """Bias ``(heads, N, N)`` between the ``N`` tokens of an effective ``window`` (≤ the configured one)."""
        if window not in self._index:
            coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in window), indexing="ij")).flatten(1)
            rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N), offsets in (-w, w)
            w = self.window
            self._index[window] = (((rel[0] + w[0] - 1) * (2 * w[1] - 1) + rel[1] + w[1] - 1) * (2 * w[2] - 1)
                                   + rel[2] + w[2] - 1)
        index = self._index[window].to(self.bias_table.device)
        return self.bias_table[index].permute(2, 0, 1)

    def forward(self, x: Tensor, window: tuple[int, ...], mask: Tensor | None) -> Tensor:
        """Attend within windows.

        Args:
            x: ``(B, nW, N, C)`` tokens of each window.
            window: the effective window (``N`` = its volume).
            mask: ``(nW, N, N)`` additive mask (0 or -inf) or ``None``.
        """
        b, nw, n, c = x.shape
        q, k, v = self.qkv(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_bias(window)  # (heads, N, N)
        if mask is not None:
            bias = bias + mask[:, None]  # (nW, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B, nW, heads, N, hd)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


def _region_ids(padded: int, size: int, window: int, shift: int) -> Tensor:
    """Per position of a padded, cyclically shifted axis: which region it came from.

    0/1/2 = the parts that a shift brings together in the last windows (as in Swin), 3 = padding.
    Tokens of different regions must not attend to each other.
    """
    pos = torch.arange(padded)
    ids = torch.where(pos < padded - window, 0, torch.where(pos < padded - shift, 1, 2))
    original = (pos + shift) % padded  # position before the shift by -shift
    return torch.where(original >= size, 3, ids)


class SwinBlock(nn.Module):
    """Pre-norm transformer block on windows of tokens, windows optionally shifted by half their size.

    Args:
        dim: token features.
        heads: attention heads (``dim`` divisible by it).
        window: window size in tokens per axis.
        shifted: shift the windows by ``window // 2`` (only along axes longer than the window).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, dim: int, heads: int, window: tuple[int, ...], shifted: bool,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.window = window
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, C)`` -> same shape."""
        shape = tuple(x.shape[1:4])
        window = tuple(min(w, n) for w, n in zip(self.window, shape))
        shift = tuple(w // 2 if self.shifted and n > w else 0 for w, n in zip(self.window, shape))
        padded = tuple(-(-n // w) * w for n, w in zip(shape, window))
        y = self.norm1(x)
        if padded != shape:
            y = F.pad(y, (0, 0, 0, padded[2] - shape[2], 0, padded[1] - shape[1], 0, padded[0] - shape[0]))
        if any(shift):
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        mask = None
        if any(shift) or padded != shape:
            ids = [_region_ids(p, n, w, s) for p, n, w, s in zip(padded, shape, window, shift)]
            region = (ids[0][:, None, None] * 4 + ids[1][None, :, None]) * 4 + ids[2][None, None, :]
            region = _partition(region[None, ..., None], window)[0, ..., 0]  # (nW, N)
            mask = torch.zeros(region.shape + region.shape[-1:], dtype=x.dtype)
            mask = mask.masked_fill(region[:, :, None] != region[:, None, :], float("-inf")).to(x.device)
        y = _merge(self.attn(_partition(y, window), window, mask), window, padded)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        y = y[:, :shape[0], :shape[1], :shape[2]]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the token grid: concatenate each 2³ neighbourhood (8·C), LayerNorm, linear to 2·C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, C)`` with even sizes -> ``(B, D/2, H/2, W/2, 2C)``."""
        b, d, h, w, c = x.shape
        x = x.view(b, d // 2, 2, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return self.reduction(self.norm(x.reshape(b, d // 2, h // 2, w // 2, 8 * c)))


class SwinEncoder(nn.Module):
    """Patch embedding and Swin stages; returns the layer-normalised features of every stage."""

    def __init__(self, in_channels: int, embed_dim: int, depths: Sequence[int], heads: Sequence[int],
                 window: tuple[int, ...], mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        self.patch_embed = nn.Conv3d(in_channels, embed_dim, PATCH_SIZE, stride=PATCH_SIZE)
        self.patch_norm = nn.LayerNorm(embed_dim)
        rates = torch.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.norms = nn.ModuleList()
        first = 0
        for stage, (depth, n_heads) in enumerate(zip(depths, heads)):
            dim = embed_dim * 2 ** stage
            self.stages.append(nn.Sequential(*(
                SwinBlock(dim, n_heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=rates[first + i])
                for i in range(depth))))
            first += depth
            self.norms.append(nn.LayerNorm(dim))
            if stage < len(depths) - 1:
                self.merges.append(PatchMerging(dim))
        self.apply(_init_transformer_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, C_in, D, H, W)`` (sizes multiples of 4·2^(stages-1)) -> ``[(B, C_s, D_s, H_s, W_s)]`` per stage."""
        x = self.patch_norm(self.patch_embed(x).permute(0, 2, 3, 4, 1))
        features = []
        for stage, blocks in enumerate(self.stages):
            x = blocks(x)
            features.append(self.norms[stage](x).permute(0, 4, 1, 2, 3))
            if stage < len(self.merges):
                x = self.merges[stage](x)
        return features


def _init_transformer_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3³ convolution (no bias), instance normalisation, LeakyReLU."""
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.InstanceNorm3d(out_channels), nn.LeakyReLU(LEAKY_SLOPE))


def _upsample(x: Tensor) -> Tensor:
    """2× trilinear upsampling, voxels as cells (see the module docstring)."""
    return F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)


class DecoderBlock(nn.Module):
    """Upsample 2×, concatenate a skip tensor, two conv blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_block(in_channels + skip_channels, out_channels),
                                   _conv_block(out_channels, out_channels))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat((_upsample(x), skip), dim=1))


@register_architecture
class TransMorphTVFSPR(SPRNetwork):
    """TransMorph-TVF with an SPR λ head (see the module docstring).

    Args:
        embed_dim: patch-embedding features (even); stage ``s`` has ``embed_dim·2^s``.
        depths: Swin blocks per stage (their number = the number of stages).
        num_heads: attention heads per stage (each stage's features divisible by it).
        window_size: attention window in tokens ``(i, j, k)``.
        mlp_ratio: MLP width relative to the token features.
        time_steps: number of TVF steps.
        flow_features: features of each step's decoder output (the input of the flow and λ heads).
        drop_path_rate: stochastic-depth rate of the last Swin block (linearly from 0 at the first).
        uniform: no λ head, λ ≡ 1.
        hyper: ``{"alpha_prime": [low, high], "lambda_max": [low, high]}``: condition the decoders on
            these codes (:class:`~svreg_core.models.film.CodeRanges`); ``None``: a plain network.
    """

    architecture = "transmorph-tvf-spr"

    def __init__(self, *, embed_dim: int = 96, depths: Sequence[int] = (4, 4, 5),
                 num_heads: Sequence[int] = (8, 8, 8), window_size: Sequence[int] = (5, 6, 7),
                 mlp_ratio: float = 4.0, time_steps: int = 7, flow_features: int = 16,
                 drop_path_rate: float = 0.3, uniform: bool = False, hyper: dict | None = None) -> None:
        embed_dim = positive_int("embed_dim", embed_dim)
        depths = positive_ints("depths", depths)
        heads = positive_ints("num_heads", num_heads, len(depths))
        window = positive_ints("window_size", window_size, 3)
        time_steps = positive_int("time_steps", time_steps)
        flow_features = positive_int("flow_features", flow_features)
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {embed_dim}")
        for stage, n_heads in enumerate(heads):
            if (embed_dim * 2 ** stage) % n_heads:
                raise ValueError(f"stage {stage} has {embed_dim * 2 ** stage} features, not divisible by "
                                 f"{n_heads} heads")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        if not isinstance(uniform, bool):
            raise ValueError(f"uniform must be true or false, got {uniform!r}")
        super().__init__(embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
                         mlp_ratio=float(mlp_ratio), time_steps=time_steps, flow_features=flow_features,
                         drop_path_rate=float(drop_path_rate), uniform=uniform, hyper=hyper)
        half = embed_dim // 2
        dims = [embed_dim * 2 ** s for s in range(len(depths))]
        self.encoder = SwinEncoder(2, embed_dim, depths, heads, tuple(window), float(mlp_ratio),
                                   float(drop_path_rate))
        self.decoder = nn.ModuleList(DecoderBlock(dims[s], dims[s - 1], dims[s - 1])
                                     for s in range(len(dims) - 1, 0, -1))
        self.pooled_conv = _conv_block(2, half)
        self.top_decoder = DecoderBlock(dims[0], half, half)
        self.step_convs = nn.ModuleList(_conv_block(2, half) for _ in range(time_steps))
        self.step_decoders = nn.ModuleList(DecoderBlock(half, half, flow_features) for _ in range(time_steps))
        flow_heads = [nn.Conv3d(flow_features, 3, 3, padding=1) for _ in range(time_steps)]
        for head in flow_heads:
            init_velocity_head(head)
        self.flow_heads = nn.ModuleList(flow_heads)
        self.lambda_head: nn.Sequential | None = None
        if not uniform:
            last = nn.Conv3d(half, 1, 3, padding=1)
            init_lambda_head(last)
            self.lambda_head = nn.Sequential(_conv_block(flow_features, half), _conv_block(half, half), last)
        self.film = None if self.code_ranges is None else FiLM(self.code_ranges, [half] + [flow_features] * time_steps)

    @property
    def size_multiple(self) -> int:
        """2 (pooling) · 4 (patches) · 2^(stages - 1): 32 at the defaults."""
        return 2 * PATCH_SIZE * 2 ** (len(self.encoder.stages) - 1)

    def predict(self, fixed: Tensor, moving: Tensor, codes: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """See :meth:`SPRNetwork.predict`."""
        films = None if self.film is None else self.film(codes)
        fixed_h, moving_h = F.avg_pool3d(fixed, 2), F.avg_pool3d(moving, 2)
        pair = torch.cat((moving_h, fixed_h), dim=1)
        features = self.encoder(pair)
        x = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            x = block(x, skip)
        x = self.top_decoder(x, self.pooled_conv(F.avg_pool3d(pair, 3, stride=2, padding=1)))
        if films is not None:
            x = modulate(x, films[0])
        field = torch.zeros_like(moving_h).expand(-1, 3, -1, -1, -1)
        warped = moving_h
        summed: Tensor | None = None
        steps = len(self.flow_heads)
        for t in range(steps):
            step_features = self.step_decoders[t](x, self.step_convs[t](torch.cat((warped, fixed_h), dim=1)))
            if films is not None:
                step_features = modulate(step_features, films[1 + t])
            summed = step_features if summed is None else summed + step_features
            field = compose(self.flow_heads[t](step_features), field)
            if t < steps - 1:
                warped = warp(moving_h, field)
        velocity = 2.0 * _upsample(field)
        logits = None if self.lambda_head is None else _upsample(self.lambda_head(summed))
        return velocity, logits
