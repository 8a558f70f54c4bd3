"""Built-in problems with a known answer for the convergence lab (`diffspace converge`).

Each is an exact denoiser (Gaussian mixture or Gaussian) built deterministically from a seed:

    gmm2         K=4 mixture in d=2, full covariances
    gmm64        K=8 mixture in d=64, full covariances
    gmm3x32x32   K=8 mixture of smooth 3×32×32 "images", diagonal covariances
    gaussian     one Gaussian in d=8, full covariance (every sampler stays Gaussian: exact moments)

`get("module:attr")` wraps a user-given denoiser instead (an object D(x, sigma), or a function of no
arguments returning one); its event shape comes from `D.event_shape` or the `shape` argument.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from diffspace.denoisers import GaussianMixture
from diffspace.errors import ConfigError

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


@dataclass(frozen=True)
class Problem:
    """A denoiser with a known answer: reference ODE solutions always, exact samples when it can draw them."""

    name: str
    denoiser: Callable
    shape: tuple[int, ...]
    description: str = ""
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def is_gaussian(self) -> bool:
        """True for a single Gaussian: linear samplers keep it Gaussian, so moments propagate exactly."""
        return isinstance(self.denoiser, GaussianMixture) and self.denoiser.K == 1

    @property
    def can_sample(self) -> bool:
        return callable(getattr(self.denoiser, "sample", None))

    def gaussian_moments(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [d] and covariance [d, d] of the noised target p(x; σ) = N(μ, S + σ²I) (single Gaussian only)."""
        if not self.is_gaussian:
            raise ConfigError(f"problem {self.name!r} is not a single Gaussian")
        D = self.denoiser
        lam = D.eigvals[0]
        V = D.eigvecs[0] if D.eigvecs is not None else torch.eye(self.dim, dtype=torch.float64)
        return D.means[0].clone(), V @ torch.diag(lam + sigma**2) @ V.T

    def sample(self, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """n exact samples [n, *shape] of the noised data p(x; σ) (float64)."""
        if not self.can_sample:
            raise ConfigError(f"problem {self.name!r} cannot draw exact samples (its denoiser has no .sample)")
        y = self.denoiser.sample(n, generator=generator).to(torch.float64)
        return y + sigma * torch.randn(y.shape, generator=generator, dtype=torch.float64)


def FastMixture(weights, means, covs) -> GaussianMixture:
    """The exact mixture denoiser with batched products (the lab needs speed, not bit-identical seeds)."""
    return GaussianMixture(weights, means, covs, batch_invariant=False)


def _rotation(d: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None]


def _log_uniform(shape, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def full_mixture(d: int, K: int, seed: int, spread: float, var_range: tuple[float, float]) -> GaussianMixture:
    """K components N(μ_k, R_k diag(λ_k) R_kᵀ): μ_k ~ N(0, spread²I), λ log-uniform in var_range, R_k random
    rotations, weights ∝ 1, 2, …, K (unequal on purpose)."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(K, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(K):
        R = _rotation(d, g)
        covs.append(R @ torch.diag(_log_uniform(d, *var_range, g)) @ R.T)
    return FastMixture(torch.arange(1, K + 1, dtype=torch.float64), means, torch.stack(covs))


def image_mixture(shape: Sequence[int], K: int, seed: int) -> GaussianMixture:
    """K smooth random images (bilinear upsampling of 4×4 noise, tanh-squashed into (−0.8, 0.8)) with diagonal
    per-pixel variances log-uniform in [1e-3, 0.1]; weights ∝ 1, …, K."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.randn(K, c, 4, 4, generator=g, dtype=torch.float64)
    means = 0.8 * torch.tanh(torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                                             align_corners=True))
    variances = _log_uniform((K, c * h * w), 1e-3, 0.1, g)
    return FastMixture(torch.arange(1, K + 1, dtype=torch.float64), means, variances)


def _gaussian(d: int, seed: int) -> GaussianMixture:
    """N(μ, S) as a one-component mixture (same denoiser as `diffspace.denoisers.Gaussian`)."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    R = _rotation(d, g)
    cov = R @ torch.diag(_log_uniform(d, 0.01, 1.0, g)) @ R.T
    return FastMixture(torch.ones(1, dtype=torch.float64), mean[None], cov[None])


BUILTIN = {
    "gmm2": "Gaussian mixture, K=4, d=2, full covariances (eigenvalues 0.02–0.5)",
    "gmm64": "Gaussian mixture, K=8, d=64, full covariances (eigenvalues 0.01–0.3)",
    "gmm3x32x32": "Gaussian mixture of 8 smooth 3x32x32 images, diagonal covariances (1e-3–0.1)",
    "gaussian": "Gaussian, d=8, full covariance (eigenvalues 0.01–1): exact output moments",
}


def names() -> list[str]:
    return list(BUILTIN)


def get(name: str, seed: int = 0, shape: Sequence[int] | None = None) -> Problem:
    """A built-in problem (deterministic for a given seed) or a user denoiser given as 'module:attr'."""
    if name == "gmm2":
        D = full_mixture(2, 4, seed, spread=1.5, var_range=(0.02, 0.5))
    elif name == "gmm64":
        D = full_mixture(64, 8, seed, spread=0.5, var_range=(0.01, 0.3))
    elif name == "gmm3x32x32":
        D = image_mixture((3, 32, 32), 8, seed)
    elif name == "gaussian":
        D = _gaussian(8, seed)
    elif ":" in name:
        return _user(name, shape)
    else:
        raise ConfigError(f"unknown problem {name!r}: choose one of {', '.join(BUILTIN)} or give module:attr")
    return Problem(name, D, tuple(D.event_shape), BUILTIN[name] + f", seed {seed}")


def _user(spec: str, shape: Sequence[int] | None) -> Problem:
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path  # a console script does not search the current folder
    if added:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load denoiser {spec!r}: {e}; give an importable module:attr (modules in the "
                          "current folder are found)") from e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable: give a denoiser D(x, sigma) or a factory returning one")
    try:
        needs_args = any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                         for p in inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        needs_args = True
    D = obj if needs_args else obj()  # a factory of no arguments returns the denoiser
    event_shape = tuple(shape) if shape else tuple(getattr(D, "event_shape", ()) or ())
    if not event_shape:
        raise ConfigError(f"denoiser {spec!r} has no event_shape attribute: pass its sample shape "
                          "(e.g. --shape 3,32,32)")
    return Problem(spec, D, event_shape, f"user denoiser {spec}")
