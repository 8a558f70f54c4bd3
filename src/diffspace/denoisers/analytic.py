"""Exact denoisers D(x; σ) = E[y | y + σn = x] for Gaussian, Gaussian-mixture and empirical data.

They satisfy the Denoiser contract (unscaled x of shape [B, *event_shape], σ broadcastable to [B]) and compute
in float64. Used as ground truth for samplers and as the "optimal denoiser" of the geometric perspective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from diffspace.errors import ConfigError

__all__ = ["Gaussian", "GaussianMixture"]


def _rowwise(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """a[b] @ m for each batch row b, one product per row: results do not depend on the batch size or order
    (a single batched GEMM may pick a different kernel, and rounding, for a different number of rows)."""
    return torch.stack([row @ m for row in a]) if len(a) else a.new_zeros(0, *a.shape[1:-1], m.shape[-1])


def _sigma_column(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as a float64 column [B, 1] matching x's batch."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).flatten()
    if sigma.numel() == 1:
        sigma = sigma.expand(x.shape[0])
    if sigma.numel() != x.shape[0]:
        raise ConfigError(f"sigma has {sigma.numel()} values for a batch of {x.shape[0]}: pass one per sample")
    if (sigma < 0).any() or not torch.isfinite(sigma).all():
        raise ConfigError(f"sigma must be finite and >= 0, got {sigma.tolist()[:4]}")
    return sigma[:, None]


class _Analytic:
    """Shape bookkeeping shared by the analytic denoisers."""

    sigma_min = 0.0
    sigma_max = float("inf")
    dtype = torch.float64  # samplers call the exact denoisers in float64 (diffspace.samplers.base.model_dtype)

    def __init__(self, event_shape: Sequence[int]):
        self.event_shape = tuple(int(s) for s in event_shape)
        self.dim = int(np.prod(self.event_shape)) if self.event_shape else 1

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ConfigError(
                f"x has shape {tuple(x.shape)} but this denoiser expects "
                f"[batch, {', '.join(map(str, self.event_shape))}]: draw latents with that shape"
            )
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x: torch.Tensor, sigma, **unused) -> torch.Tensor:
        flat = self._flat(x)
        return self._denoise(flat, _sigma_column(sigma, flat)).reshape(x.shape)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianMixture(_Analytic):
    """Mixture Σ_k π_k N(μ_k, S_k) with full [K, d, d] or diagonal [K, d] covariances; means [K, *event_shape].

    D(x; σ) = Σ_k w_k(x) [μ_k + S_k (S_k + σ²I)⁻¹ (x − μ_k)],  w = softmax_k(log π_k + log N(x; μ_k, S_k + σ²I)).
    Covariances are eigendecomposed once, so each call costs O(B·K·d²) (O(B·K·d) when diagonal).

    By default every sample is computed with its own matrix products, so a seed's result never depends on the
    batch it is in. `batch_invariant=False` uses batched products in chunks of `chunk` rows instead (about 10×
    faster for large batches; rounding may then depend on the batch composition).
    """

    def __init__(self, weights, means, covs, *, batch_invariant: bool = True, chunk: int = 1024):
        means = torch.as_tensor(means, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
        covs = torch.as_tensor(covs, dtype=torch.float64)
        K = means.shape[0]
        super().__init__(means.shape[1:])
        d = self.dim
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            if not torch.isfinite(value).all():
                bad = value.flatten()[~torch.isfinite(value.flatten())][0].item()
                raise ConfigError(f"GaussianMixture {name} contain {bad}: every value must be finite")
        if weights.numel() != K or (weights < 0).any() or not weights.sum() > 0:
            raise ConfigError(f"weights must be {K} non-negative numbers with a positive sum, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.means = means.reshape(K, d)
        if covs.ndim == 2 and covs.shape == (K, d):
            if (covs < 0).any():
                raise ConfigError("diagonal covariances must be >= 0")
            self.eigvals, self.eigvecs = covs, None
        elif covs.shape == (K, d, d):
            covs = 0.5 * (covs + covs.transpose(1, 2))
            eigvals, eigvecs = torch.linalg.eigh(covs)
            if (eigvals < -1e-10 * eigvals.abs().max().clamp_min(1)).any():
                raise ConfigError("covariances must be positive semi-definite")
            self.eigvals, self.eigvecs = eigvals.clamp_min(0), eigvecs
        else:
            raise ConfigError(f"covs must have shape [{K}, {d}] (diagonal) or [{K}, {d}, {d}], got {tuple(covs.shape)}")
        self.log_weights = self.weights.log()
        self.batch_invariant, self.chunk = bool(batch_invariant), int(chunk)

    @property
    def K(self) -> int:
        return self.means.shape[0]

    def _coords(self, x: torch.Tensor) -> torch.Tensor:
        """(x − μ_k) in each component's eigenbasis: [B, K, d]."""
        diff = x[:, None, :] - self.means.to(x.device)[None]
        if self.eigvecs is None:
            return diff
        return self._project(diff, self.eigvecs.to(x.device))

    def _project(self, a: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """a[b, k] @ V[k] for a [B, K, d] and V [K, d, e]."""
        if self.batch_invariant:
            return _rowwise(a.unsqueeze(2), V).squeeze(2)  # [B, K, 1, d] @ [K, d, e]
        return torch.einsum("bkd,kde->bke", a, V)

    def _posterior(self, x: torch.Tensor, sigma: torch.Tensor):
        """Component log-responsibilities [B, K], eigen-coordinates [B, K, d] and total variances [B|1, K, d]."""
        c = self._coords(x)
        if bool((sigma == sigma[0]).all()):
            sigma = sigma[:1]  # one σ for the batch (every sampler step): variances [1, K, d]
        var = self.eigvals.to(x.device)[None] + (sigma**2)[:, :, None]
        if (var <= 0).any():
            raise ConfigError("sigma = 0 with a singular covariance: the density is degenerate; use sigma > 0")
        log_norm = -0.5 * ((c**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return self.log_weights.to(x.device)[None] + log_norm, c, var

    def _denoise(self, x, sigma):
        if not self.batch_invariant:
            return torch.cat([self._denoise_rows(x[i : i + self.chunk], sigma[i : i + self.chunk])
                              for i in range(0, len(x), self.chunk)])
        return self._denoise_rows(x, sigma)

    def _denoise_rows(self, x, sigma):
        if not self.batch_invariant and self.eigvecs is None and bool((sigma == sigma[0]).all()):
            return self._diagonal(x, float(sigma[0]))
        logits, c, var = self._posterior(x, sigma)
        w = torch.softmax(logits, dim=1)  # [B, K]
        shrunk = c * (self.eigvals.to(x.device)[None] / var)  # S(S+σ²)⁻¹(x−μ) in eigen-coordinates
        if self.eigvecs is not None:
            shrunk = self._project(shrunk, self.eigvecs.to(x.device).transpose(1, 2))
        return ((self.means.to(x.device)[None] + shrunk) * w[:, :, None]).sum(1)

    def _diagonal(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Diagonal covariances and one σ with matrix products only: [B, K] and [K, d] arrays, no [B, K, d]."""
        var = self.eigvals.to(x.device) + sigma**2  # [K, d]
        inv, mu = 1 / var, self.means.to(x.device)
        quad = (x * x) @ inv.T - 2 * x @ (mu * inv).T + (mu * mu * inv).sum(1)[None]  # Σ_d (x − μ_k)²/var
        w = torch.softmax(self.log_weights.to(x.device)[None] - 0.5 * (quad + var.log().sum(1)[None]), dim=1)
        shrink = self.eigvals.to(x.device) * inv  # μ + a(x − μ) = (1 − a)μ + a·x
        return w @ ((1 - shrink) * mu) + x * (w @ shrink)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p(x; σ) of the noised mixture, per sample [B]."""
        flat = self._flat(x)
        logits, _, _ = self._posterior(flat, _sigma_column(sigma, flat))
        return torch.logsumexp(logits, dim=1)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities [B, K] under the noised mixture."""
        flat = self._flat(x)
        logits, _, _ = self._posterior(flat, _sigma_column(sigma, flat))
        return torch.softmax(logits, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples [n, *event_shape] (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        z = z * self.eigvals[k].sqrt()
        if self.eigvecs is not None:
            z = torch.einsum("nkd,nd->nk", self.eigvecs[k], z)
        return (self.means[k] + z).reshape(n, *self.event_shape)

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0).reshape(self.event_shape)


class Gaussian(GaussianMixture):
    """Single Gaussian N(μ, S): D(x; σ) = μ + S(S + σ²I)⁻¹(x − μ). `cov` is [d, d], [d] (diagonal) or a scalar."""

    def __init__(self, mean, cov):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.ndim == 0:
            cov = cov.expand(d).clone()
        if cov.shape not in ((d,), (d, d)):
            raise ConfigError(f"cov must be a scalar, [{d}] or [{d}, {d}], got {tuple(cov.shape)}")
        super().__init__(torch.ones(1), mean[None], cov[None])

    def covariance(self) -> torch.Tensor:
        """Full covariance [d, d]."""
        if self.eigvecs is None:
            return torch.diag(self.eigvals[0])
        return self.eigvecs[0] @ torch.diag(self.eigvals[0]) @ self.eigvecs[0].T
