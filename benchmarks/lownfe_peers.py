"""Low-NFE error on the exact `gmm3x32x32` problem: every deterministic diffspace sampler next to k-diffusion's
samplers and diff-sampler's diff-solvers (their own code), same ρ=7 grid (σ 80 → 0.002, no final 0), same
latents, float64.

Error: RMS per coordinate of the endpoint against a high-accuracy ODE solution (adaptive Dormand–Prince,
rtol = atol = 1e-10), averaged over the batch; the best rows are also given by the batch median, with the number
of samples far from the exact endpoint (error > 0.1), which can dominate the mean. Each sampler takes the most
steps whose NFE fits the budget (`*` in the table: it cannot spend exactly that many).
Rows are "library sampler [options]".

    python benchmarks/lownfe_peers.py --diff-solvers /tmp/diff-sampler/diff-solvers-main     # full run
    python benchmarks/lownfe_peers.py --quick                                                 # CI: small batch

Peers are optional: k-diffusion is loaded as in benchmarks/lib/peers.py; diff-solvers is imported from the folder
given with --diff-solvers (the `diff-solvers-main` folder of zju-pi/diff-sampler, which holds solvers.py and
solver_utils.py; nothing of it is copied here). A missing peer is skipped with a note, and so are the GITS and
tuned rows when `diffspace.tune` is not available.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from lib.peers import load_k_sampling, version
from lib.results import write_results

from diffspace import grids, samplers
from diffspace.errors import ConfigError
from diffspace.samplers import problems
from diffspace.samplers.reference import solve

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
# A few samples can end far from the exact endpoint (error above FAR, RMS per coordinate, where a typical error at
# NFE 10 is 0.003) and dominate the batch mean: the median and the count of such samples are kept too.
FAR = 0.1
# Deterministic diffspace samplers and the option sets measured (duplicates left out: ddim = euler, edm = heun
# with S_churn = 0, lms = ipndm).
OURS = [
    ("euler", {}), ("heun", {}), ("dpm_2", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_3m", {"compat": True}),
    ("ipndm", {}), ("ipndm_v", {}), ("ipndm_v", {"max_order": 3}),
    ("dpm_2m", {}), ("dpm_3m", {}), ("dpm_3m", {"compat": True}), ("dpm_3m", {"lower_order_final": False}),
    ("unipc", {}), ("unipc", {"variant": "bh1"}), ("unipc", {"predict_x0": False}), ("deis", {}),
    ("accel_ode", {}),
]
# Li et al.'s theory forms (ddim_type, accel_ode2) are left out: they step in σ² and are far behind at low NFE
# (docs/samplers.md); `diffspace converge --nfe` measures them.


def rho_grid(steps: int) -> torch.Tensor:
    return grids.edm(steps + 1, SIGMA_MIN, SIGMA_MAX, RHO, append_zero=False)


def most_steps(nfe_of, budget: int) -> int | None:
    """Largest step count whose NFE (nfe_of(steps)) fits the budget."""
    best = None
    for steps in range(1, budget + 2):
        if nfe_of(steps) <= budget:
            best = steps
    return best


class Counted:
    """The denoiser with a call counter, callable both k-diffusion's way (x, sigma[B]) and diff-solvers'
    way (x, t, class_labels=None) with a scalar or one-element t."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, *args, **kwargs):
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        return self.model(x, sigma)


def ours_rows(D, x0, budgets, ref, err):
    rows = []
    for name, opts in OURS:
        entry = samplers.get(name)
        for afs in ((False, True) if "afs" in entry.options else (False,)):
            o = {**opts, **({"afs": True} if afs else {})}
            row = {"library": "diffspace", "sampler": name, "options": o, "cells": {}}
            for b in budgets:
                steps = most_steps(lambda n, o=o, e=entry: e.nfe(rho_grid(n), **o), b)
                if steps is None:
                    continue
                model, stats = Counted(D), {}
                out = entry(model, x0, rho_grid(steps), stats=stats, **o)
                assert model.calls == stats["nfe"] == entry.nfe(rho_grid(steps), **o)
                row["cells"][b] = {"steps": steps, "nfe": model.calls, **err(out, ref)}
            rows.append(row)
            print(f"  {label(row)}", file=sys.stderr, flush=True)
    return rows


