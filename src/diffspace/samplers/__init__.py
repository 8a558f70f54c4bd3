"""Samplers with the k-diffusion signature `sampler(model, x, sigmas, *, extra_args, callback, disable, **opts)`.

`x` is already scaled to sigmas[0]; pass `noise=StackedRandom(seeds)` for per-sample seeds and `stats={}` to
receive the NFE used. Every registered sampler is an attribute (`samplers.dpmpp_2m`) and is found by name
(`samplers.get("dpmpp_2m")`); both come from the one registry, so `samplers.names()` lists exactly the
attributes. Options are checked by type and range before any work (one-line ConfigError naming the option).

Precision: the state is float64 (float32 on Apple MPS, or with `dtype=torch.float32`) and the result has the
dtype of the `x` passed in. The model is called in one dtype for the whole run, chosen by this rule:
its own `dtype` attribute if it has one (the exact denoisers declare float64), else the dtype of its first
floating-point parameter (a float32 network is called in float32 even when x is float64), else the dtype of
the caller's x. Its results are cast back to the state's precision; a result that is not a tensor, has another
shape or is not floating point is a ConfigError, NaN/Inf a NumericalError naming the step and σ.
"""

from diffspace.samplers.edm import ablation
from diffspace.samplers.noise import GlobalRandom, StackedRandom, parse_seeds
from diffspace.samplers.registry import Sampler, get, names, parse_options


def __getattr__(name: str):
    """Samplers registered after this package was imported are attributes too."""
    if not name.startswith("_") and name in names():
        return get(name)
    raise AttributeError(f"module 'diffspace.samplers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(names()))


# Bind every registered sampler now: a name that is also a submodule (`edm`) must be the sampler.
for _name in names():
    globals()[_name] = get(_name)
del _name

__all__ = ["GlobalRandom", "Sampler", "StackedRandom", "ablation", "get", "names", "parse_options", "parse_seeds",
           *names()]
