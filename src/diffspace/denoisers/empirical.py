"""The optimal denoiser of a finite dataset, streamed over the data with matrix products.

D(x; σ) = Σ_k softmax_k(−‖x − y_k‖²/(2σ²)) y_k. Dropping the per-query constant ‖x‖², the logits are
(x·y_k − ½‖y_k‖²)/σ², so each data chunk costs two matrix products, x·Yᵀ and P·Y, at the machine's GEMM rate.
With c the data mean, x·y − ½‖y‖² equals (x − c)·y − ½‖y − c‖² up to a per-query constant; the second form
(‖y − c‖² computed once) loses fewer digits to cancellation. Everything is float64. Queries go through
fixed-size blocks of `block` rows (the last one padded), and the data through the same chunks on every call,
so every product has the same shape whatever the batch: a query's result does not depend on the batch it is in.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffspace.denoisers.analytic import _Analytic, _sigma_column
from diffspace.errors import ConfigError

__all__ = ["Empirical"]


class Empirical(_Analytic):
    """Optimal denoiser of a finite dataset {y_k}: D(x; σ) = Σ_k softmax_k(−‖x − y_k‖²/(2σ²)) y_k.

    Identical to one Gaussian mean-shift step with bandwidth σ. The softmax is streamed over the data in chunks
    of `chunk_size` rows (running max and running weighted sum; default: about 32 MB of float64 per chunk), so
    working memory is O(block·chunk_size + chunk_size·d) whatever the dataset size. `data` may be a tensor, a
    numpy array or a numpy memmap of shape [K, *event_shape]; it is read chunk by chunk, never copied whole.
    Results have the dtype of the input x (computed in float64 throughout). Queries are processed in blocks of
    `block` rows (a batch of 1 costs as much as a batch of `block`); the chunk buffer is kept between calls,
    so one instance should not be called from several threads at once.
    """

    dtype = torch.float64  # samplers call it in float64 (see diffspace.samplers.base.model_dtype)

    def __init__(self, data, chunk_size: int | None = None, block: int = 64):
        if len(data) == 0:
            raise ConfigError("Empirical needs at least one data point")
        super().__init__(tuple(data.shape[1:]))
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ConfigError(f"chunk_size={chunk_size!r} must be a positive integer")
        if not isinstance(block, int) or block < 1:
            raise ConfigError(f"block={block!r} must be a positive integer")
        self.data = data
        self.chunk_size = chunk_size or max(256, min(16384, (1 << 22) // self.dim))
        self.block = block
        self.center = torch.zeros(self.dim, dtype=torch.float64)
        total = torch.zeros(self.dim, dtype=torch.float64)
        for start, y in self._chunks(torch.float64):  # one pass: check the values, sum for the mean
            if not torch.isfinite(y).all():
                row = start + int(torch.nonzero(~torch.isfinite(y).all(1))[0])
                raise ConfigError(f"data row {row} contains NaN or Inf: remove or fix it before building Empirical")
            total += y.sum(0)
        self.center = total / len(data)
        self._half_norm = torch.empty(len(data), dtype=torch.float64)  # ½‖y_k − c‖², one allocation
        for start, y in self._chunks(torch.float64):
            self._half_norm[start : start + len(y)] = torch.sub(y, self.center).square_().sum(1).mul_(0.5)

    def __len__(self) -> int:
        return len(self.data)

    def _chunks(self, dtype=None, device=None):
        """(start row, chunk [m, d]) for each chunk of the data, in `dtype` (a view when no conversion is needed)."""
        for start in range(0, len(self.data), self.chunk_size):
            chunk = self.data[start : start + self.chunk_size]
            chunk = torch.as_tensor(np.asarray(chunk) if not isinstance(chunk, torch.Tensor) else chunk)
            yield start, chunk.reshape(chunk.shape[0], self.dim).to(device=device, dtype=dtype)

    def _buffer(self, width: int, device) -> torch.Tensor:
        """The chunk buffer [chunk_size, width] (columns d + 1 = 1, d + 2… = 0), kept between calls: one chunk of
        memory, and no page faults or zero-filling on every call."""
        buf = getattr(self, "_chunk_buffer", None)
        if buf is None or buf.shape[1] != width or buf.device != torch.device(device):
            buf = torch.zeros(min(self.chunk_size, len(self)), width, dtype=torch.float64, device=device)
            buf[:, self.dim + 1] = 1
            self._chunk_buffer = buf
        return buf

    def _stream(self, x: torch.Tensor, sigma: torch.Tensor, want_mean: bool = True):
        """(logsumexp_k −‖x − y_k‖²/(2σ²), softmax-weighted mean) for x [B, d] float64, σ [B, 1].

        Each data chunk is copied once into float64 columns [y, ½‖y − c‖², 1] and each block of queries into
        [(x − c)/σ², −1/σ², −R], so that one GEMM gives l − R with l = ((x − c)·y − ½‖y − c‖²)/σ² and R a
        per-query reference, and a second GEMM of p = exp(l − R) with the same chunk accumulates Σp·y and
        Σp together. R starts at the first chunk's largest logit and moves up (rescaling the sums) only when
        a chunk's largest l − R exceeds 600, so nothing overflows or underflows.
        """
        B, Q, d, device = x.shape[0], self.block, self.dim, x.device
        width = -(-(d + 2) // 8) * 8  # columns [y, h, 1, zero padding]: rows aligned for the GEMMs
        n_blocks = max(1, -(-B // Q))
        center = self.center.to(device)
        inv = torch.ones(n_blocks * Q, 1, dtype=torch.float64, device=device)
        inv[:B] = 1 / sigma**2
        xs = torch.zeros(n_blocks * Q, width, dtype=torch.float64, device=device)
        xs[:B, :d] = (x - center) * inv[:B]
        xs[:, d : d + 1] = -inv
        xs = xs.view(n_blocks, Q, width)  # column d + 1 holds −R
        acc = torch.zeros_like(xs)  # [Σp·y, Σp·½‖y − c‖², Σp]
        started = False
        half_norms = self._half_norm.to(device)
        buffer = self._buffer(width, device)
        for start, y in self._chunks(device=device):
            y_aug = buffer[: len(y)]
            y_aug[:, :d] = y  # the only copy (and conversion to float64) of the chunk
            y_aug[:, d] = half_norms[start : start + len(y)]
            for b in range(n_blocks):
                logits = torch.mm(xs[b], y_aug.T)  # l − R
                top = logits.max(dim=1, keepdim=True).values
                if not started:  # R = the first chunk's largest logit
                    xs[b, :, d + 1 : d + 2] -= top
                    logits -= top
                elif bool((top > 600).any()):  # much larger weights: move R up and rescale the sums
                    shift = top.clamp_min(0)
                    xs[b, :, d + 1 : d + 2] -= shift
                    logits -= shift
                    acc[b] *= torch.exp(-shift)
                acc[b].addmm_(logits.exp_(), y_aug)
            started = True
        ref = -xs[:, :, d + 1].reshape(-1, 1)[:B]
        total = acc[:, :, d + 1].reshape(-1, 1)[:B]
        # −‖x − y‖²/(2σ²) = l − (½‖x − c‖² + (x − c)·c)/σ²: take off the per-query constant.
        xc = x - center
        const = (0.5 * (xc**2).sum(1, keepdim=True) + (xc * center).sum(1, keepdim=True)) * inv[:B]
        lse = ref + total.log() - const
        mean = acc[:, :, :d].reshape(-1, d)[:B] / total if want_mean else None
        return lse, mean

    def __call__(self, x: torch.Tensor, sigma, **unused) -> torch.Tensor:
        return super().__call__(x, sigma).to(x.dtype)

    def _denoise(self, x, sigma):
        if (sigma == 0).any():
            raise ConfigError("Empirical denoiser needs sigma > 0 (at sigma = 0 it is the nearest data point)")
        return self._stream(x, sigma)[1]

    def log_prob(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """log of the Gaussian KDE p(x; σ) = (1/K) Σ_k N(x; y_k, σ²I), per sample [B]."""
        flat = self._flat(x)
        s = _sigma_column(sigma, flat)
        if (s == 0).any():
            raise ConfigError("Empirical.log_prob needs sigma > 0")
        lse, _ = self._stream(flat, s, want_mean=False)
        return lse[:, 0] - math.log(len(self)) - 0.5 * self.dim * torch.log(2 * math.pi * s[:, 0] ** 2)
