"""DDPM++ and NCSN++ (Song et al. 2021) as configured by EDM: `SongUNet`.

Constructor arguments, forward arguments, module names and parameter names are those of NVlabs/edm's
`SongUNet`, so its state dicts load with `strict=True` and its saved constructor arguments build this class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from diffspace.errors import ConfigError
from diffspace.nets.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    map_conditioning,
)

__all__ = ["SongUNet", "check_unet_args"]


def check_unet_args(img_resolution: int, in_channels: int, out_channels: int, channel_mult: Sequence[int],
                    num_blocks: int, label_dim: int, augment_dim: int) -> None:
    """Raise ConfigError for sizes a U-Net cannot be built with."""
    levels = len(channel_mult)
    if levels < 1:
        raise ConfigError("channel_mult is empty: give one multiplier per resolution, e.g. [2, 2, 2]")
    if int(img_resolution) < 1 or int(img_resolution) % (1 << (levels - 1)):
        raise ConfigError(f"img_resolution={img_resolution} is not divisible by 2**{levels - 1}: use a multiple of "
                          f"{1 << (levels - 1)} or fewer entries in channel_mult")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_blocks", num_blocks)):
        if int(value) < 1:
            raise ConfigError(f"{name}={value} must be a positive integer")
    for name, value in (("label_dim", label_dim), ("augment_dim", augment_dim)):
        if int(value) < 0:
            raise ConfigError(f"{name}={value} must be >= 0 (0 disables it)")


class SongUNet(nn.Module):
    """DDPM++ (`embedding_type='positional'`, standard encoder, filter [1,1]) or NCSN++ (`'fourier'`,
    residual encoder, filter [1,3,3,1]) U-Net.

    forward(x [B,C,H,W], noise_labels [B], class_labels [B,label_dim] one-hot or None,
    augment_labels [B,augment_dim] or None) -> [B,out_channels,H,W].
    `class_labels=None` on a conditional net means all-zero labels (what EDM's preconditioners pass);
    `augment_labels=None` skips the bias-free augmentation projection, which equals zero labels (§1.6).
    """

    def __init__(self,
        img_resolution: int,                          # Image resolution at input/output.
        in_channels: int,                             # Colour channels at input.
        out_channels: int,                            # Colour channels at output.
        label_dim: int = 0,                           # Number of class labels, 0 = unconditional.
        augment_dim: int = 0,                         # Augmentation label dimension, 0 = no augmentation.
        model_channels: int = 128,                    # Base multiplier for the number of channels.
        channel_mult: Sequence[int] = (1, 2, 2, 2),   # Per-resolution channel multipliers.
        channel_mult_emb: int = 4,                    # Embedding width = model_channels * this.
        num_blocks: int = 4,                          # Residual blocks per resolution.
        attn_resolutions: Sequence[int] = (16,),      # Resolutions with self-attention.
        dropout: float = 0.10,                        # Dropout probability inside the blocks.
        label_dropout: float = 0,                     # Class-label dropout (classifier-free guidance).
        embedding_type: str = "positional",           # 'positional' (DDPM++) or 'fourier' (NCSN++).
        channel_mult_noise: int = 1,                  # Noise embedding width = model_channels * this.
        encoder_type: str = "standard",               # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++).
        decoder_type: str = "standard",               # 'standard' or 'skip'.
        resample_filter: Sequence[int] = (1, 1),      # [1,1] (DDPM++) or [1,3,3,1] (NCSN++).
    ):
        if embedding_type not in ("fourier", "positional"):
            raise ConfigError(f"embedding_type={embedding_type!r}: choose 'positional' or 'fourier'")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ConfigError(f"encoder_type={encoder_type!r}: choose 'standard', 'skip' or 'residual'")
        if decoder_type not in ("standard", "skip"):
            raise ConfigError(f"decoder_type={decoder_type!r}: choose 'standard' or 'skip'")
        check_unet_args(img_resolution, in_channels, out_channels, channel_mult, num_blocks, label_dim, augment_dim)
        super().__init__()
        self.init_kwargs = dict(
            img_resolution=img_resolution, in_channels=in_channels, out_channels=out_channels,
            label_dim=label_dim, augment_dim=augment_dim, model_channels=model_channels,
            channel_mult=list(channel_mult), channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
            attn_resolutions=list(attn_resolutions), dropout=dropout, label_dropout=label_dropout,
            embedding_type=embedding_type, channel_mult_noise=channel_mult_noise, encoder_type=encoder_type,
            decoder_type=decoder_type, resample_filter=list(resample_filter),
        )
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )

        # Mapping: noise (+ label + augmentation) embedding -> 2-layer MLP.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

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
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
              augment_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Conditioning vector [B, emb_channels] fed to every block."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos]
        return map_conditioning(self, emb, class_labels, augment_labels, batch)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels, augment_labels, x.shape[0])

        # Encoder: main path, plus the downsampled-input path of the skip/residual encoders.
        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder: concatenate skips where the block expects more channels; output via the aux head(s).
        out = None
        tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out
