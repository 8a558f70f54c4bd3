"""Non-leaking geometric augmentation (Karras et al. 2022, EDM).

Each image is x/y-flipped, scaled, rotated, anisotropically scaled and translated with small probabilities, and the
network is told what was done through a 9-dimensional label vector. At sampling time the label is zero (or absent),
so the model produces un-augmented images: the augmentation does not "leak" into the generated distribution.

Label order (``AugmentPipe.label_names``)::

    [xflip, yflip, scale, rot_cos-1, rot_sin, aniso_x, aniso_y, tx, ty]

A transform that is not applied to an image (or is disabled) contributes zeros.

Randomness. ``AugmentPipe.draw`` takes every random number from ``generator`` (torch's global RNG when it is None),
on the generator's device (else on the images' device), in a fixed order that mirrors NVlabs/edm: for each enabled
transform, in the order x-flip, y-flip, scale, rotation, anisotropy, translation, first the transform's value(s),
then the uniform number(s) that decide whether it is applied. Disabled transforms (multiplier 0) draw nothing. So a
call consumes a number of draws that depends only on the batch size and the configuration, and saving and restoring
the generator's state (``generator.get_state()``) reproduces the augmentation bit for bit after a resume.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from diffspace.errors import ConfigError, DataError

# Daubechies least-asymmetric wavelet 'sym6': decomposition low-pass filter (PyWavelets dec_lo, as used by EDM).
# Orthonormal: the taps sum to sqrt(2) and their squares to 1.
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)
_PAD = len(SYM6) // 4  # extra border (original pixels) kept around the output for the down-sampling filter

LABEL_NAMES = ("xflip", "yflip", "scale", "rot_cos_m1", "rot_sin", "aniso_x", "aniso_y", "tx", "ty")


# ----------------------------------------------------------------------------------------------------------------
# Batched 3x3 homogeneous matrices; pixel coordinates, x to the right, y downwards.

def _affine(a: torch.Tensor, b, c, d, e, f) -> torch.Tensor:
    """[n,3,3] matrices [[a,b,c],[d,e,f],[0,0,1]] from [n] tensors or scalars."""
    z, o = torch.zeros_like(a), torch.ones_like(a)
    rows = [a, b, c, d, e, f, z, z, o]
    return torch.stack([r if torch.is_tensor(r) else torch.full_like(a, r) for r in rows], dim=-1).view(-1, 3, 3)


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return _affine(torch.ones_like(tx), 0.0, tx, 0.0, 1.0, ty)


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return _affine(sx, 0.0, 0.0, 0.0, sy, 0.0)


def _rotate(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    return _affine(c, -s, 0.0, s, c, 0.0)


def _const(rows: list[list[float]], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------------------------
# The anti-aliased resampler.

def _sym6_weight(channels: int, like: torch.Tensor, vertical: bool) -> torch.Tensor:
    """Depthwise weight [C,1,12,1] (vertical) or [C,1,1,12] (horizontal)."""
    f = torch.tensor(SYM6, dtype=like.dtype, device=like.device)
    shape = (1, 1, len(SYM6), 1) if vertical else (1, 1, 1, len(SYM6))
    return f.view(shape).repeat(channels, 1, 1, 1)


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Zero-insertion 2x upsampling and sym6 filtering: out[m] = sum_k x[k] h[m + 5 - 2k] on each axis (size 2L)."""
    c = x.shape[1]
    x = F.conv_transpose2d(x, _sym6_weight(c, x, False), stride=(1, 2), padding=(0, 5), groups=c)
    return F.conv_transpose2d(x, _sym6_weight(c, x, True), stride=(2, 1), padding=(5, 0), groups=c)


def _downsample2x(x: torch.Tensor) -> torch.Tensor:
    """sym6 filtering and 2x decimation: out[n] = sum_k h[k] x[2n - 5 + k] on each axis (size L/2)."""
    c = x.shape[1]
    x = F.conv2d(x, _sym6_weight(c, x, False), stride=(1, 2), padding=(0, 5), groups=c)
    return F.conv2d(x, _sym6_weight(c, x, True), stride=(2, 1), padding=(5, 0), groups=c)


