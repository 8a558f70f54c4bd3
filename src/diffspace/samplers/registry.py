"""Sampler registry: name -> function, NFE formula and accepted options. Unknown names and options are refused
by name instead of being ignored, and option values are checked by type and range (`samplers.options`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.options import parse, validate

COMMON = ("extra_args", "callback", "disable", "dtype", "stats")


@dataclass(frozen=True)
class Sampler:
    """A registered sampler. Call it like the function; `nfe(sigmas)` is the number of denoiser calls it makes."""

    name: str
    fn: Callable
    nfe_fn: Callable[[torch.Tensor], int]
    stochastic: bool = False
    order: float | None = None
    summary: str = ""
    options: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return f"<sampler {self.name!r}: {self.summary}>"

    def nfe(self, sigmas, **options) -> int:
        """Denoiser calls on this grid; options that change the count (e.g. afs, denoise_to_zero) pass through."""
        options = self.check_options(options)
        params = inspect.signature(self.nfe_fn).parameters
        return int(self.nfe_fn(torch.as_tensor(sigmas), **{k: v for k, v in options.items() if k in params}))

    @property
    def adaptive(self) -> bool:
        """True when the sampler chooses its own steps (its NFE is known only after the run)."""
        return bool(getattr(self.nfe_fn, "adaptive", False))

    @property
    def positive_end(self) -> bool:
        """True when the grid must end at σ_min > 0: Li et al.'s forms A, C, D, F (which take `denoise_to_zero`)
        and adaptive samplers, which step in log σ."""
        return "denoise_to_zero" in self.options or self.adaptive

    def check_options(self, options: dict) -> dict:
        """Refuse options this sampler does not take, and values of the wrong type or range, by name; the options
        with checked types (numbers as int/float)."""
        unknown = sorted(set(options) - set(self.options) - set(COMMON) - {"noise"})
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ConfigError(f"sampler {self.name!r} does not take option(s) {', '.join(unknown)}; it takes: {known}")
        return validate(self.name, self.fn, options)

    def __call__(self, model, x, sigmas, **options):
        options = self.check_options(options)
        if "noise" in options and "noise" not in self._params:
            options.pop("noise")  # deterministic samplers draw no noise
        return self.fn(model, x, sigmas, **options)

    @property
    def _params(self) -> set[str]:
        return set(inspect.signature(self.fn).parameters)


_REGISTRY: dict[str, Sampler] = {}


def register(name: str, fn: Callable, nfe: Callable[[torch.Tensor], int], *, stochastic: bool = False,
             order: float | None = None, summary: str = "") -> Sampler:
    params = inspect.signature(fn).parameters
    options = tuple(p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in COMMON)
    entry = Sampler(name, fn, nfe, stochastic, order, summary or _first_sentence(fn.__doc__ or ""), options)
    _REGISTRY[name] = entry
    return entry


def _first_sentence(doc: str) -> str:
    """The docstring's first sentence (from its first paragraph), ending with a full stop."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".:")
    return sentence + "." if sentence else ""


def get(name: str) -> Sampler:
    """The registered sampler called `name`."""
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown sampler {name!r}: known samplers are {', '.join(names())}; EDM's Table-1 "
                          "sampler is samplers.ablation (generate --sampler ablation)")
    return _REGISTRY[name]


def parse_options(name: str, items) -> dict:
    """Command-line ['key=value', …] for sampler `name` (or 'ablation') as typed, checked options."""
    if name == "ablation":
        import inspect

        from diffspace.samplers.edm import ABLATION_FIXED, ablation

        params = inspect.signature(ablation).parameters
        known = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in ABLATION_FIXED]
        return parse(name, ablation, items, known)
    entry = get(name)
    return parse(name, entry.fn, items, entry.options)


def names() -> list[str]:
    """Names of all registered samplers, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def _load_all() -> None:
    import importlib

    for module in ("diffspace.samplers.edm", "diffspace.samplers.li", "diffspace.samplers.multistep",
                   "diffspace.samplers.dpm_eps", "diffspace.samplers.ipndm_v", "diffspace.samplers.unipc",
                   "diffspace.samplers.deis", "diffspace.samplers.adaptive", "diffspace.tune.amed"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def steps_of(sigmas: torch.Tensor) -> int:
    return len(sigmas) - 1


def ends_at_zero(sigmas: torch.Tensor) -> bool:
    return float(sigmas[-1]) == 0.0


def nfe_one_per_step(sigmas: torch.Tensor) -> int:
    return steps_of(sigmas)


def nfe_heun(sigmas: torch.Tensor) -> int:
    """2 per step, 1 for a final step to σ = 0 (2N−1 on grids ending in 0)."""
    return 2 * steps_of(sigmas) - int(ends_at_zero(sigmas))
