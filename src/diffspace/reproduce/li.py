"""Claims of Li, Huang, Efimov, Wei, Chi, Chen (ICML 2024): orders of the vanilla and accelerated DDIM/DDPM-type
samplers, measured with exact denoisers and exact output laws."""

from __future__ import annotations

import math

import torch

from diffspace.reproduce.common import edm_grid, gaussian_error, loglog, pathwise, slopes
from diffspace.reproduce.core import FAIL, PASS, REPORTED, Outcome, claim
from diffspace.samplers import problems
from diffspace.samplers.converge import fit_slope

SRC = "Li et al. 2024 (provably accelerated samplers)"


def _fns(*names):
    from diffspace import samplers

    return {n: samplers.get(n) for n in names}


@claim("li.7", source=SRC, title="Pathwise orders of the ODE samplers",
       prediction="error slope in steps: DDIM-type -1, accelerated ODE (practical form) -2, accelerated ODE "
                  "(theory form) -2, each within 0.3")
def ode_orders(quick: bool, seed: int, **override) -> Outcome:
    problem = problems.get("gmm2", seed=seed)
    steps = [64, 128, 256, 512] if quick else [64, 128, 256, 512, 1024]
    fns = {**_fns("ddim_type", "accel_ode", "accel_ode2"), **override}
    errs = pathwise(problem, fns, steps, batch=8 if quick else 64, seed=seed)
    s = slopes(steps, errs)
    want = {"ddim_type": -1, "accel_ode": -2, "accel_ode2": -2}
    ok = all(abs(s[k] - v) <= 0.3 for k, v in want.items())
    return Outcome(", ".join(f"{k} {s[k]:.2f}" for k in want) + f" (gmm2, N={steps[0]}..{steps[-1]})",
                   PASS if ok else FAIL, {"steps": steps, "errors": errs, "slopes": s},
                   lambda fig: loglog(fig, steps, errs, "steps", "RMS endpoint error", "gmm2, EDM grid"))


def _law_errors(problem, names, steps, grid=None):
    fns = _fns(*names)
    return {n: [gaussian_error(problem, fns[n], (grid or edm_grid)(T, problem)) for T in steps] for n in names}


@claim("li.8", source=SRC, title="Distributional convergence on a Gaussian target",
       prediction="DDIM-type O(1/T), accelerated ODE O(1/T^2); DDPM-type bound O(1/sqrt T) and accelerated SDE "
                  "O(1/T) (measured DDPM-type rate expected near 1/T: the acceleration improves the constant)")
def law_orders(quick: bool, seed: int) -> Outcome:
    problem = problems.get("gaussian", seed=seed)
    steps = [50, 100, 200] if quick else [50, 100, 200, 400, 800, 1600]
    errs = _law_errors(problem, ["ddim_type", "accel_ode", "ddpm_type", "accel_sde"], steps)
    s = slopes(steps, errs)
    ode_ok = abs(s["ddim_type"] + 1) <= 0.3 and abs(s["accel_ode"] + 2) <= 0.3
    sde_better = all(a < b for a, b in zip(errs["accel_sde"], errs["ddpm_type"]))
    ratio = [b / a for a, b in zip(errs["accel_sde"], errs["ddpm_type"])]
    return Outcome(f"Hellinger slopes: ddim_type {s['ddim_type']:.2f}, accel_ode {s['accel_ode']:.2f}, ddpm_type "
                   f"{s['ddpm_type']:.2f}, accel_sde {s['accel_sde']:.2f}; accelerated SDE {min(ratio):.1f}-"
                   f"{max(ratio):.1f}x smaller than DDPM-type (Gaussian d=8, exact output law)",
                   PASS if ode_ok and sde_better else FAIL, {"steps": steps, "hellinger": errs, "slopes": s},
                   lambda fig: loglog(fig, steps, errs, "steps T", "Hellinger distance", "Gaussian d=8"))


