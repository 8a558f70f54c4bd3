"""Negative log-likelihood through the probability-flow ODE (issue 5, item 6; Song et al. 2021, App. D.2).

With σ(t)=t, s(t)=1 the PF-ODE is dx/dσ = f(x, σ) = (x − D(x; σ))/σ, and along a solution the continuity
equation gives d/dσ log p(x(σ); σ) = −div_x f. Integrating from the data level σ_min up to σ_max:

    −log p(x; σ_min) = −log p(x(σ_max); σ_max) − ∫_{σ_min}^{σ_max} div_x f(x(σ), σ) dσ,

and p(·; σ_max) is replaced by a prior, N(0, σ_max² I) by default (the latent distribution of EDM's sampler).
The true p(·; σ_max) is the data convolved with N(0, σ_max² I), so the prior costs an error of order
‖mean‖/σ_max + var/σ_max² nats per dimension; pass `prior=` to use something closer.

We integrate in u = ln σ, where the system is non-stiff: dx/du = x − D(x; e^u) and
d(Δ)/du = d − tr ∂D/∂x (= σ div_x f), with an adaptive Dormand–Prince 5(4) solver (`dopri5`).
The trace is exact (one backward pass through the batch replicated once per dimension) or a Hutchinson
estimate εᵀ(∂D/∂x)ε with probes ε drawn once and held fixed along the trajectory (FFJORD; Song et al. 2021),
which is unbiased for the integral.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffspace.errors import ConfigError, NumericalError
from diffspace.samplers.reference import dopri5

__all__ = ["ode_nll", "bits_per_dim", "dopri5", "gaussian_log_prob"]

def gaussian_log_prob(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; 0, σ² I) per sample [B] (the default prior at σ_max)."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    d = flat.shape[1]
    return -0.5 * (flat**2).sum(1) / sigma**2 - 0.5 * d * math.log(2 * math.pi * sigma**2)


def _probes(x: torch.Tensor, num_probes: int, kind: str, generator) -> torch.Tensor:
    """[num_probes, *x.shape] Rademacher or standard normal probes; `generator` is a torch.Generator or a
    per-sample noise source with randn_like (diffspace.samplers.noise.StackedRandom)."""
    if generator is not None and hasattr(generator, "randn_like"):
        z = torch.stack([generator.randn_like(x) for _ in range(num_probes)])
    else:
        z = torch.randn((num_probes, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
    z = z.to(device=x.device, dtype=x.dtype)
    return torch.where(z >= 0, 1.0, -1.0).to(x.dtype) if kind == "rademacher" else z


def _hutchinson_trace(D: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """mean_k ε_kᵀ (∂D/∂x) ε_k per sample [B], one vector-Jacobian product per probe."""
    B = x.shape[0]
    tr = x.new_zeros(B)
    for k, eps in enumerate(probes):
        (g,) = torch.autograd.grad(D, x, grad_outputs=eps.to(D.dtype), retain_graph=k + 1 < len(probes))
        tr = tr + (g * eps).reshape(B, -1).sum(1)
    return tr / len(probes)


def _exact_trace(denoiser, x: torch.Tensor, sigma: float, extra_args: dict, max_rows: int):
    """(D(x; σ), tr ∂D/∂x per sample [B]). The batch is replicated once per coordinate i (in blocks of at most
    max_rows rows) and one backward pass of Σ_i D_i(x⁽ⁱ⁾) per block gives every ∂D_i/∂x_i."""
    B, d = x.shape[0], x[0].numel()
    per = max(1, min(d, max_rows // B))
    tr, D0 = x.new_zeros(B), None
    for i0 in range(0, d, per):
        k = min(per, d - i0)
        xr = x.detach().repeat(k, *([1] * (x.ndim - 1))).requires_grad_(True)  # [k·B, ...], block j = coord i0+j
        D = denoiser(xr, sigma * xr.new_ones(k * B), **_repeat_args(extra_args, k, B))
        if D.shape != xr.shape:
            raise ConfigError(f"denoiser returned shape {tuple(D.shape)} for input {tuple(xr.shape)}")
        D = D.reshape(k, B, d)
        D0 = D[0].detach() if D0 is None else D0
        idx = torch.arange(i0, i0 + k, device=x.device)[:, None, None].expand(k, B, 1)
        (g,) = torch.autograd.grad(D.gather(2, idx).sum(), xr)
        tr = tr + g.reshape(k, B, d).gather(2, idx).sum((0, 2))
    return D0, tr


def _repeat_args(extra_args: dict, k: int, B: int) -> dict:
    """Per-sample tensors in extra_args (e.g. class_labels [B, ...]) repeated to match a k-fold batch."""
    return {key: (v.repeat(k, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.ndim and len(v) == B
                  else v) for key, v in extra_args.items()}


def _differentiable(fn):
    """Run fn, turning autograd's 'does not require grad' into a ConfigError that names the likely cause."""
    try:
        return fn()
    except RuntimeError as exc:
        if "does not require grad" in str(exc) or "not have a grad_fn" in str(exc):
            raise ConfigError("the denoiser output does not depend differentiably on x (is it wrapped in "
                              "torch.no_grad or detached?): the likelihood needs dD/dx") from exc
        raise


