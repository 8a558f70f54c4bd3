"""ADM (Dhariwal & Nichol 2021) as configured by EDM: `DhariwalUNet`.

Constructor arguments, forward arguments, module names and parameter names are those of NVlabs/edm's
`DhariwalUNet`, so its state dicts load with `strict=True` and its saved constructor arguments build this class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from diffspace.nets.layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock, class_labels_in
from diffspace.nets.songunet import check_unet_args

__all__ = ["DhariwalUNet"]


class DhariwalUNet(nn.Module):
    """ADM U-Net: positional noise embedding, adaptive (scale, shift) conditioning, multi-head attention.

    forward(x [B,C,H,W], noise_labels [B], class_labels [B,label_dim] one-hot or None,
    augment_labels [B,augment_dim] or None) -> [B,out_channels,H,W]. For iDDPM-style nets that also
    predict a variance, pass `out_channels = 2 * in_channels`; the preconditioner keeps the first half.
    `class_labels=None` on a conditional net means all-zero labels; `augment_labels=None` skips the
    zero-initialised, bias-free augmentation projection, which equals zero labels (§1.6).
    """

    def __init__(self,
        img_resolution: int,                          # Image resolution at input/output.
        in_channels: int,                             # Colour channels at input.
        out_channels: int,                            # Colour channels at output.
        label_dim: int = 0,                           # Number of class labels, 0 = unconditional.
        augment_dim: int = 0,                         # Augmentation label dimension, 0 = no augmentation.
        model_channels: int = 192,                    # Base multiplier for the number of channels.
        channel_mult: Sequence[int] = (1, 2, 3, 4),   # Per-resolution channel multipliers.
        channel_mult_emb: int = 4,                    # Embedding width = model_channels * this.
        num_blocks: int = 3,                          # Residual blocks per resolution.
        attn_resolutions: Sequence[int] = (32, 16, 8),  # Resolutions with self-attention.
        dropout: float = 0.10,                        # Dropout probability inside the blocks.
        label_dropout: float = 0,                     # Class-label dropout (classifier-free guidance).
    ):
        check_unet_args(img_resolution, in_channels, out_channels, channel_mult, num_blocks, label_dim, augment_dim)
        super().__init__()
        self.init_kwargs = dict(
            img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels,
            label_dim=label_dim, augment_dim=augment_dim, model_channels=model_channels,
            channel_mult=list(channel_mult), channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
            attn_resolutions=list(attn_resolutions), dropout=dropout, label_dropout=label_dropout,
        )
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                            init_zero=init_zero)

        # Mapping: noise (+ augmentation) embedding -> 2-layer MLP, + label embedding.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                    init_weight=math.sqrt(label_dim))

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Conditioning vector [B, emb_channels] fed to every block."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = class_labels_in(self.map_label, class_labels, like=emb, batch=batch, dropout=self.label_dropout,
                                     training=self.training)
            emb = emb + self.map_label(labels)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels, augment_labels, x.shape[0])
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
