"""Agreement of the low-NFE solvers with the peers' own code: the largest absolute difference of the final
samples on a small exact mixture of 3×8×8 images (4 latents, float64, ρ=7 grids of 2, 3, 5 and 10 steps, with
and without AFS).

    python benchmarks/lownfe_parity.py --diff-solvers /tmp/diff-sampler/diff-solvers-main
    python benchmarks/lownfe_parity.py --quick      # 2 and 5 steps only

diff-solvers' data-prediction UniPC clips D by dynamic thresholding; its thresholding function is replaced by
the identity here so that the update rules are compared (diffspace never thresholds). k-diffusion's
sample_dpm_adaptive builds its σ end points in float32; it is called through its DPMSolver class with float64
end points. Peers are optional (see benchmarks/lib/peers.py and lownfe_peers.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lib.peers import load_k_sampling
from lib.results import write_results

from diffspace import grids, samplers
from diffspace.samplers import problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--diff-solvers", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--outdir", type=Path, default=None,
                   help="where to write results (default benchmarks/results; --quick: a new temporary folder)")
    args = p.parse_args()
    D = problems.image_mixture((3, 8, 8), 4, 0)
    lat = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def net(x, t, class_labels=None, **kw):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        return D(x, t.expand(x.shape[0]) if t.numel() == 1 else t)

    pairs: dict[str, float] = {}

    def record(name, ours, theirs):
        pairs[name] = max(pairs.get(name, 0.0), float((ours - theirs).abs().max()))

    step_counts = (2, 5) if args.quick else (2, 3, 5, 10)
    ks = load_k_sampling()
    if ks is not None:
        for n in step_counts:
            sig = grids.edm(n + 1, append_zero=False)
            record("lms / sample_lms", samplers.get("lms")(D, lat * 80, sig),
                   ks.sample_lms(D, lat * 80, sig, disable=True))
        for order in (2, 3):
            t = lambda s: -torch.tensor(s, dtype=torch.float64).log()
            theirs, _ = ks.DPMSolver(D).dpm_solver_adaptive(lat * 80, t(80.0), t(0.002), order=order)
            ours = samplers.get("dpm_adaptive")(D, lat * 80, grids.edm(2, append_zero=False), order=order)
            record("dpm_adaptive / DPMSolver.dpm_solver_adaptive (float64 ends)", ours, theirs)
    if args.diff_solvers is not None:
        sys.path.insert(0, str(args.diff_solvers))
        import solver_utils
        import solvers as ds

        identity = lambda x0: x0  # noqa: E731
        solver_utils.dynamic_thresholding_fn = ds.dynamic_thresholding_fn = identity
        for n in step_counts:
            sig = grids.edm(n + 1, append_zero=False)
            x0 = lat * sig[0]
            kw = dict(t_steps=sig, num_steps=len(sig))
            for afs in (False, True):
                record("ipndm_v / ipndm_v", samplers.get("ipndm_v")(D, x0, sig, afs=afs),
                       ds.ipndm_v_sampler(net, lat, afs=afs, **kw))
                record("dpm_2m / dpm_pp eps order 2", samplers.get("dpm_2m")(D, x0, sig, afs=afs),
                       ds.dpm_pp_sampler(net, lat, afs=afs, max_order=2, predict_x0=False, **kw))
                record("dpm_3m compat / dpm_pp eps order 3", samplers.get("dpm_3m")(D, x0, sig, afs=afs, compat=True),
                       ds.dpm_pp_sampler(net, lat, afs=afs, max_order=3, predict_x0=False, **kw))
                for x0_pred in (True, False):
                    for variant in ("bh1", "bh2"):
                        for mo in (2, 3):
                            record(f"unipc / unipc (no thresholding), predict_x0={x0_pred}",
                                   samplers.get("unipc")(D, x0, sig, afs=afs, variant=variant, predict_x0=x0_pred,
                                                         max_order=mo),
                                   ds.unipc_sampler(net, lat, afs=afs, variant=variant, predict_x0=x0_pred,
                                                    max_order=mo, **kw))
                for mo in (2, 3, 4):
                    coeffs = solver_utils.get_deis_coeff_list(sig, mo, deis_mode="tab")
                    record("deis / deis tab (10 000-point weights)", samplers.get("deis")(D, x0, sig, afs=afs,
                                                                                         max_order=mo),
                           ds.deis_sampler(net, lat, afs=afs, max_order=mo, coeff_list=coeffs, **kw))
    lines = ["| ours / theirs | max abs difference |", "|---|---|"]
    lines += [f"| {k} | {v:.1e} |" for k, v in pairs.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not pairs:
        print("note: no peer available (install k-diffusion, give --diff-solvers PATH)")
    write_results("lownfe_parity", {"steps": list(step_counts), "max_abs_diff": pairs}, text, quick=args.quick,
                  outdir=args.outdir)

if __name__ == "__main__":
    main()
