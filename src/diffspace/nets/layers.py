"""Building blocks shared by SongUNet (DDPM++/NCSN++), DhariwalUNet (ADM) and the small nets.

Module structure, parameter names and buffers follow NVlabs/edm's `training/networks.py`, so that a state
dict saved by EDM loads into these modules with `strict=True`. Every layer casts its own parameters to the
input's dtype, so a float32 network can run on float16 activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from diffspace.errors import ConfigError

__all__ = [
    "weight_init", "Linear", "Conv2d", "GroupNorm", "attention_weights", "UNetBlock",
    "PositionalEmbedding", "FourierEmbedding",
]

_INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor of `shape` with the variance of the named Glorot (xavier) or He (kaiming) rule."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ConfigError(f"unknown init mode {mode!r}: choose one of {', '.join(_INIT_MODES)}")


def class_labels_in(map_label: nn.Module, class_labels: torch.Tensor | None, *, like: torch.Tensor, batch: int,
                    dropout: float, training: bool) -> torch.Tensor:
    """Class labels ready for `map_label`: zeros when None (what EDM's preconditioners pass), and each
    sample's labels zeroed with probability `dropout` while training (classifier-free guidance)."""
    labels = class_labels
    if labels is None:
        labels = torch.zeros([1, map_label.in_features], device=like.device, dtype=like.dtype)
    if training and dropout:
        keep = torch.rand([batch, 1], device=like.device) >= dropout
        labels = labels * keep.to(labels.dtype)
    return labels


def map_conditioning(net: nn.Module, emb: torch.Tensor, class_labels: torch.Tensor | None,
                     augment_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
    """EDM's mapping network after the noise embedding: + class (one-hot·sqrt(label_dim)) and augmentation
    projections, then two SiLU layers (`net.map_label`, `net.map_augment`, `net.map_layer0/1`)."""
    if net.map_label is not None:
        labels = class_labels_in(net.map_label, class_labels, like=emb, batch=batch, dropout=net.label_dropout,
                                 training=net.training)
        emb = emb + net.map_label(labels * math.sqrt(net.map_label.in_features))
    if net.map_augment is not None and augment_labels is not None:
        emb = emb + net.map_augment(augment_labels)
    emb = F.silu(net.map_layer0(emb))
    return F.silu(net.map_layer1(emb))


class Linear(nn.Module):
    """Fully connected layer y = x Wᵀ + b with parameters `weight` [out, in] and optional `bias` [out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y


def _resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D low-pass kernel [1, 1, k, k] from 1-D taps, normalised to unit sum."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return torch.outer(f, f)[None, None] / f.sum().square()


class Conv2d(nn.Module):
    """2-D convolution ('same' padding) with optional 2× up/downsampling by a FIR filter.

    `kernel=0` gives a pure resampling layer without weights. The filter is the buffer `resample_filter`
    (registered only when `up` or `down`). `fused_resample` convolves and resamples in the other order,
    as EDM does for NCSN++'s residual input path; the result differs from the unfused one at the borders.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        if up and down:
            raise ConfigError("Conv2d cannot both upsample and downsample: pass up=True or down=True")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        k2 = kernel * kernel
        fans = dict(mode=init_mode, fan_in=in_channels * k2, fan_out=out_channels * k2)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(weight_init(shape, **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if up or down else None)

    def _up(self, x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
        """Zero-insertion 2× upsampling followed by the filter (gain 4 keeps the mean)."""
        c = x.shape[1]
        return F.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=padding)

    def _down(self, x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
        """Filter followed by 2× decimation."""
        c = x.shape[1]
        return F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            x = self._up(x, f, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._down(x, f, 0)
        else:
            if self.up:
                x = self._up(x, f, f_pad)
            if self.down:
                x = self._down(x, f, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with at most `num_groups` groups and at least `min_channels_per_group` per group."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        if num_channels % self.num_groups:
            raise ConfigError(f"GroupNorm over {num_channels} channels cannot use {self.num_groups} groups: "
                              f"use channel counts (model_channels x channel_mult) that are multiples of 32")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax_k(qᵀk / sqrt(c)) for q, k of shape [N, c, L], computed in float32, returned in q's dtype."""
    scale = 1 / math.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k * scale).to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block with embedding conditioning, optional 2× resampling and optional self-attention.

    The union of the blocks of DDPM++, NCSN++ and ADM (EDM's `UNetBlock`): GroupNorm → SiLU → conv0
    (resampling) → add (or scale/shift by) an affine map of the embedding → GroupNorm → SiLU → dropout →
    conv1, plus a skip path; the sum is multiplied by `skip_scale`. With attention, a multi-head
    self-attention layer (qkv 1×1 conv, proj 1×1 conv) follows with its own residual connection.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: dict | None = None, init_zero: dict | None = None,
                 init_attn: dict | None = None):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.conv0(F.silu(self.norm0(x)))

        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))

        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(residual) if self.skip is not None else residual)
        x = x * self.skip_scale

        if self.num_heads:
            # Channel layout of qkv per head: [c, (q, k, v)] interleaved, as in EDM.
            n, c = x.shape[0], x.shape[1]
            qkv = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1)
            q, k, v = qkv.unbind(2)
            w = attention_weights(q, k)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = self.proj(a.reshape(x.shape)) + x
            x = x * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x·ω_j), sin(x·ω_j)], ω_j = (1/max_positions)^(j/(n/2 − endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (j / (half - (1 if self.endpoint else 0)))
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2π x·f_j), sin(2π x·f_j)], f_j ~ N(0, scale²) (buffer `freqs`)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
