"""Where the data- and noise-prediction forms of the second-order multistep DPM-Solver differ on gmm3x32x32.

At every level of the ρ=7 grid (σ 80 → 0.002, no final 0) one step of each form is taken from the exact state
and the exact previous model output, and compared with the exact solution (RMS per coordinate, mean over the
batch). Also printed: how much D and σ·ε change over the previous step, and how far their linear extrapolation
in λ = −log σ misses the next value (σ'·ε for the noise form, the scale at which it enters the state).

    python benchmarks/lownfe_why.py            # 4 trajectories, 9 and 5 steps
    python benchmarks/lownfe_why.py --quick    # 2 trajectories, 5 steps (CI)
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import torch
from lib.results import write_results

from diffspace import grids
from diffspace.samplers import problems
from diffspace.samplers.reference import solve


def analyse(problem, x0, steps: int, tol: float) -> list[dict]:
    D = problem.denoiser
    sig = grids.edm(steps + 1, 0.002, 80.0, 7.0, append_zero=False)
    xs = [x0]
    for i in range(steps):  # the exact trajectory at the grid levels
        xs.append(solve(D, xs[-1], float(sig[i]), float(sig[i + 1]), rtol=tol, atol=tol))
    ones = torch.ones(x0.shape[0], dtype=torch.float64)
    den = [D(xs[i], sig[i] * ones) for i in range(steps + 1)]
    eps = [(xs[i] - den[i]) / sig[i] for i in range(steps + 1)]

    def rms(a):
        return float(a.flatten(1).norm(dim=1).mean()) / math.sqrt(problem.dim)

    rows = []
    for i in range(1, steps):
        s, s1, sp = sig[i], sig[i + 1], sig[i - 1]
        r = (sp / s).log() / (s / s1).log()  # h_{i−1}/h_i
        x_data = (s1 / s) * xs[i] + (1 - s1 / s) * (den[i] + (den[i] - den[i - 1]) / (2 * r))
        x_noise = xs[i] + (s1 - s) * (eps[i] + (eps[i] - eps[i - 1]) / (2 * r))
        t = 1 / r  # λ-distance of the next level in units of the previous step
        miss_d = den[i] + t * (den[i] - den[i - 1]) - den[i + 1]
        miss_e = s1 * (eps[i] + t * (eps[i] - eps[i - 1]) - eps[i + 1])
        rows.append({"sigma": float(s), "sigma_next": float(s1), "local_error_data": rms(x_data - xs[i + 1]),
                     "local_error_noise": rms(x_noise - xs[i + 1]), "change_D": rms(den[i] - den[i - 1]),
                     "change_sigma_eps": float(s) * rms(eps[i] - eps[i - 1]), "miss_D": rms(miss_d),
                     "miss_sigma_eps": rms(miss_e)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--outdir", type=Path, default=None,
                   help="where to write results (default benchmarks/results; --quick: a new temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(2)
    problem = problems.get("gmm3x32x32")
    batch, tol, step_counts = (2, 1e-8, [5]) if args.quick else (4, 1e-10, [9, 5])
    x0 = torch.randn(batch, *problem.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    out = {"problem": problem.description, "batch": batch, "reference_tol": tol, "machine": platform.platform(),
           "command": "python benchmarks/lownfe_why.py " + " ".join(sys.argv[1:]), "runs": {}}
    lines = []
    for steps in step_counts:
        rows = analyse(problem, x0, steps, tol)
        out["runs"][steps] = rows
        lines += [f"{steps} steps", "", "| step σ → σ' | local error, data form | local error, noise form | "
                  "change of D | σ × change of ε | linear miss of D | linear miss of σ'ε |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['sigma']:.4g} → {r['sigma_next']:.4g} | {r['local_error_data']:.2e} | "
                  f"{r['local_error_noise']:.2e} | {r['change_D']:.2e} | {r['change_sigma_eps']:.2e} | "
                  f"{r['miss_D']:.2e} | {r['miss_sigma_eps']:.2e} |" for r in rows]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    write_results("lownfe_why", out, text, quick=args.quick, outdir=args.outdir)

if __name__ == "__main__":
    main()
