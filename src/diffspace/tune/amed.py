"""AMED (Zhou, Chen, Wang, Chen, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", CVPR 2024).

Sampling trajectories lie almost in a plane, so by the mean-value theorem one evaluation at a well-chosen
intermediate level gives (almost) the exact direction of a whole step. With d = (x − D(x; σ))/σ:

    σ_m = σ'^r·σ^{1−r},   x_m = x + (σ_m − σ)·d,   x' = x + c·(σ' − σ)·(x_m − D(x_m; σ_m))/σ_m

(`amed`, 2 NFE per step; r = ½, c = 1 is DPM-Solver-2). The plugin form (`amed_euler`, `amed_ipndm`,
`amed_dpmpp_2m`) splits every step of a base sampler at σ_m: the base rule steps σ → σ_m and σ_m → σ', its history
including the intermediate point, and the second sub-step's increment is scaled by c.

r and c are per-step constants (`r=[…]`, `c=[…]`, fitted on teacher trajectories by `fit_amed` for any denoiser)
or, for `amed`, come per sample from a small network on a U-Net's bottleneck features (`predictor=`, see
`diffspace.tune.amed_net`). A step to σ' = 0 is one plain step of the rule (1 NFE). `afs=True` replaces the first
denoiser call by the analytical first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.base import Run, euler_step, to_d
from diffspace.samplers.multistep import adams_bashforth_weights, afs_denoised

RULES = ("amed", "euler", "ipndm", "dpmpp_2m")


def _per_step(value, steps: int, name: str, lo: float, hi: float) -> list[float]:
    vals = [float(value)] * steps if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) != steps:
        raise ConfigError(f"{name} has {len(vals)} values but the grid has {steps} steps: give one per step")
    for v in vals:
        if not (lo < v < hi) or not math.isfinite(v):
            raise ConfigError(f"{name}={v} must lie in ({lo}, {hi})")
    return vals


class Stepper:
    """AMED step machinery shared by the samplers and the fitting: the state is (x, history of (σ, D, d))."""

    def __init__(self, rule: str, run: Run, max_order: int = 4, afs: bool = False):
        if rule not in RULES:
            raise ConfigError(f"unknown AMED rule {rule!r}: choose one of {', '.join(RULES)}")
        self.rule, self.run, self.max_order, self.afs = rule, run, max_order, afs

    def first(self, x, sigma, i: int, hist: list) -> list:
        """Evaluate D at the step's start; the new history."""
        denoised = afs_denoised(x, sigma) if self.afs and i == 0 else self.run.denoise(x, sigma, i)
        return [(sigma, denoised, to_d(x, sigma, denoised)), *hist][: max(self.max_order, 2)]

    def base(self, x, hist: list, sigma_next) -> torch.Tensor:
        sigma, denoised, _ = hist[0]
        if self.rule in ("euler", "amed") or len(hist) == 1 or float(sigma_next) == 0.0:
            return euler_step(x, sigma, sigma_next, denoised)
        if self.rule == "dpmpp_2m":
            sigma_prev, denoised_prev, _ = hist[1]
            r = math.log(float(sigma_prev) / float(sigma)) / math.log(float(sigma) / float(sigma_next))
            return euler_step(x, sigma, sigma_next, (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * denoised_prev)
        use = hist[: self.max_order]
        weights = adams_bashforth_weights([float(s) for s, _, _ in use], float(sigma_next))
        return x + (sigma_next - sigma) * sum(w * d for w, (_, _, d) in zip(weights, use))

    def middle(self, x, hist: list, sigma, sigma_next, r, i: int):
        """(x_m, σ_m, history with the intermediate point) for intermediate fraction r (float or per-sample)."""
        sigma_m = sigma_next**r * sigma ** (1 - r)
        x_m = self.base(x, hist, sigma_m) if self.rule != "amed" else x + (sigma_m - sigma) * hist[0][2]
        denoised_m = self.run.denoise(x_m, sigma_m.reshape(-1) if torch.is_tensor(r) else sigma_m, i)
        d_m = to_d(x_m, sigma_m, denoised_m)
        return x_m, sigma_m, [(sigma_m, denoised_m, d_m), *hist][: max(self.max_order, 2)]

    def increment(self, x, x_m, hist_m: list, sigma, sigma_next):
        """(base point, increment) of the second half: x' = base + c·increment."""
        if self.rule == "amed":
            return x, (sigma_next - sigma) * hist_m[0][2]
        return x_m, self.base(x_m, hist_m, sigma_next) - x_m


def _sample(rule: str, model, x, sigmas, *, extra_args, callback, disable, dtype, stats, r, c, afs,
            max_order: int = 4, predictor=None):
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    steps = run.steps
    if predictor is not None:
        from diffspace.tune.amed_net import load_predictor

        predictor = load_predictor(predictor)
        return predictor.sample(run, afs=afs)
    rs = _per_step(r, steps, "r", 0.0, 1.0)
    cs = _per_step(c, steps, "c", 0.0, 2.0)
    st = Stepper(rule, run, max_order, afs)
    hist: list = []
    for i in run.indices():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        hist = st.first(x, sigma, i, hist)
        run.report(i, x, sigma, sigma, hist[0][1])
        if sigma_next == 0:
            x = st.base(x, hist, sigma_next)  # A step to σ = 0: one plain step.
            continue
        x_m, _, hist = st.middle(x, hist, sigma, sigma_next, rs[i], i)
        base, inc = st.increment(x, x_m, hist, sigma, sigma_next)
        x = base + cs[i] * inc
    return run.done(x)


@torch.no_grad()
def amed(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
         r: float | Sequence[float] = 0.5, c: float | Sequence[float] = 1.0, afs: bool = False, predictor=None):
    """AMED-Solver (Zhou et al. 2024): x' = x + c(σ' − σ)·d(x_m; σ_m), σ_m = σ'^r σ^{1−r}, 2 NFE/step.

    r, c: one value or one per step; `predictor`: an AMEDPredictor (or its file) giving r, c per sample.
    """
    return _sample("amed", model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
                   stats=stats, r=r, c=c, afs=afs, predictor=predictor)


@torch.no_grad()
def amed_euler(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
               r: float | Sequence[float] = 0.5, c: float | Sequence[float] = 1.0, afs: bool = False):
    """AMED-Plugin on Euler: Euler to σ_m = σ'^r σ^{1−r}, then x' = x_m + c(σ' − σ_m)d(x_m; σ_m). 2 NFE/step."""
    return _sample("euler", model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype,
                   stats=stats, r=r, c=c, afs=afs)


@torch.no_grad()
def amed_ipndm(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
               r: float | Sequence[float] = 0.5, c: float | Sequence[float] = 1.0, afs: bool = False,
               max_order: int = 4):
    """AMED-Plugin on iPNDM: variable-step Adams–Bashforth to σ_m and on to σ' (history includes σ_m). 2 NFE/step."""
    if max_order not in (1, 2, 3, 4):
        raise ConfigError(f"max_order={max_order!r} must be 1, 2, 3 or 4")
    return _sample("ipndm", model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                   dtype=dtype, stats=stats, r=r, c=c, afs=afs, max_order=max_order)


@torch.no_grad()
def amed_dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
                  r: float | Sequence[float] = 0.5, c: float | Sequence[float] = 1.0, afs: bool = False):
    """AMED-Plugin on DPM-Solver++(2M): the multistep update to σ_m and on to σ' (c scales the second). 2 NFE/step."""
    return _sample("dpmpp_2m", model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                   dtype=dtype, stats=stats, r=r, c=c, afs=afs, max_order=2)