def k_rows(ks, D, x0, budgets, ref, err):
    table = [  # (label, function, evaluations per step on a grid ending at σ_min > 0, extra options)
        ("sample_euler", ks.sample_euler, 1, {}), ("sample_heun", ks.sample_heun, 2, {}),
        ("sample_dpm_2", ks.sample_dpm_2, 2, {}), ("sample_lms", ks.sample_lms, 1, {}),
        ("sample_dpmpp_2m", ks.sample_dpmpp_2m, 1, {}),
        ("sample_dpmpp_2s_ancestral", ks.sample_dpmpp_2s_ancestral, 2, {"eta": 0.0}),
        ("sample_dpmpp_3m_sde", ks.sample_dpmpp_3m_sde, 1, {"eta": 0.0}),
    ]
    rows = []
    for label, fn, per_step, opts in table:
        row = {"library": "k-diffusion", "sampler": label, "options": opts, "cells": {}}
        for b in budgets:
            steps = b // per_step
            if steps < 1:
                continue
            model = Counted(D)
            out = fn(model, x0.clone(), rho_grid(steps), disable=True, **opts)
            row["cells"][b] = {"steps": steps, "nfe": model.calls, **err(out, ref)}
        rows.append(row)
    # DPM-Solver-fast picks its own λ-uniform grid for a given NFE.
    row = {"library": "k-diffusion", "sampler": "sample_dpm_fast", "options": {"grid": "own (uniform in log sigma)"},
           "cells": {}}
    for b in budgets:
        model = Counted(D)
        out = ks.sample_dpm_fast(model, x0.clone(), SIGMA_MIN, SIGMA_MAX, b, disable=True)
        row["cells"][b] = {"steps": None, "nfe": model.calls, **err(out, ref)}
    rows.append(row)
    return rows


def diff_solvers_rows(path: Path, D, x0, budgets, ref, err):
    sys.path.insert(0, str(path))
    import solver_utils
    import solvers

    table = [  # (label, function, evaluations per step, options)
        ("euler", solvers.euler_sampler, 1, {}), ("heun", solvers.heun_sampler, 2, {}),
        ("dpm_2", solvers.dpm_2_sampler, 2, {}), ("ipndm", solvers.ipndm_sampler, 1, {"max_order": 4}),
        ("ipndm_v", solvers.ipndm_v_sampler, 1, {"max_order": 4}),
        ("deis tab", solvers.deis_sampler, 1, {"max_order": 4}),
        ("dpmpp x0", solvers.dpm_pp_sampler, 1, {"max_order": 3, "predict_x0": True}),
        ("dpmpp eps", solvers.dpm_pp_sampler, 1, {"max_order": 3, "predict_x0": False}),
        ("dpmpp eps o2", solvers.dpm_pp_sampler, 1, {"max_order": 2, "predict_x0": False}),
        ("unipc bh2 x0", solvers.unipc_sampler, 1, {"max_order": 3, "variant": "bh2"}),
        ("unipc bh1 x0", solvers.unipc_sampler, 1, {"max_order": 3, "variant": "bh1"}),
        ("unipc bh2 eps", solvers.unipc_sampler, 1, {"max_order": 3, "variant": "bh2", "predict_x0": False}),
    ]
    latents = x0 / SIGMA_MAX
    rows = []
    for label, fn, per_step, opts in table:
        for afs in (False, True):
            row = {"library": "diff-solvers", "sampler": label, "options": {**opts, **({"afs": True} if afs else {})},
                   "cells": {}}
            for b in budgets:
                def nfe_of(n, afs=afs, per_step=per_step, label=label, opts=opts):
                    extra = int(label.startswith("unipc") and n < opts["max_order"])
                    return per_step * n - int(afs) + extra
                steps = most_steps(nfe_of, b)
                if steps is None:
                    continue
                sig = rho_grid(steps)
                kw = dict(opts, afs=afs, t_steps=sig, num_steps=len(sig))
                if label.startswith("deis"):
                    kw["coeff_list"] = solver_utils.get_deis_coeff_list(sig, opts["max_order"], deis_mode="tab")
                model = Counted(D)
                try:
                    out = fn(model, latents.clone(), **kw)
                except Exception as e:  # their code asserts on some short grids
                    row["cells"][b] = {"steps": steps, "nfe": None, "error": None, "failed": f"{type(e).__name__}: {e}"}
                    continue
                row["cells"][b] = {"steps": steps, "nfe": model.calls, **err(out, ref)}
            rows.append(row)
    return rows


