"""Side by side with k-diffusion: same grid, same exact denoiser, same noise, float64.

Prints, for every sampler k-diffusion also has, the largest absolute difference of the final samples and the
wall-time ratio (ours / k-diffusion, best of 3, cheap denoiser so that sampler overhead shows), and writes
benchmarks/results/compare_k_diffusion.json (or OUT/compare_k_diffusion.json with `--out OUT`).

    python benchmarks/compare_k_diffusion.py            # the full comparison (about a minute on one core)
    python benchmarks/compare_k_diffusion.py --quick    # 2 grids, 1 timing repeat; writes to a temp folder

Both modes run k-diffusion itself and exit non-zero when a pair that should agree differs by more than 1e-11
(float64 round-off over a few dozen steps stays below 1e-12 here).

k-diffusion is not a dependency: see benchmarks/lib/peers.py for how to install it and how it is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from lib.peers import K_INSTALL, load_k_sampling, version

from diffspace import grids, samplers
from diffspace.samplers import problems

OUT = Path(__file__).parent / "results"
TOLERANCE = 1e-11  # every pair implements the same update in float64; the largest measured gap is ~1e-13


def pairs(ks):
    """(label, ours(model, x, sigmas, seeds), theirs(model, x, sigmas, seeds))."""

    def noise_from(seeds, x):
        rng = samplers.StackedRandom(seeds)
        return lambda sigma, sigma_next: rng.randn_like(x)

    def ours(name, **kw):
        def f(model, x, sig, seeds):
            s = samplers.get(name)
            extra = {"noise": samplers.StackedRandom(seeds)} if "noise" in s._params else {}
            return s(model, x, sig, **extra, **kw)
        return f

    def theirs(fn, noisy=False, **kw):
        def f(model, x, sig, seeds):
            extra = {"noise_sampler": noise_from(seeds, x)} if noisy else {}
            return fn(model, x.clone(), sig, disable=True, **extra, **kw)
        return f

    def churn(fn_name):  # EDM Algorithm 2: both draw one global-RNG tensor per step when churning
        def f(model, x, sig, seeds):
            torch.manual_seed(seeds[0])
            if fn_name == "ours":
                return samplers.edm(model, x, sig, noise=samplers.GlobalRandom(), S_churn=40.0, S_noise=1.003)
            return ks.sample_heun(model, x.clone(), sig, disable=True, s_churn=40.0, s_noise=1.003)
        return f

    return [
        ("euler / sample_euler", ours("euler"), theirs(ks.sample_euler)),
        ("ddim / sample_euler", ours("ddim"), theirs(ks.sample_euler)),
        ("heun / sample_heun", ours("heun"), theirs(ks.sample_heun)),
        ("edm S_churn=40 / sample_heun s_churn=40", churn("ours"), churn("theirs")),
        ("dpm_2 / sample_dpm_2", ours("dpm_2"), theirs(ks.sample_dpm_2)),
        ("dpmpp_2m / sample_dpmpp_2m", ours("dpmpp_2m"), theirs(ks.sample_dpmpp_2m)),
        ("dpmpp_3m compat / sample_dpmpp_3m_sde eta=0", ours("dpmpp_3m", compat=True),
         theirs(ks.sample_dpmpp_3m_sde, eta=0.0)),
        ("ipndm / sample_lms (order 4)", ours("ipndm"), theirs(ks.sample_lms, order=4)),
        ("ipndm max_order=3 / sample_lms order=3", ours("ipndm", max_order=3), theirs(ks.sample_lms, order=3)),
        ("euler_ancestral / sample_euler_ancestral", ours("euler_ancestral"),
         theirs(ks.sample_euler_ancestral, noisy=True)),
        ("euler_ancestral eta=0.5 / same", ours("euler_ancestral", eta=0.5),
         theirs(ks.sample_euler_ancestral, noisy=True, eta=0.5)),
        ("ddpm / sample_euler_ancestral", ours("ddpm"), theirs(ks.sample_euler_ancestral, noisy=True)),
        ("dpmpp_2m_sde / sample_dpmpp_2m_sde", ours("dpmpp_2m_sde"), theirs(ks.sample_dpmpp_2m_sde, noisy=True)),
        ("dpmpp_2m_sde heun / same", ours("dpmpp_2m_sde", solver_type="heun"),
         theirs(ks.sample_dpmpp_2m_sde, noisy=True, solver_type="heun")),
    ]


def best_time(fn, *args, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="grids edm(5), edm(10) only and one timing repeat; "
                    "writes to a new temporary folder unless --out is given")
    ap.add_argument("--out", help="folder for compare_k_diffusion.json (default: benchmarks/results)")
    args = ap.parse_args()
    out_dir = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="compare_kd_quick_")) if args.quick
                                               else OUT)
    steps, repeats = ((5, 10), 1) if args.quick else ((5, 10, 25), 3)
    torch.set_num_threads(1)
    ks = load_k_sampling()
    if ks is None:
        sys.exit(f"k-diffusion is not installed: {K_INSTALL}")
    problem = problems.get("gmm2")
    model, seeds = problem.denoiser, list(range(16))
    results, worst = [], 0.0
    grid_diff = max(float((grids.edm(n) - ks.get_sigmas_karras(n, 0.002, 80.0, 7.0).to(torch.float64)).abs().max())
                    for n in steps)
    print(f"grid: max |grids.edm(n) - get_sigmas_karras(n)| = {grid_diff:.2e}\n")
    print(f"{'ours / k-diffusion':46s} {'grid':>18s} {'max |diff|':>11s} {'time ratio':>10s}")
    for label, f_ours, f_theirs in pairs(ks):
        for n in steps:
            for zero in (True, False):
                sig = grids.edm(n, append_zero=zero)
                x = samplers.StackedRandom(seeds).randn(problem.shape, dtype=torch.float64) * sig[0]
                diff = float((f_ours(model, x, sig, seeds) - f_theirs(model, x, sig, seeds)).abs().max())
                ratio = (best_time(f_ours, model, x, sig, seeds, repeats=repeats)
                         / best_time(f_theirs, model, x, sig, seeds, repeats=repeats))
                worst = max(worst, diff)
                grid_name = f"edm({n}){' + 0' if zero else ''}"
                results.append({"pair": label, "grid": grid_name, "max_abs_diff": diff, "time_ratio": ratio})
                print(f"{label:46s} {grid_name:>18s} {diff:11.2e} {ratio:10.2f}")
    print(f"\nworst difference {worst:.2e} (float64, |x| up to {80 * 4:.0f} at the start)")
    out = out_dir / "compare_k_diffusion.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"problem": problem.description, "batch": len(seeds), "dtype": "float64", "threads": 1,
            "k_diffusion_version": version("k-diffusion"), "torch": torch.__version__,
            "machine": platform.platform(), "cpus": os.cpu_count(), "grid_max_abs_diff": grid_diff,
            "worst_max_abs_diff": worst, "quick": args.quick, "results": results}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    if worst > TOLERANCE:
        print(f"FAILED: a pair differs by {worst:.2e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
