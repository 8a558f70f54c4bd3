"""Samplers with the k-diffusion signature `sampler(model, x, sigmas, *, extra_args, callback, disable, **opts)`.

`x` is already scaled to sigmas[0]; the state is float64 unless `dtype=torch.float32`; pass
`noise=StackedRandom(seeds)` for per-sample seeds and `stats={}` to receive the NFE used.
"""

from diffspace.samplers.edm import ablation, edm, euler, heun
from diffspace.samplers.noise import GlobalRandom, StackedRandom, parse_seeds
from diffspace.samplers.registry import Sampler, get, names

__all__ = ["GlobalRandom", "Sampler", "StackedRandom", "ablation", "edm", "euler", "get", "heun", "names",
           "parse_seeds"]