PLUGINS = {"amed": amed, "amed_euler": amed_euler, "amed_ipndm": amed_ipndm, "amed_dpmpp_2m": amed_dpmpp_2m}
RULE_OF = {"amed": "amed", "amed_euler": "euler", "amed_ipndm": "ipndm", "amed_dpmpp_2m": "dpmpp_2m"}


def _nfe(sigmas: torch.Tensor, afs: bool = False) -> int:
    """2 per step, 1 for a step to σ = 0, −1 with AFS."""
    return 2 * (len(sigmas) - 1) - int(float(sigmas[-1]) == 0.0) - int(afs)


def _register() -> None:
    from diffspace.samplers.registry import register

    for name, fn in PLUGINS.items():
        register(name, fn, _nfe, order=2)


_register()


# ---------------------------------------------------------------------------------------------------------------
# Per-step constants fitted on teacher trajectories.

def _golden(f, lo: float, hi: float, iters: int) -> tuple[float, float]:
    """Minimum of f on [lo, hi]: a coarse scan of 9 points, then golden-section search around the best."""
    xs = [lo + (hi - lo) * k / 8 for k in range(9)]
    vals = [f(v) for v in xs]
    k = min(range(9), key=vals.__getitem__)
    a, b = xs[max(k - 1, 0)], xs[min(k + 1, 8)]
    best = (vals[k], xs[k])
    g = (math.sqrt(5) - 1) / 2
    p, q = b - g * (b - a), a + g * (b - a)
    fp, fq = f(p), f(q)
    for _ in range(iters):
        if fp < fq:
            b, q, fq = q, p, fp
            p = b - g * (b - a)
            fp = f(p)
        else:
            a, p, fp = p, q, fq
            q = a + g * (b - a)
            fq = f(q)
    best = min(best, (fp, p), (fq, q))
    return best[1], best[0]


