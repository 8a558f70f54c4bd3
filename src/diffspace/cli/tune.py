"""`diffspace tune`: the best sampler and time grid for a model at each NFE budget, measured and saved.

    diffspace tune --problem gmm3x32x32 --nfe 4,5,6,8,10 --out schedule.json
    diffspace tune --network runs/fmnist --nfe 5,10 --out fmnist-schedule.json --warmup 64 --heldout 64
    diffspace generate --network runs/fmnist --schedule fmnist-schedule.json --nfe 5 --outdir out

Candidates (sampler × ρ-grid with ρ searched, log-uniform, GITS, AMED with fitted steps, with and without the
analytical first step) run on warm-up seeds against an adaptive Dormand–Prince teacher; the best few and the
default (dpmpp_2m, ρ=7) run on held-out seeds, and the one with the smallest held-out error becomes the plan.
The schedule file is written only when everything is done (atomically); an existing file needs --force.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--network", metavar="CKPT", help="checkpoint file or run folder")
    g.add_argument("--which", choices=("ema", "net"), default="ema", help="weights of a training state (default ema)")
    g.add_argument("--problem", default=None, help="a built-in exact problem instead of a network "
                                                   "(gmm2, gmm64, gmm3x32x32, gaussian)")
    g = p.add_argument_group("search")
    g.add_argument("--nfe", default="5,10", help="NFE budgets, e.g. 4,5,6,8,10 (default 5,10)")
    g.add_argument("--samplers", default=None,
                   help="comma-separated samplers, each NAME or NAME[key=value;...] for fixed options (default: "
                        "euler, heun, dpm_2, dpmpp_2m, dpmpp_3m, ipndm, ipndm_v, dpm_2m, dpm_3m, "
                        "dpm_3m[lower_order_final=false], unipc, unipc[predict_x0=false], amed, amed_ipndm, "
                        "amed_dpmpp_2m)")
    g.add_argument("--rhos", default="3,5,7,10", help="exponents of the ρ-grids searched (default 3,5,7,10)")
    g.add_argument("--warmup", type=int, default=32, help="warm-up seeds for the search (default 32)")
    g.add_argument("--heldout", type=int, default=32, help="held-out seeds for the choice (default 32)")
    g.add_argument("--teacher-steps", type=int, default=61, help="levels of the GITS teacher grid (default 61)")
    g.add_argument("--rtol", type=float, default=1e-6, help="tolerance of the Dormand–Prince teacher (default 1e-6)")
    g.add_argument("--top", type=int, default=3, help="candidates per budget re-measured on held-out seeds (default 3)")
    g.add_argument("--no-gits", action="store_true", help="leave out GITS grids")
    g.add_argument("--no-amed", action="store_true", help="leave out AMED samplers")
    g.add_argument("--no-afs", action="store_true", help="leave out the analytical first step")
    g.add_argument("--sigma-min", type=float, default=0.002, help="lowest noise level (default 0.002)")
    g.add_argument("--sigma-max", type=float, default=80.0, help="highest noise level (default 80)")
    g.add_argument("--seed", type=int, default=0, help="first warm-up seed; held-out seeds follow (default 0)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="FILE.json", help="schedule file to write")
    g.add_argument("--force", action="store_true", help="overwrite an existing schedule file")
    g.add_argument("--plot", default=None, metavar="FILE.png", help="error-vs-NFE plot (default: next to --out)")
    g.add_argument("--no-plot", action="store_true", help="no plot")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _ints(text: str, what: str) -> list[int]:
    from diffspace.errors import ConfigError

    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be comma-separated integers, e.g. 4,5,6,8,10") from None


def load_model(args):
    """(model, shape, digest, source, sigma range) of --network or --problem."""
    from diffspace.errors import ConfigError
    from diffspace.tune.schedule import model_digest

    if bool(args.network) == bool(args.problem):
        raise ConfigError("give either --network CKPT or --problem NAME")
    lo, hi = args.sigma_min, args.sigma_max
    if args.problem:
        from diffspace.samplers import problems

        P = problems.get(args.problem, seed=0)
        return P.denoiser, P.shape, model_digest(P.denoiser), f"problem {args.problem}", lo, hi
    from diffspace import generate as G

    net, info = G.load(args.network, which=args.which)
    if int(getattr(net, "label_dim", 0) or 0):
        raise ConfigError(f"{args.network} is class-conditional: tune supports unconditional networks only")
    shape = G.image_shape(net, info)
    lo = max(lo, float(getattr(net, "sigma_min", 0.0)))
    hi = min(hi, float(getattr(net, "sigma_max", float("inf"))))
    return net.eval(), shape, model_digest(net), str(args.network), lo, hi


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from diffspace.errors import ConfigError
    from diffspace.tune import tuning as A
    from diffspace.tune.schedule import save_schedule

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: choose another --out or pass --force to overwrite it")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file name")
    if not out.parent.exists():
        raise ConfigError(f"folder {out.parent} does not exist: create it first")
    budgets = _ints(args.nfe, "--nfe")
    try:
        rhos = [float(v) for v in args.rhos.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--rhos {args.rhos!r} must be comma-separated numbers") from None
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    model, shape, digest, source, lo, hi = load_model(args)
    names = A.split_specs(args.samplers) if args.samplers else None
    with torch.no_grad():
        result = A.search(model, budgets, shape=shape, sigma_min=lo, sigma_max=hi, seed=args.seed, samplers=names,
                          rhos=rhos, warmup=args.warmup, heldout=args.heldout, teacher_steps=args.teacher_steps,
                          amed=not args.no_amed, afs=not args.no_afs, gits=not args.no_gits, rtol=args.rtol,
                          top=args.top, progress=not args.no_progress, log=print)
    print(A.format_table(result))
    save_schedule(out, result, digest=digest, source=source, force=args.force)
    written = [str(out)]
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else out.with_suffix(".png")
        A.plot(result, plot_path)
        written.append(str(plot_path))
    print(f"wrote {', '.join(written)}")
    return 0
