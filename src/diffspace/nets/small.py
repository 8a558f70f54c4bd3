"""Small networks for low-dimensional data (2-D toy sets, mixtures, tiny flattened images).

`MLP` follows the conventions of the U-Nets: the noise label is embedded (positional or
Fourier), class labels enter through `map_label` applied to `onehot·sqrt(label_dim)`, augmentation labels
through a bias-free `map_augment` (so `augment_labels=None` equals zero labels), and the resulting vector
conditions every residual block by an additive affine shift.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffspace.errors import ConfigError
from diffspace.nets.layers import FourierEmbedding, Linear, PositionalEmbedding, map_conditioning

__all__ = ["MLP", "MLPBlock", "LayerNorm"]


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension, parameters cast to the input's dtype."""

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class MLPBlock(nn.Module):
    """Pre-norm residual block: x + fc1(dropout(SiLU(fc0(SiLU(norm(x))) + affine(emb)))), scaled by sqrt(½)."""

    def __init__(self, hidden: int, emb_channels: int, dropout: float = 0):
        super().__init__()
        init = dict(init_mode="xavier_uniform")
        self.dropout = dropout
        self.norm = LayerNorm(hidden)
        self.fc0 = Linear(hidden, hidden, **init)
        self.affine = Linear(emb_channels, hidden, **init)
        self.fc1 = Linear(hidden, hidden, init_mode="xavier_uniform", init_weight=1e-5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.fc0(F.silu(self.norm(x)))
        h = F.silu(h + self.affine(emb).to(h.dtype))
        h = self.fc1(F.dropout(h, p=self.dropout, training=self.training))
        return (x + h) * math.sqrt(0.5)


class MLP(nn.Module):
    """Residual SiLU MLP denoiser backbone for data of shape [B, *shape] with prod(shape) = in_features.

    forward(x [B, ...], noise_labels [B], class_labels [B,label_dim] or None, augment_labels
    [B,augment_dim] or None) -> tensor shaped like x (when out_features == in_features) or [B, out_features].
    Inputs with more than two dimensions are flattened after the batch dimension and reshaped back.
    """

    def __init__(self,
        in_features: int,                    # Data dimension (flattened).
        out_features: int | None = None,     # Output dimension, default in_features.
        hidden: int = 256,                   # Width of the residual blocks.
        num_layers: int = 4,                 # Number of residual blocks.
        label_dim: int = 0,                  # Number of class labels, 0 = unconditional.
        augment_dim: int = 0,                # Augmentation label dimension, 0 = no augmentation.
        dropout: float = 0,                  # Dropout probability inside the blocks.
        label_dropout: float = 0,            # Class-label dropout (classifier-free guidance).
        noise_channels: int = 64,            # Width of the noise embedding.
        emb_channels: int | None = None,     # Width of the conditioning vector, default hidden.
        embedding_type: str = "positional",  # 'positional' or 'fourier'.
        fourier_scale: float = 16,           # Frequency scale of the Fourier embedding.
    ):
        out_features = in_features if out_features is None else out_features
        for name, value in (("in_features", in_features), ("out_features", out_features), ("hidden", hidden),
                            ("num_layers", num_layers), ("noise_channels", noise_channels)):
            if int(value) < 1:
                raise ConfigError(f"{name}={value} must be a positive integer")
        if noise_channels % 2:
            raise ConfigError(f"noise_channels={noise_channels} must be even (cos and sin halves)")
        for name, value in (("label_dim", label_dim), ("augment_dim", augment_dim)):
            if int(value) < 0:
                raise ConfigError(f"{name}={value} must be >= 0 (0 disables it)")
        if embedding_type not in ("positional", "fourier"):
            raise ConfigError(f"embedding_type={embedding_type!r}: choose 'positional' or 'fourier'")
        super().__init__()
        emb_channels = hidden if emb_channels is None else emb_channels
        self.init_kwargs = dict(
            in_features=in_features, out_features=out_features, hidden=hidden, num_layers=num_layers,
            label_dim=label_dim, augment_dim=augment_dim, dropout=dropout, label_dropout=label_dropout,
            noise_channels=noise_channels, emb_channels=emb_channels, embedding_type=embedding_type,
            fourier_scale=fourier_scale,
        )
        self.in_features = in_features
        self.out_features = out_features
        self.label_dropout = label_dropout
        init = dict(init_mode="xavier_uniform")

        # Mapping.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels, scale=fourier_scale)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Trunk.
        self.inp = Linear(in_features, hidden, **init)
        self.blocks = nn.ModuleList(MLPBlock(hidden, emb_channels, dropout) for _ in range(num_layers))
        self.out_norm = LayerNorm(hidden)
        self.out = Linear(hidden, out_features, init_mode="xavier_uniform", init_weight=1e-5)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Conditioning vector [B, emb_channels] fed to every block."""
        emb = self.map_noise(noise_labels)
        return map_conditioning(self, emb, class_labels, augment_labels, batch)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise ConfigError(f"MLP expects {self.in_features} features per sample, got input shape "
                              f"{tuple(shape)}: build it with in_features={flat.shape[1]}")
        emb = self.embed(noise_labels, class_labels, augment_labels, shape[0])
        h = self.inp(flat)
        for block in self.blocks:
            h = block(h, emb)
        y = self.out(F.silu(self.out_norm(h)))
        return y.reshape(shape) if self.out_features == self.in_features else y
