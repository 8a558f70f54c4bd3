"""The measurements behind `diffspace analyze`: record optimal (and learned) trajectories from the same latents
and reduce them to per-step curves over seeds and summary numbers. Figures and the report are in report.py."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from diffspace.errors import ConfigError
from diffspace.geometry import meanshift, memorize, metrics, scoredev
from diffspace.geometry.interpolate import METHODS, interpolate, path_norms
from diffspace.geometry.trajectory import Trajectory, record

__all__ = ["Settings", "analyze", "band"]


@dataclass
class Settings:
    """What to run. `steps`: noise levels before the final 0 (as `diffspace generate --steps`)."""

    sampler: str = "euler"
    steps: int = 18
    seeds: Sequence[int] = tuple(range(64))
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    options: dict = field(default_factory=dict)
    threshold: float = 1e-3         # memorised: nearest-neighbour distance / median inter-sample distance below this
    interp_pairs: int = 4           # latent pairs for the interpolation norms (2 are shown as image strips)
    interp_points: int = 9          # points per interpolation path
    meanshift_seeds: int = 16       # seeds for the Euler = mean-shift check (and the KDE likelihood on large data)
    fid_seeds: Sequence[int] = ()   # seeds of the ODE-Jump FID/KID (network and features only)
    show: int = 8                   # trajectories drawn in the projection and image figures


def band(t: torch.Tensor) -> dict:
    """Per-step mean, 10% and 90% quantiles over seeds of a [steps, batch] curve."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return {"mean": t.mean(1).tolist(), "q10": t.quantile(0.1, dim=1).tolist(), "q90": t.quantile(0.9, dim=1).tolist()}


def _grid(s: Settings) -> torch.Tensor:
    from diffspace.design import grids

    if not isinstance(s.steps, int) or s.steps < 2:
        raise ConfigError(f"--steps {s.steps} must be an integer >= 2: a trajectory needs at least two steps")
    return grids.edm(s.steps, s.sigma_min, s.sigma_max, s.rho)


