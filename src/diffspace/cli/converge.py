"""`diffspace converge`: measure the convergence order of samplers on a problem with a known answer.

    diffspace converge                                    # gmm2, every sampler, 8/16/32/64 steps
    diffspace converge --problem gaussian --samplers ddpm_type,accel_sde --grid li --steps 19,49,99
    diffspace converge --problem gmm3x32x32 --nfe 5,6,8,10,20 --outdir benchmarks/results/converge_3x32x32

Prints a table with fitted slopes and writes converge.csv, converge.json, converge.md and converge.png
(log-log error against NFE) to --outdir. With --nfe, each sampler takes the most steps whose NFE fits the
budget (marked * in the table when it cannot spend exactly that many).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROBLEMS_HELP = "gmm2, gmm64, gmm3x32x32, gaussian, or module:attr (a denoiser, or a factory of one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problem", default="gmm2", help=f"problem: {PROBLEMS_HELP} (default gmm2)")
    parser.add_argument("--samplers", default="all", help="comma-separated sampler names (default: all registered)")
    points = parser.add_mutually_exclusive_group()
    points.add_argument("--steps", default=None, help="comma-separated step counts (default 8,16,32,64)")
    points.add_argument("--nfe", default=None, help="comma-separated NFE budgets instead of step counts")
    parser.add_argument("--grid", default="edm", help="edm, exponential, vp, ve or li (default edm)")
    parser.add_argument("--rho", type=float, default=7.0, help="EDM grid exponent (default 7)")
    parser.add_argument("--sigma-min", type=float, default=None, help="last noise level (default 0.002)")
    parser.add_argument("--sigma-max", type=float, default=None, help="first noise level (default 80)")
    parser.add_argument("--to-zero", action="store_true",
                        help="end grids at 0 (forms A, C, D, F finish with denoise_to_zero instead)")
    parser.add_argument("--afs", action="store_true", help="analytical first step where a sampler offers it")
    parser.add_argument("--option", action="append", default=[], metavar="[SAMPLER.]KEY=VALUE",
                        help="sampler option, e.g. eta=0.5 or edm.S_churn=40 (repeatable)")
    parser.add_argument("--batch", type=int, default=64, help="trajectories for pathwise errors (default 64)")
    parser.add_argument("--samples", type=int, default=16384,
                        help="samples for distributional errors on mixtures (default 16384)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem and of the latents (default 0)")
    parser.add_argument("--shape", default=None, help="sample shape of a module:attr denoiser, e.g. 3,32,32")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the lab's tensors are small, so threads mostly add "
                             "overhead; raise it for gmm3x32x32)")
    parser.add_argument("--outdir", type=Path, default=Path("converge-results"), help="output folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--quiet", action="store_true", help="no per-run progress lines")


def _ints(text: str, what: str) -> list[int]:
    from diffspace.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{what} {text!r} must be comma-separated positive integers, e.g. 8,16,32")
    return values


def _options(items: list[str], afs: bool, names: list[str]) -> dict:
    """--option [SAMPLER.]KEY=VALUE items, each typed and checked with the first selected sampler that takes KEY."""
    from diffspace.errors import ConfigError
    from diffspace.samplers import options, registry

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option {item!r} must look like KEY=VALUE or SAMPLER.KEY=VALUE")
        name, _, opt = key.rpartition(".")
        takers = [registry.get(n) for n in ([name] if name else names)]
        entry = next((e for e in takers if opt in e.options), None)
        if entry is None:
            raise ConfigError(f"--option {key}: no selected sampler takes option {opt!r}")
        out[key] = options.parse(entry.name, entry.fn, [f"{opt}={value}"], entry.options)[opt]
    if afs:
        out["afs"] = True
    return out


def _command(args) -> str:
    parts = ["diffspace converge", f"--problem {args.problem}", f"--samplers {args.samplers}",
             f"--nfe {args.nfe}" if args.nfe else f"--steps {args.steps or '8,16,32,64'}", f"--grid {args.grid}"]
    parts += [f"--rho {args.rho:g}"] if args.grid == "edm" and args.rho != 7.0 else []
    parts += [f"--sigma-min {args.sigma_min:g}"] if args.sigma_min is not None else []
    parts += [f"--sigma-max {args.sigma_max:g}"] if args.sigma_max is not None else []
    parts += ["--to-zero"] if args.to_zero else []
    parts += ["--afs"] if args.afs else []
    parts += [f"--option {o}" for o in args.option]
    parts += [f"--batch {args.batch}", f"--samples {args.samples}", f"--seed {args.seed}"]
    parts += [f"--shape {args.shape}"] if args.shape else []
    return " ".join(parts)


def _span(values) -> str:
    values = sorted(set(values))
    if not values:
        return "-"
    return f"{values[0]:.4g}" if len(values) == 1 else f"{values[0]:.4g}..{values[-1]:.4g}"


def _write(path: Path, writer) -> None:
    """Write through a temporary file in the same folder, then rename (no half-written outputs)."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r.kind for r in result.rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    labels = {"pathwise": "pathwise error (RMS per coordinate)", "hellinger": "Hellinger distance (exact)",
              "sw2": "sliced W2 to exact samples"}
    for ax, kind in zip(axes[0], kinds):
        for name in result.samplers():
            rows = [r for r in result.series(name) if r.kind == kind]
            if rows:
                ax.loglog([r.nfe for r in rows], [r.error for r in rows], "o-", ms=3,
                          label=f"{name} ({result.slope(name):.2f})")
        if kind == "sw2" and result.floor:
            ax.axhline(result.floor, color="gray", ls=":", label="noise floor")
        ax.set_xlabel("NFE")
        ax.set_ylabel(labels[kind])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, title=f"slope vs {result.axis}", title_fontsize=7)
    fig.suptitle(f"{result.problem}, grid {result.grid}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run(args) -> int:
    import csv
    import dataclasses
    import json
    import os
    import platform
    import sys
    import time

    import torch

    from diffspace.errors import ConfigError
    from diffspace.samplers import converge, problems, registry

    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    torch.set_num_threads(args.threads)
    shape = _ints(args.shape, "--shape") if args.shape else None
    problem = problems.get(args.problem, seed=args.seed, shape=shape)
    changes = {k: v for k, v in (("sigma_min", args.sigma_min), ("sigma_max", args.sigma_max)) if v is not None}
    problem = dataclasses.replace(problem, **changes)
    names = registry.names() if args.samplers == "all" else [n.strip() for n in args.samplers.split(",") if n.strip()]
    for name in names:
        registry.get(name)  # unknown names list the known ones
    if args.batch < 1 or args.samples < 2:
        raise ConfigError(f"--batch {args.batch} must be >= 1 and --samples {args.samples} >= 2")
    steps = _ints(args.steps, "--steps") if args.steps else (None if args.nfe else [8, 16, 32, 64])
    nfe = _ints(args.nfe, "--nfe") if args.nfe else None
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    start = time.perf_counter()
    result = converge.measure(problem, names, steps=steps, nfe=nfe, grid=args.grid, rho=args.rho,
                              to_zero=args.to_zero, batch=args.batch, samples=args.samples, seed=args.seed,
                              options=_options(args.option, args.afs, names), log=log)
    seconds = time.perf_counter() - start
    command = _command(args)
    table = converge.format_table(result)
    header = (f"problem: {result.problem} ({result.description})\ngrid: {result.grid}, sigma "
              f"{_span(r.sigma_start for r in result.rows)} -> {_span(r.sigma_end for r in result.rows)}; "
              f"slopes of log error vs log {result.axis}\ncommand: {command}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    info = {"command": command, "seconds": round(seconds, 2), "machine": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, **result.to_dict()}

    def write_csv(path):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["problem", "grid", "sampler", "kind", "steps", "nfe", "target_nfe", "sigma_start",
                        "sigma_end", "error", "seconds"])
            for r in result.rows:
                w.writerow([result.problem, result.grid, r.sampler, r.kind, r.steps, r.nfe,
                            "" if r.target_nfe is None else r.target_nfe, f"{r.sigma_start:.10g}",
                            f"{r.sigma_end:.10g}", f"{r.error:.6e}", f"{r.seconds:.4f}"])

    _write(args.outdir / "converge.csv", write_csv)
    _write(args.outdir / "converge.json", lambda p: p.write_text(json.dumps(info, indent=1) + "\n"))
    _write(args.outdir / "converge.md", lambda p: p.write_text(
        "```\n" + header + "\n\n" + table + "\n```\n"))
    if not args.no_plot:
        try:
            _write(args.outdir / "converge.png", lambda p: _plot(result, p))
        except ImportError:
            print("note: matplotlib is not installed; no PNG written (pip install matplotlib)", file=sys.stderr)
    print(header + "\n\n" + table + f"\n\n({seconds:.1f} s)")
    print(f"wrote {args.outdir}/converge.{{csv,json,md{'' if args.no_plot else ',png'}}}")
    return 0