@torch.no_grad()
def fit_amed(model, sigmas, *, shape: Sequence[int], sampler: str = "amed", warmup: int = 64, seed: int = 0,
             teacher_sub: int = 8, delta_c: float = 0.05, afs: bool = False, max_order: int = 4, iters: int = 12,
             extra_args: dict | None = None, teacher: str = "ipndm") -> dict:
    """Per-step (r, c) for `sampler` (amed, amed_euler, amed_ipndm, amed_dpmpp_2m) on the grid `sigmas`.

    Teacher: `teacher` with `teacher_sub` log-uniform sub-steps per student step, from the warm-up seeds
    seed … seed + warmup − 1. Step by step along the student's own trajectory, r minimises the mean squared
    distance to the teacher's next point (scan + golden section), with c in closed form (least squares)
    clipped to [1 − delta_c, 1 + delta_c]. Returns {"r": [...], "c": [...], "errors": [...]} (per-step RMS).
    """
    from diffspace.geometry import record
    from diffspace.tune.gits import _latents

    if sampler not in RULE_OF:
        raise ConfigError(f"fit_amed fits {', '.join(RULE_OF)}, not {sampler!r}")
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    if float(sig[-1]) <= 0:
        raise ConfigError("fit_amed needs a grid ending at sigma_min > 0 (a step to 0 has no intermediate point)")
    if not isinstance(teacher_sub, int) or teacher_sub < 1:
        raise ConfigError(f"teacher_sub={teacher_sub!r} must be a positive integer")
    if not 0 <= delta_c < 1:
        raise ConfigError(f"delta_c={delta_c} must lie in [0, 1)")
    fine = torch.cat([torch.exp(torch.linspace(float(a.log()), float(b.log()), teacher_sub + 1,
                                               dtype=torch.float64))[:-1] for a, b in zip(sig[:-1], sig[1:])]
                     + [sig[-1:]])
    lat = _latents(shape, range(seed, seed + warmup))
    traj = record(teacher, model, lat * fine[0], fine, extra_args=extra_args, disable=True)
    targets = traj.x[::teacher_sub]  # teacher points at the student levels
    run = Run(model, lat * sig[0], sig, extra_args=extra_args, disable=True)
    st = Stepper(RULE_OF[sampler], run, max_order if sampler == "amed_ipndm" else 2, afs)
    x, hist = run.x, []
    rs, cs, errs = [], [], []
    for i in range(run.steps):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        hist = st.first(x, sigma, i, hist)
        target = targets[i + 1]

        def trial(r, keep=False, x=x, hist=hist, sigma=sigma, sigma_next=sigma_next, i=i, target=target):
            x_m, _, hist_m = st.middle(x, hist, sigma, sigma_next, r, i)
            base, inc = st.increment(x, x_m, hist_m, sigma, sigma_next)
            gap = target - base
            c = float((inc * gap).sum() / (inc * inc).sum().clamp_min(1e-300))
            c = min(max(c, 1 - delta_c), 1 + delta_c)
            err = float((base + c * inc - target).pow(2).mean())
            return (err, c, base + c * inc, hist_m) if keep else err

        r_best, _ = _golden(trial, 0.02, 0.98, iters)
        err, c_best, x, hist = trial(r_best, keep=True)
        rs.append(r_best)
        cs.append(c_best)
        errs.append(math.sqrt(err))
    return {"r": rs, "c": cs, "errors": errs}