def resample(images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Warp each image by its inverse affine map with EDM's anti-aliased resampler (as in EDM).

    ``G_inv[i]`` ([n,3,3]) maps an output pixel position to the input position it is read from; positions are in
    pixels from the image centre, x to the right, y downwards. Steps: reflect-pad by the margin the maps need,
    upsample 2x with the sym6 low-pass, bilinear ``grid_sample`` (zero padding), downsample 2x with the same filter.
    Linear in ``images`` and differentiable; ``G_inv = I`` returns the input up to rounding (sym6 is orthonormal).
    As in EDM, the 2x grids treat sym6 as centred on tap 5 while its centroid is 5.098: a map that reverses an
    axis (rotation by 90 or 180 degrees, say) reads the source 0.098 px off along that axis.
    """
    n, _, H, W = images.shape
    G_inv = G_inv.to(images.device, torch.float64 if images.dtype == torch.float64 else torch.float32)
    cx, cy = (W - 1) / 2, (H - 1) / 2

    # Reflect-pad just enough that the output corners plus the filter support read real pixels.
    corners = _const([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], G_inv)
    src = (G_inv @ corners)[:, :2].transpose(0, 1).reshape(2, -1)  # [xy, n*4]
    need = torch.cat([-src, src]).amax(dim=1) + _const([2 * _PAD - cx, 2 * _PAD - cy] * 2, G_inv)
    need = torch.minimum(need.clamp(min=0), _const([W - 1, H - 1] * 2, G_inv))
    mx0, my0, mx1, my1 = (int(v) for v in need.ceil().tolist())
    x = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    x = x.contiguous(memory_format=torch.channels_last)  # depthwise convs run ~10x faster this way on CPU
    Hp, Wp = H + my0 + my1, W + mx0 + mx1

    x = _upsample2x(x)  # [n, C, 2Hp, 2Wp]; upsampled pixel m sits at padded pixel m/2

    # Normalised output coords (align_corners=False) of a [2(H+2P), 2(W+2P)] grid -> centred output pixels.
    Wo, Ho = W + 2 * _PAD, H + 2 * _PAD
    from_out = _const([[Wo / 2, 0, 0.25], [0, Ho / 2, 0.25], [0, 0, 1]], G_inv)
    # Centred input pixels -> normalised coords of the upsampled padded image.
    to_in = _const([[2 / Wp, 0, (4 * (cx + mx0) + 1) / (2 * Wp) - 1],
                    [0, 2 / Hp, (4 * (cy + my0) + 1) / (2 * Hp) - 1], [0, 0, 1]], G_inv)
    theta = (to_in @ G_inv @ from_out)[:, :2].to(images.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], 2 * Ho, 2 * Wo], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return _downsample2x(x)[:, :, _PAD:-_PAD, _PAD:-_PAD]


# ----------------------------------------------------------------------------------------------------------------
# The pipeline.

class AugmentParams(NamedTuple):
    """One draw of the pipeline for a batch of n images."""

    xflip: torch.Tensor    # [n] bool
    yflip: torch.Tensor    # [n] bool
    G_inv: torch.Tensor    # [n,3,3] inverse geometric map (output -> input pixel positions from the centre)
    labels: torch.Tensor   # [n,9] float32, order LABEL_NAMES


def _check_nonneg(**values: float) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"augmentation {name}={v} is invalid: use a finite value >= 0")


class AugmentPipe(torch.nn.Module):
    """EDM's geometric augmentation pipeline with its 9 non-leaking labels (as in EDM).

    Each transform is applied to an image with probability ``min(1, multiplier * p)``; the x- and y-flips, once
    active, flip with probability 1/2 (so an image is x-flipped with probability ``min(1, xflip * p) / 2``; with
    EDM's ``xflip=1e8`` and any ``p >= 1e-8`` that is exactly 1/2, and with ``p = 0`` nothing is ever applied).
    Defaults are EDM's training configuration ``AugmentPipe(p, xflip=1e8, yflip=1, scale=1, rotate_frac=1,
    aniso=1, translate_frac=1)``; colour transforms and integer blits are not implemented.

    Differences from NVlabs/edm: the label vector always has 9 columns (EDM omits columns of disabled transforms;
    identical with the default configuration), and only images whose geometric map is not the identity are
    resampled (EDM resamples the whole batch; the others then differ only by rounding). As in EDM, the anisotropy
    label w (cos r, sin r) is the same for (w, r) and (-w, r + pi), a stretch and a squeeze along r.
    """

    augment_dim = 9
    label_names = LABEL_NAMES

    def __init__(
        self,
        p: float = 0.12,
        xflip: float = 1e8,
        yflip: float = 1,
        scale: float = 1,
        rotate_frac: float = 1,
        aniso: float = 1,
        translate_frac: float = 1,
        scale_std: float = 0.2,
        rotate_frac_max: float = 1,
        aniso_std: float = 0.2,
        aniso_rotate_prob: float = 0.5,
        translate_frac_std: float = 0.125,
    ):
        super().__init__()
        self.init_kwargs = dict(p=p, xflip=xflip, yflip=yflip, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
                                translate_frac=translate_frac, scale_std=scale_std, rotate_frac_max=rotate_frac_max,
                                aniso_std=aniso_std, aniso_rotate_prob=aniso_rotate_prob,
                                translate_frac_std=translate_frac_std)
        self.init_kwargs = {k: float(v) for k, v in self.init_kwargs.items()}
        _check_nonneg(**self.init_kwargs)
        if self.init_kwargs["p"] > 1 or self.init_kwargs["aniso_rotate_prob"] > 1:
            raise ConfigError(f"augmentation p={p}, aniso_rotate_prob={aniso_rotate_prob}: probabilities must be "
                              "in [0, 1]")
        self.p = self.init_kwargs["p"]                                  # Overall probability.
        self.xflip = self.init_kwargs["xflip"]                          # Multiplier for x-flip.
        self.yflip = self.init_kwargs["yflip"]                          # Multiplier for y-flip.
        self.scale = self.init_kwargs["scale"]                          # Multiplier for isotropic scaling.
        self.rotate_frac = self.init_kwargs["rotate_frac"]              # Multiplier for arbitrary rotation.
        self.aniso = self.init_kwargs["aniso"]                          # Multiplier for anisotropic scaling.
        self.translate_frac = self.init_kwargs["translate_frac"]        # Multiplier for fractional translation.
        self.scale_std = self.init_kwargs["scale_std"]                  # log2 std of isotropic scaling.
        self.rotate_frac_max = self.init_kwargs["rotate_frac_max"]      # Rotation range, 1 = full circle.
        self.aniso_std = self.init_kwargs["aniso_std"]                  # log2 std of anisotropic scaling.
        self.aniso_rotate_prob = self.init_kwargs["aniso_rotate_prob"]  # Prob. of a rotated anisotropy frame.
        self.translate_frac_std = self.init_kwargs["translate_frac_std"]  # Translation std / image size.

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.init_kwargs.items())

    @torch.no_grad()
    def draw(self, batch_size: int, height: int, width: int, *, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> AugmentParams:
        """Draw flips, the inverse geometric maps and the labels for ``batch_size`` images of ``height x width``.

        Random numbers come from ``generator`` on its device (global RNG on ``device`` when it is None), in the
        order given in the module docstring; the result lives on that device.
        """
        n = int(batch_size)
        dev = generator.device if generator is not None else torch.device(device if device is not None else "cpu")
        rand = lambda *shape: torch.rand(shape, generator=generator, device=dev)
        randn = lambda *shape: torch.randn(shape, generator=generator, device=dev)
        zero = torch.zeros(n, device=dev)
        labels = torch.zeros(n, 9, device=dev)
        G_inv = torch.eye(3, device=dev).expand(n, 3, 3)
        flips = []

        for mult in (self.xflip, self.yflip):  # Flip: coin, then whether active.
            w = torch.zeros(n, dtype=torch.bool, device=dev)
            if mult > 0:
                coin = torch.randint(2, (n,), generator=generator, device=dev)
                w = (coin == 1) & (rand(n) < mult * self.p)
            flips.append(w)
        labels[:, 0], labels[:, 1] = flips[0], flips[1]

        if self.scale > 0:  # Isotropic scaling by 2^(0.2 w).
            w = randn(n)
            w = torch.where(rand(n) < self.scale * self.p, w, zero)
            s = torch.exp2(w * self.scale_std)
            G_inv = G_inv @ _scale(1 / s, 1 / s)
            labels[:, 2] = w

        if self.rotate_frac > 0:  # Rotation by w ~ U(-pi, pi).
            w = (rand(n) * 2 - 1) * (math.pi * self.rotate_frac_max)
            w = torch.where(rand(n) < self.rotate_frac * self.p, w, zero)
            G_inv = G_inv @ _rotate(w)
            labels[:, 3], labels[:, 4] = w.cos() - 1, w.sin()

        if self.aniso > 0:  # Stretch 2^(0.2 w) along direction r, 2^(-0.2 w) across it.
            w, r = randn(n), (rand(n) * 2 - 1) * math.pi
            w = torch.where(rand(n) < self.aniso * self.p, w, zero)
            r = torch.where(rand(n) < self.aniso_rotate_prob, r, zero)
            s = torch.exp2(w * self.aniso_std)
            frame = torch.where(w != 0, r, zero)  # keep unapplied maps exactly I (rounding of R(-r) R(r))
            G_inv = G_inv @ _rotate(-frame) @ _scale(1 / s, s) @ _rotate(frame)
            labels[:, 5], labels[:, 6] = w * r.cos(), w * r.sin()

        if self.translate_frac > 0:  # Shift by 0.125 (W w_x, H w_y) pixels.
            w = randn(2, n)
            w = torch.where(rand(1, n) < self.translate_frac * self.p, w, torch.zeros_like(w))
            shift = self.translate_frac_std * torch.stack([w[0] * width, w[1] * height])
            G_inv = G_inv @ _translate(-shift[0], -shift[1])
            labels[:, 7], labels[:, 8] = w[0], w[1]

        return AugmentParams(flips[0], flips[1], G_inv.contiguous(), labels)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply drawn parameters: pixel flips, then one resampling of the images whose map is not the identity."""
        dev = images.device
        xflip, yflip, G_inv = params.xflip.to(dev), params.yflip.to(dev), params.G_inv.to(dev)
        images = torch.where(xflip.view(-1, 1, 1, 1), images.flip(3), images)
        images = torch.where(yflip.view(-1, 1, 1, 1), images.flip(2), images)
        moved = (G_inv != torch.eye(3, device=dev)).flatten(1).any(dim=1)
        if bool(moved.all()):
            return resample(images, G_inv)
        if bool(moved.any()):
            idx = moved.nonzero().squeeze(1)
            images = images.index_copy(0, idx, resample(images[idx], G_inv[idx]))
        return images

    def forward(self, images: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,C,H,W] -> (augmented images [B,C,H,W], labels [B,9] float32), both on the images' device."""
        if images.ndim != 4 or not images.is_floating_point() or min(images.shape[2:]) < 2:
            raise DataError(f"augmentation needs float images [B,C,H,W] with H, W >= 2, got {images.dtype} "
                            f"{tuple(images.shape)}: convert the batch to float [B,C,H,W]")
        n, _, H, W = images.shape
        params = self.draw(n, H, W, generator=generator, device=images.device)
        out = self.apply(images, params)
        cl = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        out = out.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return out, params.labels.to(images.device)


class AugmentPoints2D(torch.nn.Module):
    """The same non-leaking scheme for 2-D points x [B,2]: x-flip and rotation, labels [B,3].

    Labels ``[xflip, rot_cos-1, rot_sin]``, zero where a transform is not applied. x-flip maps (x0, x1) to
    (-x0, x1); it is active with probability ``min(1, xflip * p)`` and then flips with probability 1/2 (so
    ``p=1, xflip=1`` flips half the points). Rotation, with probability ``min(1, rotate * p)``, turns the (flipped)
    point counter-clockwise by theta ~ U(-pi rotate_max, pi rotate_max) about the origin: the same sense as the
    image pipeline's rotation seen on screen. Random numbers are drawn as in ``AugmentPipe`` (coin, then activation,
    for the flip; angle, then activation, for the rotation) from ``generator`` on its device.
    """

    augment_dim = 3
    label_names = ("xflip", "rot_cos_m1", "rot_sin")

    def __init__(self, p: float = 1.0, xflip: float = 1.0, rotate: float = 0.0, rotate_max: float = 1.0):
        super().__init__()
        self.init_kwargs = {k: float(v) for k, v in dict(p=p, xflip=xflip, rotate=rotate,
                                                         rotate_max=rotate_max).items()}
        _check_nonneg(**self.init_kwargs)
        if self.init_kwargs["p"] > 1:
            raise ConfigError(f"augmentation p={p} is not a probability: use a value in [0, 1]")
        self.p, self.xflip = self.init_kwargs["p"], self.init_kwargs["xflip"]
        self.rotate, self.rotate_max = self.init_kwargs["rotate"], self.init_kwargs["rotate_max"]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.init_kwargs.items())

    def forward(self, x: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,2] -> (augmented points [B,2], labels [B,3] float32)."""
        if x.ndim != 2 or x.shape[1] != 2 or not x.is_floating_point():
            raise DataError(f"AugmentPoints2D needs float points [B,2], got {x.dtype} {tuple(x.shape)}")
        n = x.shape[0]
        dev = generator.device if generator is not None else x.device
        labels = torch.zeros(n, 3, device=dev)
        if self.xflip > 0:
            coin = torch.randint(2, (n,), generator=generator, device=dev)
            labels[:, 0] = (coin == 1) & (torch.rand(n, generator=generator, device=dev) < self.xflip * self.p)
        if self.rotate > 0:
            w = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * (math.pi * self.rotate_max)
            active = torch.rand(n, generator=generator, device=dev) < self.rotate * self.p
            w = torch.where(active, w, torch.zeros_like(w))
            labels[:, 1], labels[:, 2] = w.cos() - 1, w.sin()
        labels = labels.to(x.device)
        x0 = torch.where(labels[:, 0] == 1, -x[:, 0], x[:, 0])  # x-flip
        c, s = (labels[:, 1] + 1).to(x.dtype), labels[:, 2].to(x.dtype)
        x = torch.stack([c * x0 - s * x[:, 1], s * x0 + c * x[:, 1]], dim=1)  # rotation
        return x, labels
