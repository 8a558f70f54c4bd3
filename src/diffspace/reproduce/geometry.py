"""Claims of the geometric perspective (Chen et al. 2023) and its follow-ups GITS (Chen et al., ICML 2024) and
AMED (Zhou et al., CVPR 2024), checked with the optimal denoiser of scikit-learn's 8×8 digits and exact mixtures."""

from __future__ import annotations

import math

import torch

from diffspace.design import grids
from diffspace.reproduce.common import digits, latents, loglog
from diffspace.reproduce.core import FAIL, PASS, REPORTED, Outcome, claim, need

SRC = "Chen et al. 2023 (geometric perspective)"


def _optimal_run(quick: bool, seed: int, steps: int = 18, batch: int | None = None, sampler: str = "euler"):
    """Euler (or another sampler) with the optimal denoiser of digits from N(0, 80² I), ρ=7 grid 80 → 0.002."""
    from diffspace.denoisers import Empirical

    record = need("diffspace.geometry", "record")
    data = digits()
    D = Empirical(data)
    batch = batch or (32 if quick else 256)
    x = torch.randn(batch, data.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sigmas = grids.edm(steps + 1, 0.002, 80.0, append_zero=False)
    return data, D, record(sampler, D, x * 80.0, sigmas), sigmas


@claim("geo.11", source=SRC, title="The optimal denoiser is one step of Gaussian mean shift",
       prediction="D*(x; sigma) equals the kernel mean with bandwidth sigma, so Euler with D* is annealed mean shift "
                  "(to rounding); the softmax stays finite and accurate in float32 down to sigma = 0.002 in d = 64")
def mean_shift_identity(quick: bool, seed: int, mean_shift=None) -> Outcome:
    from diffspace.denoisers import Empirical

    mean_shift = mean_shift or need("diffspace.geometry", "mean_shift")
    data = digits()
    D = Empirical(data)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sigmas = grids.edm(19, 0.002, 80.0, append_zero=False)
    from diffspace import samplers

    euler = samplers.euler(D, x * 80.0, sigmas)
    shifted = mean_shift(data, x * 80.0, sigmas)
    path_err = float((euler - shifted).abs().max())
    one = max(float((D(x * s, torch.tensor(s, dtype=torch.float64)) -
                     mean_shift(data, x * s, torch.tensor([s, 0.0], dtype=torch.float64))).abs().max())
              for s in (80.0, 1.0, 0.1, 0.002))
    # float32 at the smallest bandwidth: points near the data, where the softmax is sharpest.
    near = data[:64] + 0.002 * x
    d64 = D(near, torch.tensor(0.002, dtype=torch.float64))
    d32 = D(near.float(), torch.tensor(0.002))
    f32_err = float((d32.double() - d64).abs().max())
    ok = path_err < 1e-12 and one < 1e-10 and bool(torch.isfinite(d32).all()) and f32_err < 1e-4
    return Outcome(f"Euler vs annealed mean shift over 18 steps: max |diff| {path_err:.1e}; single step at sigma in "
                   f"{{80, 1, 0.1, 0.002}}: {one:.1e}; float32 at sigma=0.002: finite, max |diff| to float64 "
                   f"{f32_err:.1e}", PASS if ok else FAIL,
                   {"euler_vs_mean_shift": path_err, "one_step": one, "float32_error": f32_err})


@claim("geo.12", source=SRC, title="Sampling with the optimal denoiser memorises the training set",
       prediction="final samples land on training points: nearest-neighbour distance about 0 relative to the median "
                  "inter-sample distance (at least 99 % within 1e-3)")
def memorisation(quick: bool, seed: int) -> Outcome:
    memorization = need("diffspace.geometry", "memorization")
    data, D, traj, sigmas = _optimal_run(quick, seed, batch=64 if quick else 256)
    final = D(traj.final, torch.tensor(float(sigmas[-1]), dtype=torch.float64))  # the last step to sigma = 0
    m = memorization(final, data, threshold=1e-3)
    ok = m["memorized"] >= 0.99

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(m["relative"].clamp_min(1e-16).log10().numpy(), bins=30)
        ax.set_xlabel("log10 nearest-neighbour distance / median distance")
        ax.set_ylabel("samples")

    return Outcome(f"{100 * m['memorized']:.1f} % of {len(final)} samples within 1e-3 of a training point (median "
                   f"relative distance {m['median']:.1e})", PASS if ok else FAIL,
                   {"memorized": m["memorized"], "median": m["median"]}, draw)


@claim("geo.13", source=SRC, title="Sampling trajectories are quasi-linear (boomerang deviation)",
       prediction="the deviation from the start-end line is a small fraction of the start-end distance (read here: "
                  "under 10 %), peaks inside the trajectory, and the tangent points at the final sample "
                  "(cos > 0.9) over most (>= 80 %) of the steps")
def quasi_linear(quick: bool, seed: int) -> Outcome:
    deviation, tangent_cosine = need("diffspace.geometry", "deviation", "tangent_cosine")
    data, D, traj, sigmas = _optimal_run(quick, seed, steps=20)
    dev = deviation(traj.x)  # [K+1, B]
    chord = (traj.x[-1] - traj.x[0]).norm(dim=-1)
    rel = dev / chord
    peak = int(rel.mean(1).argmax())
    cos = tangent_cosine(traj.x, traj.denoised)  # [K, B]
    share = float((cos.mean(1) > 0.9).double().mean())
    ok = float(rel.max()) < 0.1 and 0 < peak < len(rel) - 1 and share >= 0.8

    def draw(fig):
        ax = fig.add_subplot(1, 2, 1)
        ax.plot(rel.mean(1).numpy(), "o-", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel("deviation / start-end distance")
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.plot(cos.mean(1).numpy(), "o-", ms=3)
        ax2.set_xlabel("step")
        ax2.set_ylabel("cos(d, x - x_end)")

    return Outcome(f"max deviation {100 * float(rel.max()):.2f} % of the start-end distance, peak at step {peak} of "
                   f"{len(rel) - 1}; mean cosine > 0.9 at {100 * share:.0f} % of the steps", PASS if ok else FAIL,
                   {"relative_deviation": rel.mean(1), "cosine": cos.mean(1)}, draw)


@claim("geo.14", source=SRC, title="The denoising trajectory converges faster; ODE-Jump loses little",
       prediction="the denoising trajectory is closer to the final sample than the sampling trajectory at every "
                  "step after the first; jumping to D(x_k) halfway is close to the full run")
def denoising_faster(quick: bool, seed: int) -> Outcome:
    distance_to_final = need("diffspace.geometry", "distance_to_final")
    data, D, traj, sigmas = _optimal_run(quick, seed)
    final = traj.final
    dx = distance_to_final(traj.x[:-1], final)
    dd = distance_to_final(traj.denoised, final)
    closer = bool((dd[1:] < dx[1:]).all())
    k = traj.steps // 2
    jump = float((traj.denoised[k] - final).norm(dim=-1).mean() / (traj.x[0] - final).norm(dim=-1).mean())
    series = {"sampling": dx.mean(1).tolist(), "denoising": dd.mean(1).tolist()}

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        for name, ys in series.items():
            ax.semilogy(ys, "o-", ms=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("distance to the final sample")
        ax.legend(fontsize=7)

    return Outcome(f"denoising trajectory closer at every step after the first: {closer}; jump at step {k}/"
                   f"{traj.steps}: distance to the full run {100 * jump:.2f} % of the start distance",
                   PASS if closer else FAIL, {**series, "jump_relative": jump}, draw)


@claim("geo.15", source=SRC, title="Optimal sampling never lowers the KDE likelihood",
       prediction="log p_sigma(x) at the current bandwidth never decreases over an optimal Euler step")
def kde_monotone(quick: bool, seed: int) -> Outcome:
    likelihood_steps = need("diffspace.geometry", "likelihood_steps")
    data, D, traj, sigmas = _optimal_run(quick, seed, batch=64 if quick else 256)
    before, after = likelihood_steps(D, traj.x, traj.sigma_hat)
    gain = after - before
    ok = float(gain.min()) >= -1e-9 * float(before.abs().max())
    return Outcome(f"{gain.numel()} steps: smallest change {float(gain.min()):.3e} nats, mean {float(gain.mean()):.3e}",
                   PASS if ok else FAIL, {"min_gain": float(gain.min()), "steps": gain.numel()})


@claim("geo.16", source=SRC, title="Trajectories are nearly two-dimensional",
       prediction="the top-2 principal components hold almost all (read here: >= 95 %) of each trajectory's "
                  "variance; the start norm is about sigma_max * sqrt(d)")
def low_dimensional(quick: bool, seed: int) -> Outcome:
    explained_variance = need("diffspace.geometry", "explained_variance")
    data, D, traj, sigmas = _optimal_run(quick, seed)
    frac = explained_variance(traj.x, k=3)  # [B, 3]
    top2 = float(frac[:, 1].mean())
    start = float(traj.x[0].norm(dim=-1).mean() / (80.0 * math.sqrt(data.shape[1])))
    ok = top2 >= 0.95 and abs(start - 1) < 0.1
    return Outcome(f"variance in the top 1/2/3 PCs: {float(frac[:, 0].mean()):.4f} / {top2:.4f} / "
                   f"{float(frac[:, 2].mean()):.4f}; ||x_T|| / (sigma_max sqrt(d)) = {start:.3f}", PASS if ok else FAIL,
                   {"explained": frac.mean(0), "start_norm_ratio": start})


@claim("geo.17", source=SRC, title="Score deviation of a generalising denoiser",
       prediction="the learned denoiser's deviation from the optimal one is small at large and small sigma and larger "
                  "in between; its samples are novel (shape not stated precisely: report it)")
def score_deviation_profile(quick: bool, seed: int) -> Outcome:
    from diffspace.denoisers import Empirical

    record, score_deviation, memorization = need("diffspace.geometry", "record", "score_deviation", "memorization")
    data = digits()
    optimum = Empirical(data)
    h = 0.5  # a smoothed (generalising) denoiser: the optimal one at an inflated bandwidth sqrt(sigma^2 + h^2)

    def smooth(x, sigma, **kw):
        s = torch.as_tensor(sigma, dtype=torch.float64)
        return optimum(x, (s**2 + h**2).sqrt())

    batch = 32 if quick else 128
    x = torch.randn(batch, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 80.0
    sigmas = grids.edm(19, 0.002, 80.0, append_zero=False)
    learned, optimal = record("euler", smooth, x, sigmas), record("euler", optimum, x, sigmas)
    dev = score_deviation(learned, optimal, smooth, optimum)["on_learned"].mean(1)
    peak = int(dev.argmax())
    novel = memorization(learned.final, data, threshold=1e-3)["novel"]
    return Outcome(f"deviation ||D_theta - D*|| on the learned trajectory peaks at sigma={float(sigmas[peak]):.3g} "
                   f"(step {peak}/{len(dev) - 1}: {float(dev[peak]):.2f}; first {float(dev[0]):.2f}, last "
                   f"{float(dev[-1]):.2f}); {100 * novel:.0f} % of its samples are novel", REPORTED,
                   {"sigma": sigmas[:-1], "deviation": dev, "novel": novel},
                   lambda fig: loglog(fig, sigmas[:-1].tolist(), {"||D_theta - D*||": dev.tolist()}, "sigma",
                                      "deviation", "digits, KDE bandwidth +0.5"))


@claim("amed.19", source="Zhou et al. 2024 (AMED)", title="A mean-direction point exists on every step",
       prediction="for each step of a coarse grid some intermediate point r in [0, 1] makes the one-evaluation step "
                  "match the exact solution far better than the midpoint r = 1/2 (read here: the geometric mean "
                  "over the steps of best-r error / midpoint error is at most 1/2)")
def amed_direction(quick: bool, seed: int) -> Outcome:
    from diffspace.samplers import problems
    from diffspace.samplers.reference import solve

    problem = problems.get("gmm2" if quick else "gmm64", seed=seed)
    sig = grids.edm(6, 0.002, 80.0, append_zero=False)  # 5 steps
    x = latents(problem, 32, seed) * 80.0
    rs = torch.linspace(0, 1, 101, dtype=torch.float64)
    best, half = [], []
    for i in range(len(sig) - 1):
        t, t2 = float(sig[i]), float(sig[i + 1])
        ref = solve(problem.denoiser, x, t, t2, rtol=1e-10, atol=1e-10)
        d = (x - problem.denoiser(x, torch.tensor(t, dtype=torch.float64))) / t
        errs = []
        for r in rs:
            tm = t ** (1 - float(r)) * t2 ** float(r)  # geometric interpolation of the step, as AMED
            xm = x + (tm - t) * d
            dm = (xm - problem.denoiser(xm, torch.tensor(tm, dtype=torch.float64))) / tm
            errs.append(float((x + (t2 - t) * dm - ref).norm(dim=-1).mean()))
        best.append(min(errs))
        half.append(errs[50])
        x = ref
    ratio = [b / h for b, h in zip(best, half)]
    mean_ratio = math.exp(sum(math.log(q) for q in ratio) / len(ratio))
    ok = mean_ratio <= 0.5

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        ax.semilogy(best, "o-", label="best r")
        ax.semilogy(half, "s-", label="r = 1/2 (DPM-Solver-2)")
        ax.set_xlabel("step")
        ax.set_ylabel("one-step error")
        ax.legend(fontsize=7)

    return Outcome("best-r error / midpoint error per step: " + ", ".join(f"{q:.2f}" for q in ratio)
                   + f" (geometric mean {mean_ratio:.2f}; {problem.name}, 5-step rho=7 grid)", PASS if ok else FAIL,
                   {"best": best, "midpoint": half}, draw)


@claim("gits.18", source="Chen et al. 2024 (GITS)", title="GITS time grids lower the error at 5-10 NFE", quick=False,
       prediction="a grid chosen by dynamic programming on the teacher's cost matrix (61-level rho=7 iPNDM teacher, "
                  "coeff 1.15) gives iPNDM a lower error than the rho=7 grid at 5, 6, 8 and 10 NFE")
def gits_grids(quick: bool, seed: int, solve_dp=None) -> Outcome:
    from diffspace import samplers
    from diffspace.samplers import problems
    from diffspace.samplers.reference import solve

    teacher_costs, default_dp = need("diffspace.tune.gits", "teacher_costs", "solve_dp")
    solve_dp = solve_dp or default_dp
    problem = problems.get("gmm3x32x32", seed=seed)
    lo, hi = problem.sigma_min, problem.sigma_max
    table = teacher_costs(problem.denoiser, shape=problem.shape, warmup=64 if quick else 256, seed=seed)
    x = latents(problem, 16, seed + 1000) * hi  # held-out seeds, not among the warm-up ones
    ref = solve(problem.denoiser, x, hi, lo, rtol=1e-8, atol=1e-8)
    budgets = [5, 6, 8, 10]
    errs: dict[str, list[float]] = {"ipndm, rho=7": [], "ipndm, GITS": [], "euler, rho=7": [], "euler, GITS": []}
    for nfe in budgets:  # 1 NFE per step on a grid ending above 0
        for name in ("ipndm", "euler"):
            for label, sig in (("rho=7", grids.edm(nfe + 1, lo, hi, append_zero=False)),
                               ("GITS", table.sigmas[solve_dp(table.C, nfe)])):
                out = samplers.get(name)(problem.denoiser, x, sig)
                errs[f"{name}, {label}"].append(float((out - ref).flatten(1).norm(dim=1).mean())
                                               / math.sqrt(problem.dim))
    ok = all(g < r for g, r in zip(errs["ipndm, GITS"], errs["ipndm, rho=7"]))
    return Outcome("RMS error at NFE " + ", ".join(map(str, budgets)) + ": " + "; ".join(
        f"{k} " + "/".join(f"{v:.2e}" for v in vs) for k, vs in errs.items()) + " (gmm3x32x32, 16 held-out seeds)",
        PASS if ok else FAIL, {"nfe": budgets, "errors": errs},
        lambda fig: loglog(fig, budgets, errs, "NFE", "RMS endpoint error", "gmm3x32x32"))
