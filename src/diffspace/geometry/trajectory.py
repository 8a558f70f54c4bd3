"""Recording a sampler run: the sampling trajectory x_i, the denoising trajectory D(x_i; σ_i) and the noise
levels, taken from the sampler's callback, so recording costs no extra denoiser evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffspace.errors import ConfigError


@dataclass
class Trajectory:
    """One recorded run of a batch.

    x:         [K+1, batch, ...] the sampling trajectory: the state at each of the K reported steps, then the
               final sample (the sampler's output).
    denoised:  [K, batch, ...] the denoising trajectory: D at the point the sampler evaluated at step i.
    sigmas:    [K+1] the noise level of each row of `x` (σ_i at step i; the last grid level for the final row).
    sigma_hat: [K] the noise level at which step i's denoiser output was taken (σ̂_i > σ_i under churn).
    nfe:       denoiser evaluations of the whole run.
    nfe_at:    [K] denoiser evaluations made by the time step i's denoised output was available (the cost of
               stopping there: an ODE-Jump at step i+1); None when not recorded.
    """

    x: torch.Tensor
    denoised: torch.Tensor
    sigmas: torch.Tensor
    sigma_hat: torch.Tensor
    nfe: int
    nfe_at: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        """The sampler's output, [batch, ...]."""
        return self.x[-1]

    @property
    def steps(self) -> int:
        return self.denoised.shape[0]


def record(sampler: str | Callable, model, x: torch.Tensor, sigmas, **options) -> Trajectory:
    """Run `sampler` (a registered name or a sampler function) and record its trajectories through the callback.

    `x` is already scaled to sigmas[0], as for every sampler; options pass through (noise=, dtype=, S_churn=, …).
    A callback given in `options` is still called. Rows are kept in the sampler's state precision (float64 by
    default) on the CPU-or-device of `x`; the final row is the sampler's output in that precision.
    """
    from diffspace import samplers

    fn = samplers.get(sampler) if isinstance(sampler, str) else sampler
    user_callback = options.pop("callback", None)
    stats = options.pop("stats", None)
    own_stats: dict = {}
    xs, ds, sig, sig_hat, nfe_at = [], [], [], [], []
    counted = CountingModel(model)

    def callback(payload: dict) -> None:
        nfe_at.append(counted.calls)
        xs.append(payload["x"].detach().clone())
        ds.append(payload["denoised"].detach().clone())
        sig.append(float(payload["sigma"]))
        sig_hat.append(float(payload["sigma_hat"]))
        if user_callback is not None:
            user_callback(payload)

    out = fn(counted, x, sigmas, callback=callback, stats=own_stats, **options)
    if stats is not None:
        stats["nfe"] = stats.get("nfe", 0) + own_stats.get("nfe", 0)
    if not xs:
        raise ConfigError("the sampler reported no step: the grid needs at least two noise levels")
    dtype = xs[0].dtype
    grid = torch.as_tensor(sigmas, dtype=torch.float64)
    return Trajectory(
        x=torch.stack([*xs, out.detach().to(dtype)]),
        denoised=torch.stack(ds),
        sigmas=torch.tensor([*sig, float(grid[-1])], dtype=torch.float64),
        sigma_hat=torch.tensor(sig_hat, dtype=torch.float64),
        nfe=int(own_stats.get("nfe", 0)),
        nfe_at=torch.tensor(nfe_at, dtype=torch.long),
    )


class CountingModel:
    """A denoiser that counts its calls; every other attribute (sigma_min, round_sigma, …) is the wrapped one's."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        return self.model(x, sigma, **kwargs)