def ode_nll(denoiser, x: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, *,
            method: str = "exact", num_probes: int = 1, probe: str = "rademacher",
            prior: Callable[[torch.Tensor], torch.Tensor] | None = None, rtol: float = 1e-5, atol: float = 1e-5,
            generator=None, extra_args: dict | None = None, max_steps: int = 100_000, max_rows: int = 4096,
            stats: dict | None = None) -> torch.Tensor:
    """−log p(x; σ_min) in nats per sample [B], through the probability-flow ODE (module docstring).

    `x` [B, *shape] is taken as a draw of p(·; σ_min) (data plus σ_min noise; nothing is added). For discrete
    data, dequantise first (e.g. add U(0, 1/scale) noise, Song et al. 2021) to get a bound on the discrete NLL.
    method: "exact" (for small d: the batch is replicated d times, ≤ `max_rows` rows per denoiser call, so
    d·B rows per evaluation; tensors in `extra_args` whose first dimension is B are replicated along) or
    "hutchinson" (`num_probes` fixed `probe`="rademacher"|"gaussian" probes per sample, drawn from
    `generator`: a torch.Generator, or a StackedRandom for per-seed results). Both need D differentiable in x
    and samples treated independently (networks in eval mode). `prior(x_T) -> log p [B]`, default
    log N(x_T; 0, σ_max² I).
    State and solver are float64; `rtol`/`atol` apply to x and the accumulated log-determinant alike.
    Step sizes are shared by the batch, so results depend on its composition only within the tolerances.
    `stats` gains nfe (solver stages), steps, rejected and the parts `prior_logp`, `delta_logp` ([B] tensors).
    """
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ConfigError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min} and {sigma_max}")
    if method not in ("exact", "hutchinson"):
        raise ConfigError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ConfigError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if method == "hutchinson" and num_probes < 1:
        raise ConfigError(f"num_probes must be >= 1, got {num_probes}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] == 0:
        raise ConfigError("x must be a non-empty batched tensor [B, ...]")
    extra_args = extra_args or {}
    shape, B = x.shape, x.shape[0]
    x = x.detach().to(torch.float64)
    d = x[0].numel()
    probes = _probes(x, num_probes, probe, generator) if method == "hutchinson" else None
    s_in = x.new_ones(B)

    def f(u: float, y: torch.Tensor) -> torch.Tensor:  # y = [x (flattened), Δ]; dy/du
        sigma = math.exp(u)
        xi = y[:, :d].reshape(shape)
        with torch.enable_grad():
            if probes is None:
                D, tr = _differentiable(lambda: _exact_trace(denoiser, xi, sigma, extra_args, max_rows))
            else:
                xi = xi.detach().requires_grad_(True)
                D = denoiser(xi, sigma * s_in, **extra_args)
                if D.shape != shape:
                    raise ConfigError(f"denoiser returned shape {tuple(D.shape)} for input {tuple(shape)}")
                tr = _differentiable(lambda: _hutchinson_trace(D, xi, probes))
        D = D.detach().to(torch.float64).reshape(B, d)
        if not (torch.isfinite(D).all() and torch.isfinite(tr).all()):
            raise NumericalError(f"denoiser or its Jacobian trace is NaN/Inf at sigma={math.exp(u):.6g}")
        return torch.cat([y[:, :d] - D, (d - tr.detach().to(torch.float64))[:, None]], 1)

    y0 = torch.cat([x.reshape(B, d), x.new_zeros(B, 1)], 1)
    yT = dopri5(f, y0, math.log(sigma_min), math.log(sigma_max), rtol=rtol, atol=atol, max_steps=max_steps,
                stats=stats)
    x_T, delta = yT[:, :d].reshape(shape), yT[:, d]
    prior_logp = (prior(x_T) if prior is not None else gaussian_log_prob(x_T, sigma_max)).to(torch.float64)
    if prior_logp.shape != (B,):
        raise ConfigError(f"prior must return one log-density per sample [{B}], got {tuple(prior_logp.shape)}")
    if stats is not None:
        stats["prior_logp"], stats["delta_logp"] = prior_logp, delta
    return -(prior_logp + delta)


def bits_per_dim(nll: torch.Tensor | float, dim: int, *, scale: float = 1.0):
    """Bits per dimension of an NLL in nats, in the units of the original 256-level pixels.

    If the model saw x = pixel/scale + shift, then p_pixel = p_x / scale^dim, hence
    bpd = (nll + dim·ln(scale)) / (dim·ln 2) = nll/(dim ln 2) + log2(scale). Conventions:
    scale=127.5 for EDM's x = pixel/127.5 − 1 in [−1, 1] (+6.994 bits); scale=128 for uniformly dequantised
    (pixel + U[0,1))/128 − 1 as in Song et al.'s score_sde (+7 bits); scale=256 for [0, 1) data (+8 bits);
    scale=1 (default) gives plain bits/dim in the data's own units.
    """
    if dim < 1 or not scale > 0:
        raise ConfigError(f"need dim >= 1 and scale > 0, got {dim} and {scale}")
    return (nll + dim * math.log(scale)) / (dim * math.log(2))
