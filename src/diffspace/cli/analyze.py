"""`diffspace analyze`: the geometric perspective (Chen et al. 2023) on a dataset and optionally a trained network.

    diffspace analyze --data digits                                  # optimal denoiser of scikit-learn digits
    diffspace analyze --data fashion-mnist --network runs/fmnist --features fmnist-features.safetensors
    diffspace analyze --data digits --quick --outdir /tmp/a          # a small run (seconds)

Records the sampling and denoising trajectories of the optimal denoiser of the data (and of the network, from the
same latents), and writes one folder: report.md with the numbers, PNG figures and results.json. The folder is
written under a temporary name and renamed at the end; nothing is left behind on an error.
"""

from __future__ import annotations

import argparse

QUICK_SEEDS, FULL_SEEDS = "0-15", "0-255"
QUICK_MAX_DATA = 5_000  # --quick caps the optimal denoiser's dataset (unless --max-data is given)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="NAME|PATH", help="dataset (required): digits, fashion-mnist, mnist, cifar10, "
                   "toy:gmm8, an EDM zip, image folder, npz, ...; its optimal denoiser is the reference")
    g.add_argument("--max-data", type=int, default=None, metavar="N",
                   help="use a seeded subset of N items for the optimal denoiser (default: all; --quick: 5000)")
    g.add_argument("--resolution", type=int, default=None, help="bring images to this resolution (see --transform)")
    g.add_argument("--transform", default="none", choices=("none", "pad", "resize", "center-crop"),
                   help="how --resolution is reached (default none)")
    g.add_argument("--network", metavar="CKPT", default=None,
                   help="trained network (snapshot, training state or run folder) to compare with the optimum")
    g.add_argument("--which", choices=("ema", "net"), default="ema", help="weights of a training state (default ema)")

    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", default="euler", help="registered sampler (default euler: optimal Euler = mean shift)")
    g.add_argument("--steps", type=int, default=18, help="noise levels before the final 0 (default 18)")
    g.add_argument("--sigma-min", type=float, default=0.002, help="lowest noise level (default 0.002)")
    g.add_argument("--sigma-max", type=float, default=80.0, help="highest noise level (default 80)")
    g.add_argument("--rho", type=float, default=7.0, help="EDM grid exponent (default 7)")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="sampler option, repeatable")
    g.add_argument("--seeds", default=None, metavar="LIST", help=f"seeds of the trajectories (default {FULL_SEEDS}; "
                   f"--quick: {QUICK_SEEDS})")

    g = p.add_argument_group("measurements")
    g.add_argument("--features", default=None, metavar="inception|PATH",
                   help="feature network for the ODE-Jump FID/KID of --network (e.g. a `diffspace features train` "
                        "file); default: no FID/KID")
    g.add_argument("--fid-seeds", default=None, metavar="LIST",
                   help="seeds for the ODE-Jump FID/KID (default 0-999; --quick: 0-99)")
    g.add_argument("--threshold", type=float, default=1e-3,
                   help="memorised: nearest-neighbour distance / median inter-sample distance <= this (default 1e-3)")
    g.add_argument("--interp-pairs", type=int, default=None, help="latent pairs for interpolation (default 8)")
    g.add_argument("--interp-points", type=int, default=9, help="points per interpolation path (default 9)")

    g = p.add_argument_group("output")
    g.add_argument("--outdir", default="analyze-out", metavar="DIR", help="report folder (default analyze-out)")
    g.add_argument("--force", action="store_true", help="replace an existing report in --outdir")
    g.add_argument("--quick", action="store_true", help="16 seeds, at most 5000 data items, 2 interpolation pairs")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_data(args) -> tuple[object, str]:
    """(float tensor [K, *event] in the model's space, dataset title)."""
    import numpy as np
    import torch

    from diffspace.data import open_dataset
    from diffspace.errors import ConfigError

    if not args.data:
        raise ConfigError("--data is missing: name a dataset, e.g. --data digits")
    max_size = args.max_data if args.max_data is not None else (QUICK_MAX_DATA if args.quick else None)
    if max_size is not None and max_size < 2:
        raise ConfigError(f"--max-data {max_size} must be >= 2")
    if str(args.data).startswith("toy:"):
        ds = open_dataset(args.data, max_size=max_size or 10_000)
        return torch.as_tensor(ds.items(0, len(ds))).to(torch.float64), str(args.data)
    ds = open_dataset(args.data, resolution=args.resolution, transform=args.transform, max_size=max_size)
    images = np.asarray(ds.images_uint8(0, len(ds)))
    big = images.size > 8_000_000  # keep large sets in float32 (the denoiser computes in float64 per chunk)
    x = torch.as_tensor(images).to(torch.float32 if big else torch.float64) / 127.5 - 1
    return x, f"{ds.name}"


