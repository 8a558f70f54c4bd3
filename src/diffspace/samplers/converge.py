"""Convergence lab: measure each sampler's error against a known answer over a range of step counts
and fit the order.

- Deterministic samplers: pathwise endpoint error, mean over the batch of ‖x_N − x_ref‖/sqrt(d), with x_ref the
  exact ODE solution (closed form for a Gaussian, adaptive Dormand–Prince otherwise) from the same x_0 = σ_0·ξ.
- Stochastic samplers, started from the exact marginal p(x; σ_0): distance of the output law to p(x; σ_N).
  Gaussian target: exact — every sampler is affine in (x_0, noise) there, so the output mean and covariance
  are read off one batched run with unit impulses (`propagate_gaussian`); metric: Hellinger distance
  (H² ≤ TV ≤ √2·H). Mixtures: sliced Wasserstein-2 between the outputs and as many exact samples, with the
  same statistic between two exact sample sets reported as the noise floor (points below 2× floor are left
  out of the fit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from diffspace.design import grids
from diffspace.errors import ConfigError
from diffspace.samplers import registry
from diffspace.samplers.problems import Problem
from diffspace.samplers.reference import gaussian_endpoint, solve

POSITIVE_END = ("ddim_type", "ddpm_type", "accel_sde", "accel_ode2")  # Li forms A, C, D, F
GRIDS = ("edm", "exponential", "vp", "ve", "li")


def make_grid(name: str, steps: int, problem: Problem, *, to_zero: bool = False, rho: float = 7.0) -> torch.Tensor:
    """`steps` steps of grid `name` over the problem's σ range; the last one to σ = 0 if `to_zero`.

    'li' is Li et al.'s schedule with T = steps + 1 levels (its own σ range, c0 = 2, c1 = 4)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a positive integer")
    lo, hi = problem.sigma_min, problem.sigma_max
    n = steps if to_zero else steps + 1  # number of positive levels
    if name == "li":
        if n < 2:
            raise ConfigError("the li grid needs T >= 2 levels: use more steps")
        return grids.li(n, append_zero=to_zero)
    if name == "edm":
        return grids.edm(n, lo, hi, rho, append_zero=to_zero)
    if name == "exponential":
        return grids.exponential(n, lo, hi, append_zero=to_zero)
    if name == "vp":
        return grids.vp(n, lo, hi, append_zero=to_zero)
    if name == "ve":
        return grids.ve(n, lo, hi, append_zero=to_zero)
    raise ConfigError(f"unknown grid {name!r}: choose one of {', '.join(GRIDS)}")


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (nan with fewer than 2 usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else float("nan")


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 (E_θ W2²(θ·a, θ·b))^{1/2} over `n_proj` random unit directions; equal sample counts."""
    a, b = a.flatten(1).to(torch.float64), b.flatten(1).to(torch.float64)
    if a.shape != b.shape:
        raise ConfigError(f"sliced_w2 needs equal sample sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values
    return float((pa - pb).pow(2).mean().sqrt())


def gaussian_distances(m1, C1, m2, C2) -> dict[str, float]:
    """Hellinger distance and KL(N1 ‖ N2) between two Gaussians, accurate when they are close.

    With E = L⁻¹(C1 − C2)L⁻ᵀ (C2 = LLᵀ) and ε = eig(E): log BC = Σ(¼log(1+ε) − ½log(1+ε/2)) − ⅛Δmᵀ C̄⁻¹Δm,
    H = sqrt(1 − BC); KL = ½(Σ(ε − log(1+ε)) + Δmᵀ C2⁻¹ Δm).
    """
    m1, m2, C1, C2 = (torch.as_tensor(v, dtype=torch.float64) for v in (m1, m2, C1, C2))
    L = torch.linalg.cholesky(C2)
    E = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, C1 - C2, upper=False).T, upper=False)
    eps = torch.linalg.eigvalsh(0.5 * (E + E.T))
    dm = (m1 - m2)[:, None]
    quad_bar = float(dm.T @ torch.linalg.solve(0.5 * (C1 + C2), dm))
    quad_2 = float(dm.T @ torch.cholesky_solve(dm, L))
    log_bc = float((0.25 * torch.log1p(eps) - 0.5 * torch.log1p(eps / 2)).sum()) - quad_bar / 8
    kl = 0.5 * (float((eps - torch.log1p(eps)).sum()) + quad_2)
    return {"hellinger": math.sqrt(max(-math.expm1(log_bc), 0.0)), "kl": kl}


class _Impulses:
    """Noise source for `propagate_gaussian`: row 1 + d + k·d + j gets e_j at draw k, every other row 0."""

    def __init__(self, d: int, draws: int):
        self.d, self.draws, self.calls = d, draws, 0

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls >= self.draws:
            raise ConfigError("sampler drew more noise than in its probe run: is it data-dependent?")
        out = torch.zeros_like(x).flatten(1)
        rows = 1 + self.d + self.calls * self.d + torch.arange(self.d)
        out[rows, torch.arange(self.d)] = 1
        self.calls += 1
        return out.reshape(x.shape)


class _Counter:
    """Noise source that counts draws (and draws real noise)."""

    def __init__(self, seed: int = 0):
        self.calls, self.gen = 0, torch.Generator().manual_seed(seed)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.randn(x.shape, generator=self.gen, dtype=x.dtype).to(x.device)


def count_draws(fn: Callable, problem: Problem, sigmas: torch.Tensor, options: dict) -> int:
    """How many noise tensors the sampler draws on this grid (0 = deterministic with these options)."""
    counter = _Counter()
    fn(problem.denoiser, torch.zeros(1, *problem.shape, dtype=torch.float64), sigmas, noise=counter, **options)
    return counter.calls


def propagate_gaussian(fn: Callable, problem: Problem, sigmas: torch.Tensor, options: dict, mean0, cov0):
    """Exact output mean and covariance of a sampler on a Gaussian target from x_0 ~ N(mean0, cov0).

    The sampler is affine: out = c + A x_0 + Σ_k B_k ξ_k. One batched run with rows x_0 = 0 (c), x_0 = e_j
    (c + A e_j) and ξ_k = e_j (c + B_k e_j) gives mean c + A·mean0 and covariance A cov0 Aᵀ + Σ_k B_k B_kᵀ.
    """
    d, draws = problem.dim, count_draws(fn, problem, sigmas, options)
    x0 = torch.zeros(1 + d + draws * d, d, dtype=torch.float64)
    x0[1 : 1 + d] = torch.eye(d, dtype=torch.float64)
    out = fn(problem.denoiser, x0.reshape(-1, *problem.shape), sigmas, noise=_Impulses(d, draws), **options)
    out = out.flatten(1).to(torch.float64)
    c = out[0]
    A = (out[1 : 1 + d] - c).T  # column j = A e_j
    B = out[1 + d :] - c  # rows: B_k e_j for every (k, j)
    mean0, cov0 = torch.as_tensor(mean0, dtype=torch.float64), torch.as_tensor(cov0, dtype=torch.float64)
    return c + A @ mean0, A @ cov0 @ A.T + B.T @ B


@dataclass
class Row:
    sampler: str
    kind: str  # 'pathwise', 'hellinger' or 'sw2'
    steps: int
    nfe: int
    target_nfe: int | None
    sigma_start: float
    sigma_end: float
    error: float
    seconds: float


@dataclass
class Result:
    problem: str
    description: str
    grid: str
    axis: str  # 'steps' or 'nfe'
    points: list[int]
    rows: list[Row] = field(default_factory=list)
    floor: float | None = None  # sw2 noise floor
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def samplers(self) -> list[str]:
        return list(dict.fromkeys(r.sampler for r in self.rows))

    def series(self, name: str) -> list[Row]:
        return [r for r in self.rows if r.sampler == name]

    def slope(self, name: str) -> float:
        """Fitted log-log slope of error against steps (or NFE), leaving out points under 2× the noise floor."""
        rows = [r for r in self.series(name) if math.isfinite(r.error)]
        if rows and rows[0].kind == "sw2" and self.floor:
            rows = [r for r in rows if r.error > 2 * self.floor]
        xs = [r.steps if self.axis == "steps" else r.nfe for r in rows]
        return fit_slope(xs, [r.error for r in rows])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["slopes"] = {name: self.slope(name) for name in self.samplers()}
        return out


def _options_for(entry: registry.Sampler, options: dict) -> dict:
    """The options this sampler takes: plain keys where accepted, 'name.key' keys for this sampler only."""
    out = {}
    for key, value in options.items():
        name, _, opt = key.rpartition(".")
        if name and name != entry.name:
            continue
        if opt in entry.options:
            out[opt] = value
        elif name:
            raise ConfigError(f"sampler {entry.name!r} does not take option {opt!r}; it takes: "
                              f"{', '.join(entry.options) or 'none'}")
    return out


def _steps_for_nfe(entry, target: int, grid_of: Callable[[int], torch.Tensor], opts: dict) -> int | None:
    """Largest step count whose NFE does not exceed `target` (None if even one step costs more)."""
    best = None
    for steps in range(1, target + 2):
        try:
            sigmas = grid_of(steps)
        except ConfigError:  # e.g. the li grid needs T >= 2 levels
            continue
        if entry.nfe(sigmas, **opts) <= target:
            best = steps
        elif best is not None:
            break
    return best


def measure(problem: Problem, names: Sequence[str], *, steps: Sequence[int] | None = None,
            nfe: Sequence[int] | None = None, grid: str = "edm", rho: float = 7.0, to_zero: bool = False,
            batch: int = 64, samples: int = 4096, seed: int = 0, options: dict | None = None,
            log: Callable[[str], None] | None = None) -> Result:
    """Run every sampler in `names` at each step count (or NFE budget) and record its error (module docstring)."""
    if (steps is None) == (nfe is None):
        raise ConfigError("give either steps or nfe (a list of step counts or of NFE budgets), not both")
    points = sorted({int(p) for p in (steps if steps is not None else nfe)})
    if not points or points[0] < 1:
        raise ConfigError(f"step counts / NFE budgets must be positive integers, got {list(points)}")
    if grid not in GRIDS:
        raise ConfigError(f"unknown grid {grid!r}: choose one of {', '.join(GRIDS)}")
    entries = [registry.get(n) for n in names]
    options = dict(options or {})
    for key in options:  # every option must be taken by some selected sampler
        name, _, opt = key.rpartition(".")
        if name and name not in names:
            raise ConfigError(f"option {key!r} names sampler {name!r}, which is not selected")
        if not any(opt in e.options for e in entries if not name or e.name == name):
            raise ConfigError(f"no selected sampler takes option {opt!r}")
    log = log or (lambda msg: None)
    result = Result(problem.name, problem.description, grid, "steps" if steps is not None else "nfe", points,
                    settings=dict(batch=batch, samples=samples, seed=seed, rho=rho, to_zero=to_zero, options=options))
    latents = torch.randn(batch, *problem.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    references: dict[tuple[float, float], torch.Tensor] = {}
    exact_end: dict[float, torch.Tensor] = {}

    for entry in entries:
        if entry.adaptive:
            result.skipped[entry.name] = "adaptive step size: step counts and NFE budgets do not apply"
            continue
        opts = _options_for(entry, options)
        zero_here = to_zero and entry.name not in POSITIVE_END
        if to_zero and entry.name in POSITIVE_END:
            opts.setdefault("denoise_to_zero", True)  # end at σ = 0 too, by one extra D(x; σ_min)

        def grid_of(n, zero_here=zero_here):
            return make_grid(grid, n, problem, to_zero=zero_here, rho=rho)

        plan = []  # (target, steps)
        for p in points:
            n = p if steps is not None else _steps_for_nfe(entry, p, grid_of, opts)
            if n is not None:
                plan.append((None if steps is not None else p, n))
        if not plan:
            result.skipped[entry.name] = "no step count fits the NFE budgets"
            continue
        stochastic = count_draws(entry, problem, grid_of(plan[0][1]), opts) > 0
        if stochastic and not (problem.is_gaussian or problem.can_sample):
            result.skipped[entry.name] = "stochastic, and the problem cannot draw exact samples"
            continue
        for target, n in plan:
            sig = grid_of(n)
            s0, s_end = float(sig[0]), (0.0 if opts.get("denoise_to_zero") else float(sig[-1]))
            stats: dict = {}
            t0 = time.perf_counter()
            if not stochastic:
                kind = "pathwise"
                x0 = latents * s0
                key = (s0, s_end)
                if key not in references:
                    references[key] = (gaussian_endpoint(problem.denoiser, x0, s0, s_end) if problem.is_gaussian
                                       else solve(problem.denoiser, x0, s0, s_end, rtol=1e-11, atol=1e-11))
                out = entry(problem.denoiser, x0, sig, stats=stats, **opts)
                err = float((out - references[key]).flatten(1).norm(dim=1).mean()) / math.sqrt(problem.dim)
            elif problem.is_gaussian:
                kind = "hellinger"
                m0, c0 = problem.gaussian_moments(s0)
                stats["nfe"] = entry.nfe(sig, **opts)
                m, c = propagate_gaussian(entry, problem, sig, opts, m0, c0)
                err = gaussian_distances(m, c, *problem.gaussian_moments(s_end))["hellinger"]
            else:
                kind = "sw2"
                g = torch.Generator().manual_seed(seed + 1)
                x0 = problem.sample(samples, s0, g)
                out = entry(problem.denoiser, x0, sig, stats=stats, noise=_Counter(seed + 2), **opts)
                if s_end not in exact_end:
                    exact_end[s_end] = problem.sample(samples, s_end, torch.Generator().manual_seed(seed + 3))
                    if result.floor is None:
                        other = problem.sample(samples, s_end, torch.Generator().manual_seed(seed + 4))
                        result.floor = sliced_w2(exact_end[s_end], other, seed=seed)
                err = sliced_w2(out, exact_end[s_end], seed=seed)
            row = Row(entry.name, kind, n, int(stats.get("nfe", -1)), target, s0, s_end, err,
                      time.perf_counter() - t0)
            result.rows.append(row)
            log(f"{entry.name:16s} steps {n:4d}  nfe {row.nfe:4d}  {kind:9s} {err:.3e}")
    return result


def nominal_order(entry: registry.Sampler, opts: dict) -> float | None:
    """The registered order, adjusted for options that change it (iPNDM's max_order, DPM-Solver++(3M) compat)."""
    if "max_order" in opts:
        return float(opts["max_order"])
    if entry.name == "dpmpp_3m" and opts.get("compat"):
        return 2.0
    return entry.order


def format_table(result: Result) -> str:
    """Plain-text table: one row per sampler, one column per step count (or NFE budget), fitted slope."""
    head = "steps" if result.axis == "steps" else "NFE"
    names = result.samplers()
    width = max([len(n) for n in names] + [7])
    cols = [f"{head} {p}" for p in result.points]
    lines = [f"{'sampler':{width}s}  {'kind':9s}  " + "  ".join(f"{c:>10s}" for c in cols) + "  slope  nominal"]
    short = False
    for name in names:
        by_point = {(r.steps if result.axis == "steps" else r.target_nfe): r for r in result.series(name)}
        cells = []
        for p in result.points:
            r = by_point.get(p)
            if r is None:
                cells.append(f"{'-':>10s}")
                continue
            mark = "*" if result.axis == "nfe" and r.nfe != p else " "
            short |= mark == "*"
            cells.append(f"{r.error:9.2e}{mark}")
        entry = registry.get(name)
        order = nominal_order(entry, _options_for(entry, result.settings.get("options", {})))
        kind = result.series(name)[0].kind
        lines.append(f"{name:{width}s}  {kind:9s}  " + "  ".join(cells) +
                     f"  {result.slope(name):5.2f}  {'' if order is None else f'{-order:g}':>7s}")
    notes = []
    if short:
        notes.append("* fewer NFE than the budget: this sampler cannot spend exactly that many (see the nfe column)")
    if result.floor is not None:
        notes.append(f"sw2 noise floor (two exact sample sets): {result.floor:.2e}; points under 2x floor not fitted")
    notes += [f"skipped {k}: {v}" for k, v in result.skipped.items()]
    return "\n".join(lines + notes)