@claim("li.9", source=SRC, title="Dimension dependence at fixed T",
       prediction="polynomial growth in d (exponents not stated precisely): report the fitted exponent")
def dimension(quick: bool, seed: int) -> Outcome:
    from diffspace.samplers.problems import Problem, _gaussian

    dims = [2, 8, 32] if quick else [2, 4, 8, 16, 32, 64]
    T = 50
    names = ["ddim_type", "accel_ode", "ddpm_type", "accel_sde"]
    errs = {n: [] for n in names}
    for d in dims:
        D = _gaussian(d, seed)
        problem = Problem(f"gaussian{d}", D, (d,))
        for n, v in _law_errors(problem, names, [T]).items():
            errs[n].append(v[0])
    expo = {n: fit_slope(dims, e) for n, e in errs.items()}
    return Outcome("fitted exponent of the error in d at T=50: " + ", ".join(f"{n} {e:.2f}" for n, e in expo.items()),
                   REPORTED, {"d": dims, "hellinger": errs, "exponent": expo},
                   lambda fig: loglog(fig, dims, errs, "dimension d", "Hellinger distance", f"Gaussian targets, T={T}"))


@claim("li.10", source=SRC, title="Robustness to score errors", quick=False,
       prediction="the samplers' error grows linearly with the size of the score error; the ODE samplers are more "
                  "sensitive to a rough (non-smooth) error of the same size (not stated precisely: report it)")
def score_error(quick: bool, seed: int) -> Outcome:
    """Same latents and the same noise with and without an added score error of size η (a smooth one and a rough,
    fast-oscillating one with the same RMS): the RMS shift of the samples measures the sensitivity, free of the
    sampling noise a distance between two sample sets would carry."""
    from diffspace import samplers
    from diffspace.samplers.converge import _Counter, sliced_w2

    problem = problems.get("gmm2", seed=seed)
    exact = problem.denoiser
    n_samples, T = 4096, 32
    sig = edm_grid(T, problem)
    etas = [0.0, 0.05, 0.1, 0.2, 0.4]
    x0 = problem.sample(n_samples, float(sig[0]), torch.Generator().manual_seed(seed + 1))
    target = problem.sample(n_samples, float(sig[-1]), torch.Generator().manual_seed(seed + 2))

    def perturbed(eta, rough):
        def D(x, sigma, **kw):
            s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *[1] * (x.ndim - 1))
            bump = torch.sign(torch.sin(25 * x)) if rough else math.sqrt(2) * torch.sin(x)  # both RMS 1
            return exact(x, sigma) + eta * s * bump / (1 + s)  # a score error of size ∝ η, bounded in σ
        return D

    shift, sw2 = {}, {}
    for name in ("accel_sde", "accel_ode"):
        for rough in (False, True):
            key = f"{name} {'rough' if rough else 'smooth'}"
            outs = []
            for eta in etas:
                kw = {"noise": _Counter(seed + 3)} if name == "accel_sde" else {}  # the same noise for every eta
                outs.append(samplers.get(name)(perturbed(eta, rough), x0, sig, **kw))
            shift[key] = [float((o - outs[0]).pow(2).sum(1).mean().sqrt()) for o in outs[1:]]
            sw2[key] = [sliced_w2(o, target, seed=seed) for o in (outs[0], outs[-1])]
    growth = {k: fit_slope(etas[1:], v) for k, v in shift.items()}
    return Outcome("log-log slope of the sample shift against the score-error size: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()) + "; shift at eta=0.4: "
                   + ", ".join(f"{k} {v[-1]:.3f}" for k, v in shift.items()) + f" (gmm2, T={T}, {n_samples} samples)",
                   REPORTED, {"eta": etas[1:], "shift": shift, "sw2_eta0_and_max": sw2, "growth_slope": growth},
                   lambda fig: loglog(fig, etas[1:], shift, "score error size eta", "RMS shift of the samples",
                                      "gmm2, same latents and noise"))