def check_network(net, info: dict, shape, args) -> None:
    from diffspace.errors import ConfigError
    from diffspace.generate import image_shape

    try:
        net_shape = tuple(image_shape(net, info))
    except ConfigError:
        return
    if net_shape != tuple(shape):
        hint = (f"--resolution {net_shape[-1]} --transform pad" if len(net_shape) == 3 and len(shape) == 3
                and net_shape[0] == shape[0] else "the dataset the network was trained on")
        raise ConfigError(f"--data {args.data} has items of shape {list(shape)} but {args.network} works on "
                          f"{list(net_shape)}: analyse it with {hint}")


def _command(args) -> str:
    parts = ["diffspace analyze", f"--data {args.data}"]
    for flag, value, default in (("--network", args.network, None), ("--max-data", args.max_data, None),
                                 ("--resolution", args.resolution, None), ("--sampler", args.sampler, "euler"),
                                 ("--steps", args.steps, 18), ("--seeds", args.seeds, None),
                                 ("--features", args.features, None), ("--fid-seeds", args.fid_seeds, None)):
        if value is not None and value != default:
            parts.append(f"{flag} {value}")
    parts += [f"--opt {o}" for o in args.opt] + (["--quick"] if args.quick else [])
    return " ".join(parts)


def _settings(args):
    from diffspace.errors import ConfigError
    from diffspace.geometry.analysis import Settings
    from diffspace.samplers import parse_options, parse_seeds

    seeds = parse_seeds(args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS))
    fid = parse_seeds(args.fid_seeds or ("0-99" if args.quick else "0-999")) if args.features else []
    if args.features and not args.network:
        raise ConfigError("--features measures the network's ODE-Jump FID/KID: pass --network too, or drop it")
    if args.interp_points < 2 or (args.interp_pairs is not None and args.interp_pairs < 1):
        raise ConfigError("--interp-points must be >= 2 and --interp-pairs >= 1")
    if not 0 < args.sigma_min < args.sigma_max:
        raise ConfigError(f"--sigma-min {args.sigma_min} and --sigma-max {args.sigma_max} need 0 < min < max")
    if any(str(o).partition("=")[0].strip() == "noise" for o in args.opt):
        raise ConfigError("the noise source is analyze's own (one generator per seed): drop the 'noise' option")
    options = parse_options(args.sampler, args.opt)  # typed and checked with the sampler's own options
    pairs = args.interp_pairs or (2 if args.quick else 8)
    return Settings(sampler=args.sampler, steps=args.steps, seeds=seeds, sigma_min=args.sigma_min,
                    sigma_max=args.sigma_max, rho=args.rho, options=options, threshold=args.threshold,
                    interp_pairs=pairs, interp_points=args.interp_points, fid_seeds=fid,
                    meanshift_seeds=4 if args.quick else 16)


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import time
    from pathlib import Path

    import torch

    from diffspace.errors import ConfigError

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"--outdir {outdir} is a file: name a folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not args.force:
        raise ConfigError(f"{outdir} is not empty: pass --force to replace it, or choose another --outdir")
    t_start = time.perf_counter()
    data, title = load_data(args)
    net, features = None, None
    if args.network:
        from diffspace.generate import load

        net, info = load(args.network, which=args.which)
        check_network(net, info, tuple(data.shape[1:]), args)
    if args.features:
        from diffspace.metrics.features import load_features

        features = load_features(args.features, device="cpu")
    from diffspace.geometry.analysis import analyze
    from diffspace.geometry.report import write_report
    from diffspace.io.checkpoint import ensure_writable_dir

    ensure_writable_dir(outdir.parent if str(outdir.parent) else Path("."))
    stage = Path(tempfile.mkdtemp(prefix=f".{outdir.name}-", dir=outdir.parent))
    phases = 5 + (2 + bool(features) if net is not None else 0)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=phases, bar_format="{desc:<28}{bar}| {n_fmt}/{total_fmt} [{elapsed}]", dynamic_ncols=True)

    def progress(text: str) -> None:
        if bar is not None:
            bar.set_description_str(text)
            bar.update(1)

    import signal
    import sys
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():  # a kill (SIGTERM) also removes the stage folder
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = analyze(data, net=net, settings=settings, features=features, progress=progress)
        result.update(data=title, network=args.network, features=args.features)
        progress("figures and report")
        result["timings"]["total"] = time.perf_counter() - t_start
        write_report(result, data, stage, title=f"Geometry of {title}" + (" and " + str(args.network) if net else ""),
                     command=_command(args))
        _replace(stage, outdir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    secs = time.perf_counter() - t_start
    print(f"wrote {outdir}/report.md and {len(list(outdir.glob('*.png')))} figures ({secs:.1f} s)")
    return 0


def _replace(stage, outdir) -> None:
    """Move the finished report folder into place (an existing one is replaced only after the new one is done)."""
    import os
    import shutil

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(stage, 0o777 & ~mask)  # mkdtemp made it private; a report folder gets the usual permissions
    old = None
    if outdir.exists():
        old = outdir.with_name(f".{outdir.name}.old-{os.getpid()}")
        os.replace(outdir, old)
    os.replace(stage, outdir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