def adaptive_rows(ks, D, x0, ref, err, rtols):
    rows = []
    for rtol in rtols:
        stats = {}
        model = Counted(D)
        out = samplers.get("dpm_adaptive")(model, x0, rho_grid(1), rtol=rtol, stats=stats)
        rows.append({"library": "diffspace", "sampler": "dpm_adaptive", "rtol": rtol, "nfe": stats["nfe"],
                     **err(out, ref)})
        if ks is not None:
            model = Counted(D)
            out = ks.sample_dpm_adaptive(model, x0.clone(), SIGMA_MIN, SIGMA_MAX, rtol=rtol, disable=True)
            rows.append({"library": "k-diffusion", "sampler": "sample_dpm_adaptive", "rtol": rtol,
                         "nfe": model.calls, **err(out, ref)})
    return rows


GITS_SAMPLERS = [("ipndm", {}), ("ipndm_v", {}), ("dpm_3m", {"lower_order_final": False}), ("dpm_2m", {}),
                 ("dpmpp_2m", {}), ("euler", {})]


def tune_rows(D, x0, budgets, ref, err, shape, notes, quick=False, schedule=None):
    try:
        from diffspace import tune
        from diffspace.tune.gits import steps_for_nfe, teacher_costs
    except ImportError:
        notes.append("GITS and tuned rows skipped: diffspace.tune is not available in this build")
        return []
    rows = []
    table = teacher_costs(D, shape=shape, warmup=16 if quick else 256)  # one cost matrix for every sampler/budget
    for sampler, fixed in GITS_SAMPLERS:
        for afs in (False, True) if "afs" in samplers.get(sampler).options else (False,):
            o = {**fixed, "afs": True} if afs else dict(fixed)
            row = {"library": "diffspace", "sampler": f"{sampler} + GITS", "options": o, "cells": {}}
            for b in budgets:
                try:
                    steps = steps_for_nfe(sampler, b, **o) - (1 if afs else 0)
                    sig = table.grid(sampler, steps, afs=afs, model=D)
                    model, stats = Counted(D), {}
                    out = samplers.get(sampler)(model, x0 * float(sig[0]) / SIGMA_MAX, sig, stats=stats, **o)
                    row["cells"][b] = {"steps": len(sig) - 1, "nfe": model.calls, **err(out, ref),
                                       "sigmas": [float(s) for s in sig]}
                except Exception as e:  # report, do not hide, a failure of the other module
                    row["cells"][b] = {"error": None, "failed": f"{type(e).__name__}: {e}"}
            rows.append(row)
    if quick and schedule is None:
        notes.append("tuned (autotune) rows: full mode only (the search takes minutes), or from --schedule")
        return rows
    try:
        if schedule is not None:  # plans of `diffspace tune --problem gmm3x32x32` (same problem, same digest)
            from diffspace.tune.schedule import load_schedule

            plans = []
            for b in budgets:
                try:
                    plans.append(load_schedule(schedule, nfe=b, model=D))
                except ConfigError as e:  # e.g. no plan for this budget in the file
                    notes.append(f"tuned row, NFE {b}: {e}")
            source = f"tuned ({schedule.name})"
        else:
            plans = tune.autotune(D, list(budgets), shape=shape, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
            plans = list(plans.values()) if isinstance(plans, dict) else [plans]
            source = "tuned (autotune)"
        row = {"library": "diffspace", "sampler": source, "options": {}, "cells": {}}
        for plan in plans:
            model = Counted(D)
            out = plan(model, x0)
            row["cells"][int(plan.nfe)] = {"steps": len(plan.sigmas) - 1, "nfe": model.calls, **err(out, ref),
                                           "plan": {"label": plan.label, "sampler": plan.sampler,
                                                    "options": {k: v for k, v in plan.options.items()
                                                                if k not in ("r", "c")}}}
        rows.append(row)
    except Exception as e:
        notes.append(f"tuned rows failed: {type(e).__name__}: {e}")
    return rows


def label(row) -> str:
    opts = " ".join(f"{k}={v}" for k, v in row["options"].items())
    return f"{row['library']} {row['sampler']}" + (f" [{opts}]" if opts else "")


def markdown(info: dict) -> str:
    budgets = info["nfe"]
    head = "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
    lines = [head, "|---|" + "---|" * len(budgets)]
    for row in sorted(info["rows"], key=lambda r: _key(r, budgets)):
        cells = []
        for b in budgets:
            c = row["cells"].get(str(b), row["cells"].get(b))
            if not c or c.get("error") is None:
                cells.append("–" if not c else "fails")
            else:
                cells.append(f"{c['error']:.2e}" + ("*" if c["nfe"] != b else ""))
        lines.append(f"| {label(row)} | " + " | ".join(cells) + " |")
    far = info["far"]
    for key, by, title in (("best", "error", "Best per library by the batch mean (mean; median, samples with "
                                                   f"error > {far:g}; sampler):"),
                           ("best_median", "median", "Best per library by the batch median (median; mean, samples "
                                                     f"with error > {far:g}; sampler):")):
        lines += ["", title, "", "| NFE | diffspace | k-diffusion | diff-solvers | best peer / best diffspace |",
                  "|---|---|---|---|---|"]
        other = "median" if by == "error" else "error"
        for b, best in info[key].items():
            def fmt(lib, best=best, by=by, other=other):
                e = best.get(lib)
                return f"{e[by]:.2e}; {e[other]:.2e}, {e['far']} ({e['label']})" if e else "–"
            ratio = best.get("ratio")
            lines.append(f"| {b} | {fmt('diffspace')} | {fmt('k-diffusion')} | {fmt('diff-solvers')} | "
                         f"{'–' if ratio is None else f'{ratio:.2f}'} |")
    if info.get("adaptive"):
        lines += ["", "Adaptive step size (NFE chosen by the controller):", "", "| sampler | rtol | NFE | error |",
                  "|---|---|---|---|"]
        lines += [f"| {r['library']} {r['sampler']} | {r['rtol']} | {r['nfe']} | {r['error']:.2e} |"
                  for r in info["adaptive"]]
    return "\n".join(lines) + "\n"


def _key(row, budgets):
    c = row["cells"].get(str(budgets[-1]), row["cells"].get(budgets[-1])) or {}
    return c.get("error") if c.get("error") is not None else math.inf


def best_per_library(rows, budgets, by: str = "error") -> dict:
    """Per budget, the best row of each library by the batch mean (`by="error"`) or median, and the ratio best
    peer / best diffspace of that statistic."""
    out = {}
    for b in budgets:
        best = {}
        for row in rows:
            c = row["cells"].get(b)
            if not c or c.get("error") is None or c["nfe"] > b:
                continue
            lib = row["library"]
            if lib not in best or c[by] < best[lib][by]:
                best[lib] = {k: c[k] for k in ("error", "median", "far")} | {"label": label(row)}
        peers = [best[k][by] for k in ("k-diffusion", "diff-solvers") if k in best]
        if peers and "diffspace" in best:
            best["ratio"] = min(peers) / best["diffspace"][by]
        out[b] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 4, NFE 5 and 10 only, looser reference (CI)")
    p.add_argument("--diff-solvers", type=Path, default=None,
                   help="folder with diff-sampler's solvers.py and solver_utils.py (diff-solvers-main)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rtol", type=float, default=1e-10, help="tolerance of the reference solution")
    p.add_argument("--nfe", default="4,5,6,8,10,20")
    p.add_argument("--schedule", type=Path, default=None,
                   help="take the tuned rows from this schedule file of `diffspace tune --problem gmm3x32x32` "
                        "instead of running the search here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--outdir", type=Path, default=None,
                   help="where to write results (default benchmarks/results; --quick: a new temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [5, 10] if args.quick else [int(v) for v in args.nfe.split(",")]
    batch = 4 if args.quick else args.batch
    tol = 1e-8 if args.quick else args.rtol
    problem = problems.get("gmm3x32x32")
    D = problem.denoiser
    x0 = torch.randn(batch, *problem.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = x0 * SIGMA_MAX
    notes = []
    t0 = time.perf_counter()
    ref_stats = {}
    ref = solve(D, x0, SIGMA_MAX, SIGMA_MIN, rtol=tol, atol=tol, stats=ref_stats)
    print(f"reference: Dormand–Prince rtol=atol={tol:g}, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def err(out, ref):
        per_sample = (out.to(torch.float64) - ref).flatten(1).norm(dim=1) / math.sqrt(problem.dim)
        return {"error": float(per_sample.mean()), "median": float(per_sample.median()),
                "far": int((per_sample > FAR).sum())}

    rows = ours_rows(D, x0, budgets, ref, err)
    ks = load_k_sampling()
    if ks is None:
        notes.append("k-diffusion rows skipped: k-diffusion is not installed (see benchmarks/lib/peers.py)")
    else:
        rows += k_rows(ks, D, x0, budgets, ref, err)
    if args.diff_solvers is None:
        notes.append("diff-solvers rows skipped: no --diff-solvers PATH given")
    elif not (args.diff_solvers / "solvers.py").is_file():
        sys.exit(f"--diff-solvers {args.diff_solvers}: no solvers.py there; give diff-sampler's diff-solvers-main")
    else:
        rows += diff_solvers_rows(args.diff_solvers, D, x0, budgets, ref, err)
    rows += tune_rows(D, x0, budgets, ref, err, problem.shape, notes, quick=args.quick, schedule=args.schedule)
    adaptive = adaptive_rows(ks, D, x0, ref, err, [0.5, 0.2, 0.05] if args.quick else [0.5, 0.2, 0.1, 0.05, 0.02])
    info = {
        "problem": problem.description, "grid": f"rho={RHO:g}, sigma {SIGMA_MAX:g} -> {SIGMA_MIN:g}, no final 0",
        "batch": batch, "dtype": "float64", "reference": f"Dormand-Prince 5(4), rtol=atol={tol:g}",
        "error": "mean over the batch of the RMS per coordinate of (x - x_ref)", "nfe": budgets,
        "command": "python benchmarks/lownfe_peers.py " + " ".join(sys.argv[1:]),
        "machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
        "k_diffusion_version": version("k-diffusion") if ks is not None else None,
        "diff_solvers": str(args.diff_solvers) if args.diff_solvers else None, "notes": notes,
        "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "best": best_per_library(rows, budgets),
        "best_median": best_per_library(rows, budgets, by="median"), "far": FAR,
        "adaptive": adaptive,
    }
    text = markdown(info)
    print(text)
    for n in notes:
        print("note:", n)
    for path in write_results("lownfe_peers", info, text, quick=args.quick, outdir=args.outdir):
        print(f"wrote {path}", file=sys.stderr)

if __name__ == "__main__":
    main()