def _latents(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    from diffspace.samplers import StackedRandom

    return StackedRandom(seeds).randn(shape, dtype=torch.float32).to(torch.float64)


def trajectory_stats(traj: Trajectory) -> dict:
    """Per-step curves (bands over seeds) and per-trajectory numbers of one recorded batch."""
    x, den = traj.x.to(torch.float64), traj.denoised.to(torch.float64)
    final = x[-1]
    chord = (x[-1] - x[0]).flatten(1).norm(dim=1)
    dev_x = metrics.deviation(x, batched=True)
    dev_d = metrics.deviation(den, batched=True)
    chord_d = (den[-1] - den[0]).flatten(1).norm(dim=1)
    dist_x = metrics.distance_to_final(x, final, batched=True)
    dist_d = metrics.distance_to_final(den, final, batched=True)
    tangent = (x[:-1] - den) / traj.sigma_hat.reshape(-1, *[1] * (x.ndim - 1))
    dim = x[0, 0].numel()
    pca_x = metrics.explained_variance(x, 3, batched=True)
    pca_d = metrics.explained_variance(den, 3, batched=True)
    steps_len = (x[1:] - x[:-1]).flatten(2).norm(dim=-1).sum(0)
    return {
        "chord": chord.tolist(),
        "deviation_rel": band(dev_x / chord), "deviation_denoised_rel": band(dev_d / chord_d),
        "max_deviation_rel": float((dev_x / chord).max(0).values.mean()),
        "max_deviation_denoised_rel": float((dev_d / chord_d).max(0).values.mean()),
        "dist_x": band(dist_x), "dist_d": band(dist_d),
        "denoised_closer": (dist_d < dist_x[:-1]).double().mean(1).tolist(),
        "norm_x": band(metrics.norms(x, batched=True)), "norm_d": band(metrics.norms(den, batched=True)),
        "norm_tangent": band(metrics.norms(tangent, batched=True)),
        "norm_x0_ratio": float((x[0].flatten(1).norm(dim=1) / (float(traj.sigmas[0]) * math.sqrt(dim))).mean()),
        "path_length_ratio": float((steps_len / (float(traj.sigmas[0]) * math.sqrt(dim))).mean()),
        "cosine": band(metrics.tangent_cosine(x, den, batched=True)),
        "pca_x": {f"top{k + 1}": {"mean": float(pca_x[:, k].mean()), "min": float(pca_x[:, k].min())}
                  for k in range(3)},
        "pca_d": {f"top{k + 1}": {"mean": float(pca_d[:, k].mean()), "min": float(pca_d[:, k].min())}
                  for k in range(3)},
        "jump_error": band((den - final[None]).flatten(2).norm(dim=-1) / math.sqrt(dim)),
        "jump_nfe": traj.nfe_at.tolist() if traj.nfe_at is not None else None,
        "nfe": traj.nfe,
    }


def _likelihood(optimum, traj: Trajectory, n: int) -> dict:
    """KDE log-likelihood change of each step on the first n seeds."""
    before, after = meanshift.likelihood_steps(optimum, traj.x[:, :n], traj.sigma_hat)
    delta = after - before
    return {"delta": band(delta), "min_delta": float(delta.min()), "share_negative": float((delta < 0).double().mean()),
            "steps": int(delta.numel())}


def _interpolation(s: Settings, shape, sigmas, models: dict[str, object]) -> dict:
    """Norm profiles of each path over `interp_pairs` latent pairs, and image strips of the first pair."""
    from diffspace import samplers

    pairs = max(1, s.interp_pairs)
    base = 1_000_000 + int(s.seeds[0]) if len(s.seeds) else 1_000_000
    z = _latents(range(base, base + 2 * pairs), shape)
    ts = torch.linspace(0, 1, s.interp_points, dtype=torch.float64)
    radius = math.sqrt(z[0].numel())
    out: dict = {"t": ts.tolist(), "norms": {}, "midpoint_ratio": {}, "strips": {}}
    for method in METHODS:
        prof = torch.stack([path_norms(interpolate(z[2 * p], z[2 * p + 1], ts, method))
                            for p in range(pairs)], 1) / radius
        out["norms"][method] = band(prof)
        ends = 0.5 * (z[0::2].flatten(1).norm(dim=1) + z[1::2].flatten(1).norm(dim=1)) / radius
        mid = prof[len(ts) // 2] if len(ts) % 2 else 0.5 * (prof[len(ts) // 2 - 1] + prof[len(ts) // 2])
        out["midpoint_ratio"][method] = float((mid / ends).mean())
    paths = torch.cat([interpolate(z[0], z[1], ts, method) for method in METHODS])  # one batch for all paths
    for name, model in models.items():
        strips = samplers.get(s.sampler)(model, paths * sigmas[0], sigmas, **s.options).split(len(ts))
        out["strips"][name] = dict(zip(METHODS, strips))
    return out


def analyze(data: torch.Tensor, *, net=None, settings: Settings | None = None, optimum=None,
            features: Callable | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Run every measurement on `data` (training images or points [K, *event], float in the model's space).

    `net`: a trained denoiser to compare with the optimal one (None: optimal denoiser only). `optimum`: the optimal
    denoiser (default denoisers.Empirical(data)). `features`: uint8 images [N, C, H, W] -> features [N, F] for the
    ODE-Jump FID/KID of the network. Returns a dict of numbers, curves and tensors for report.write_report.
    """
    from diffspace import samplers
    from diffspace.denoisers import Empirical

    s = settings or Settings()
    say = progress or (lambda text: None)
    if len(data) < 2:
        raise ConfigError(f"the dataset has {len(data)} item(s): the analysis needs at least two")
    if not len(s.seeds):
        raise ConfigError("no seeds: pass e.g. --seeds 0-63")
    entry = samplers.get(s.sampler)
    entry.check_options(s.options)
    sigmas = _grid(s)
    shape = tuple(data.shape[1:])
    optimum = Empirical(data) if optimum is None else optimum
    timings: dict = {}
    result: dict = {"shape": list(shape), "dim": int(np.prod(shape)), "num_data": len(data), "sampler": s.sampler,
                    "steps": s.steps, "options": dict(s.options), "sigmas": sigmas.tolist(), "seeds": len(s.seeds),
                    "stochastic": bool(entry.stochastic), "timings": timings, "runs": {},
                    "settings": {"rho": s.rho, "show": s.show, "threshold": s.threshold, "interp_pairs": s.interp_pairs,
                                 "interp_points": s.interp_points, "fid_seeds": len(s.fid_seeds)}}
    latents = _latents(s.seeds, shape)

    def noise():
        return {"noise": samplers.StackedRandom(s.seeds)} if entry.stochastic else {}

    t0 = time.perf_counter()
    say("optimal trajectories")
    opt = record(s.sampler, optimum, latents * sigmas[0], sigmas, **noise(), **s.options)
    result["runs"]["optimal"] = trajectory_stats(opt)
    # The KDE likelihood costs two passes over the data per step: all seeds on small sets, a few on large ones.
    n_lik = len(s.seeds) if data.numel() <= 2_000_000 else min(len(s.seeds), s.meanshift_seeds)
    result["runs"]["optimal"]["likelihood"] = _likelihood(optimum, opt, n_lik)
    timings["optimal trajectories"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("mean shift")
    lam, targets = meanshift.mean_shift_view(opt.x, opt.sigmas, opt.sigma_hat)
    n_ms = min(len(s.seeds), s.meanshift_seeds)
    # On the optimal run the kernel mean at x_i with bandwidth σ̂_i is the recorded denoiser output itself.
    gap = (targets[:, :n_ms] - opt.denoised[:, :n_ms].to(torch.float64)).flatten(2).norm(dim=-1)
    result["meanshift"] = {"step_size": lam.tolist(), "target_gap": band(gap), "seeds": n_ms}
    if s.sampler == "euler" and not s.options:
        path = meanshift.mean_shift(data, latents[:n_ms] * sigmas[0], sigmas, return_path=True)
        result["meanshift"]["euler_max_abs_diff"] = float((path - opt.x[:, :n_ms]).abs().max())
    timings["mean shift"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("memorisation")
    scale = memorize.median_pairwise_distance(data)
    mem_opt = memorize.memorization(opt.final, data, threshold=s.threshold, scale=scale)
    result["memorization"] = {"scale": scale, "threshold": s.threshold, "optimal": _mem_summary(mem_opt)}
    result["tensors"] = {"optimal": opt, "nn_optimal": mem_opt["index"][: s.show]}
    timings["memorisation"] = time.perf_counter() - t0

    if net is not None:
        t0 = time.perf_counter()
        say("learned trajectories")
        learned = record(s.sampler, net, latents * sigmas[0], sigmas, **noise(), **s.options)
        result["runs"]["learned"] = trajectory_stats(learned)
        result["runs"]["learned"]["likelihood"] = _likelihood(optimum, learned, n_lik)
        mem = memorize.memorization(learned.final, data, threshold=s.threshold, scale=scale)
        result["memorization"]["learned"] = _mem_summary(mem)
        result["tensors"].update(learned=learned, nn_learned=mem["index"][: s.show])
        timings["learned trajectories"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        say("score deviation")
        dev = scoredev.score_deviation(learned, opt, net, optimum)
        result["score_deviation"] = {k: band(v) for k, v in dev.items()}
        timings["score deviation"] = time.perf_counter() - t0
        if features is not None and len(s.fid_seeds):
            t0 = time.perf_counter()
            say("ODE-Jump FID/KID")
            result["jump_fid"] = jump_fid(net, data, s, sigmas, shape, features)
            timings["ODE-Jump FID/KID"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("interpolation")
    models = {"optimal": optimum, **({"learned": net} if net is not None else {})}
    result["interpolation"] = _interpolation(s, shape, sigmas, models)
    timings["interpolation"] = time.perf_counter() - t0
    return result


def _mem_summary(mem: dict) -> dict:
    rel = mem["relative"]
    return {"memorized": mem["memorized"], "novel": mem["novel"], "median": mem["median"],
            "q10": float(rel.quantile(0.1)), "q90": float(rel.quantile(0.9)), "max": float(rel.max()),
            "samples": len(rel)}


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W] with EDM's conversion."""
    return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8).numpy()


def jump_fid(net, data: torch.Tensor, s: Settings, sigmas, shape, features: Callable, max_ref: int = 2000) -> dict:
    """FID and KID of the ODE-Jump outputs at every k against (at most `max_ref`) training images, in the given
    feature space; one recorded run per batch of 100 seeds gives all k at once."""
    from diffspace import samplers
    from diffspace.metrics.fid import fid_from_features
    from diffspace.metrics.kid import kid

    if len(shape) != 3:
        raise ConfigError("ODE-Jump FID/KID needs image data [C, H, W]")
    pick = np.sort(np.random.RandomState(0).choice(len(data), min(len(data), max_ref), replace=False))
    ref = np.asarray(features(to_uint8_images(data[torch.as_tensor(pick)])))
    seeds = list(s.fid_seeds)
    per_k: list[list[np.ndarray]] = [[] for _ in range(len(sigmas) - 1)]
    nfe_at = None
    for b in range(0, len(seeds), 100):
        part = seeds[b:b + 100]
        noise = {"noise": samplers.StackedRandom(part)} if samplers.get(s.sampler).stochastic else {}
        traj = record(s.sampler, net, _latents(part, shape) * sigmas[0], sigmas, **noise, **s.options)
        nfe_at = traj.nfe_at.tolist()
        for k in range(len(per_k)):
            per_k[k].append(np.asarray(features(to_uint8_images(traj.denoised[k]))))
    rows = []
    for k, feats in enumerate(per_k):
        f = np.concatenate(feats)
        kid_mean, kid_std = kid(f, ref, num_subsets=50, seed=0)
        rows.append({"k": k + 1, "nfe": nfe_at[k], "fid": fid_from_features(f, ref), "kid": kid_mean,
                     "kid_std": kid_std})
    return {"images": len(seeds), "reference": len(pick), "rows": rows}
