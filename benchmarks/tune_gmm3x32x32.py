"""Low-NFE tuning on the exact gmm3x32x32 mixture: ρ=7 grid vs GITS vs AMED vs `diffspace tune`'s plan.

Endpoint error (RMS per coordinate, mean over `--eval` seeds (default 64) that neither the tuner nor GITS/AMED saw)
against an adaptive Dormand–Prince solution (rtol 1e-8), σ 80 → 0.002, no final step to 0. Writes
benchmarks/results/tune_gmm3x32x32.{json,md}. `--quick`: NFE 5 only, fewer seeds (a smoke run).

    OMP_NUM_THREADS=1 python benchmarks/tune_gmm3x32x32.py [--quick] [--seeds 32] [--eval 64] [--schedule FILE]

`--schedule FILE` evaluates the plans of a schedule file written by
`diffspace tune --problem gmm3x32x32 --nfe 4,5,6,8,10 --out FILE` instead of searching here.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from diffspace import samplers, tune
from diffspace.design import grids
from diffspace.samplers import problems
from diffspace.samplers.reference import solve
from diffspace.tune.gits import _latents, steps_for_nfe, teacher_costs
from diffspace.tune.tuning import format_table

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=32, help="warm-up and held-out seeds of the tuner (default 32)")
    ap.add_argument("--eval", type=int, default=64, help="evaluation seeds 10 000, 10 001, ... (default 64)")
    ap.add_argument("--schedule", type=Path, default=None, help="plans from this schedule file (no search here)")
    args = ap.parse_args()
    budgets = [5] if args.quick else [4, 5, 6, 8, 10]
    warmup, heldout, n_eval = (8, 8, 8) if args.quick else (args.seeds, args.seeds, args.eval)
    P = problems.get("gmm3x32x32")
    D = P.denoiser
    t0 = time.time()
    if args.schedule is not None:
        from diffspace.tune.schedule import load_schedule

        plans = {n: load_schedule(args.schedule, nfe=n, model=D) for n in budgets}
        table_text = f"plans from {args.schedule.name}"
    else:
        result = tune.search(D, budgets, shape=P.shape, warmup=warmup, heldout=heldout, progress=False, log=print)
        plans, table_text = result.plans, format_table(result)
    t_tune = time.time() - t0
    print(table_text)
    lat = _latents(P.shape, range(10_000, 10_000 + n_eval))
    ref = solve(D, lat * 80.0, 80.0, 0.002, rtol=1e-8, atol=1e-8)
    table = teacher_costs(D, shape=P.shape, warmup=64 if not args.quick else 8)

    def err(name, sig, **opts):
        out = samplers.get(name)(D, lat * sig[0], sig, **opts)
        return float(((out - ref).flatten(1).norm(dim=1) / math.sqrt(P.dim)).mean())

    rows = {}
    for n in budgets:
        row = {}
        for name, opts in (("euler", {}), ("ipndm", {}), ("dpmpp_2m", {}), ("ipndm_v", {}),
                           ("dpm_3m", {"lower_order_final": False})):
            steps = steps_for_nfe(name, n)
            tag = name + ("[lower_order_final=false]" if opts else "")
            row[f"{tag} rho7"] = err(name, grids.edm(steps + 1, 0.002, 80.0, append_zero=False), **opts)
            row[f"{tag} GITS"] = err(name, table.grid(name, steps), **opts)
        steps = steps_for_nfe("amed", n)
        if steps >= 1:
            sig = grids.edm(steps + 1, 0.002, 80.0, append_zero=False)
            row["dpm_2 rho7"] = err("dpm_2", sig)
            for name in ("amed", "amed_ipndm"):
                fit = tune.fit_amed(D, sig, shape=P.shape, sampler=name, warmup=warmup)
                row[f"{name} rho7 (fitted)"] = err(name, sig, r=fit["r"], c=fit["c"])
        plan = plans[n]
        row["tuned"] = err(plan.sampler, plan.sigmas, **plan.options)
        row["tuned plan"] = plan.label
        rows[n] = row
    names = [k for k in rows[budgets[0]] if k != "tuned plan"]
    lines = ["| method | " + " | ".join(f"NFE {n}" for n in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for k in names:
        lines.append(f"| {k} | " + " | ".join(f"{rows[n][k]:.2e}" if k in rows[n] else "-" for n in budgets) + " |")
    lines.append("| tuned plan | " + " | ".join(rows[n]["tuned plan"] for n in budgets) + " |")
    md = "\n".join(lines)
    print(md)
    out = Path(tempfile.mkdtemp(prefix="diffspace-bench-")) if args.quick else OUT  # quick: never the results
    out.mkdir(exist_ok=True)
    stem = "tune_gmm3x32x32" + ("_quick" if args.quick else "" if args.seeds == 32 else f"_seeds{args.seeds}")
    meta = dict(problem="gmm3x32x32", eval_seeds=n_eval, warmup=warmup, heldout=heldout, tune_seconds=t_tune,
                machine=platform.platform(), threads=torch.get_num_threads())
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                  "plans": {n: p.to_dict() for n, p in plans.items()}},
                                                 indent=1) + "\n")
    (out / f"{stem}.md").write_text(f"# {__doc__.splitlines()[0]}\n\n{md}\n\ntuner table:\n\n```\n"
                                    f"{table_text}\n```\n")


if __name__ == "__main__":
    main()
