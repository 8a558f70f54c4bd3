"""`diffspace train`: train a diffusion model with EDM's options, on one or several processes.

    diffspace train --data toy:gmm8 --arch mlp --outdir runs/gmm8 --batch 256 --duration 2 --lr-rampup 0.01
    torchrun --nproc_per_node=2 -m diffspace train --data cifar10 --outdir runs/c10 --arch ddpmpp-small
    diffspace train --resume runs/gmm8 --duration 4          # continue (or extend) a run where it stopped
    diffspace train -n --data cifar10 --outdir runs          # print the resolved options, write nothing

Intervals follow EDM: --tick in kimg, --snap/--dump/--sample-every in ticks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use 1/0, true/false, yes/no")


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e.msg}): use e.g. '{{\"hidden\": 128}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object: use e.g. '{{\"hidden\": 128}}'")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers: use e.g. 1,2,2,2") from None


def _ratio_or_none(text: str) -> float | str:
    """A ratio, or 'none' (kept as the string: None would mean 'not given')."""
    if str(text).strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: use e.g. 0.05, or none") from None


def _flag(parser, name: str, help: str) -> None:
    """A boolean option usable as `--x`, `--x=1` or `--x=false` (EDM writes `--cond=1`)."""
    parser.add_argument(name, type=_bool, nargs="?", const=True, default=None, metavar="BOOL", help=help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--data", help="dataset: path (EDM zip, image folder, npz, ...) or built-in name "
                                  "(cifar10, fashion-mnist, mnist, digits, toy:gmm8, toy:swissroll, toy:checkerboard)")
    g.add_argument("--outdir", help="run folder (created; default with --resume: the resumed run's folder); with "
                                    "--subdir the folder that receives numbered run folders")
    _flag(g, "--cond", "class-conditional training (needs labels)")
    g.add_argument("--arch", help="network: ddpmpp | ncsnpp | adm | ddpmpp-small | ncsnpp-small | mlp "
                                  "(default ddpmpp)")
    g.add_argument("--precond", choices=("vp", "ve", "edm"), help="preconditioning and loss (default edm)")
    g.add_argument("--loss", choices=("vp", "ve", "edm"), help="training loss (noise distribution and weight) when "
                                                               "it differs from --precond's, e.g. --precond edm "
                                                               "--loss vp (EDM Table 2, config D)")
    g.add_argument("--cbase", type=int, help="network base channels (model_channels / MLP hidden width)")
    g.add_argument("--cres", type=_int_list, help="channel multipliers per resolution, e.g. 1,2,2,2")
    g.add_argument("--dropout", type=float, help="dropout probability (default: the preset's, 0.13 for ddpmpp)")
    g.add_argument("--net-kwargs", type=_json_dict, help="JSON object of further network arguments")
    g.add_argument("--loss-kwargs", type=_json_dict, help="JSON object of loss arguments, e.g. "
                                                          "'{\"P_mean\": -1.0}'")
    g.add_argument("--sigma-data", type=float, help="EDM sigma_data (default 0.5 for images, data std for points)")
    g.add_argument("--resolution", type=int, help="image resolution (default: the dataset's)")
    g.add_argument("--transform", choices=("none", "pad", "resize", "center-crop"),
                   help="how to bring images to --resolution")
    g.add_argument("--max-size", type=int, help="train on a seeded subset of this many items")
    _flag(g, "--xflip", "append x-flipped copies of the images to the dataset")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch", type=int, help="global batch size (default 512)")
    g.add_argument("--batch-gpu", type=int, help="examples per process per accumulation round")
    g.add_argument("--duration", type=float, help="training length in Mimg (default 200)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 10e-4)")
    g.add_argument("--lr-rampup", type=float, help="learning-rate warm-up in Mimg (default 10)")
    g.add_argument("--ema", type=float, help="EMA half-life in Mimg (default 0.5)")
    g.add_argument("--ema-rampup", type=_ratio_or_none, help="EMA ramp-up ratio: the half-life is at most this "
                                                            "times the images seen so far (default 0.05; 'none': off)")
    g.add_argument("--augment", type=float, help="augmentation probability p (default 0.12 images, 0 points)")
    g.add_argument("--augment-kwargs", type=_json_dict, help="JSON object of augmentation multipliers")
    g.add_argument("--leak-augment", action="store_true", default=None,
                   help="do not tell the network about augmentations (demonstrates leaking)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--transfer", metavar="PATH", help="initialise the weights from a diffspace checkpoint or run "
                                                      "folder, or an NVlabs/edm snapshot .pkl (read safely)")

    g = p.add_argument_group("speed")
    _flag(g, "--fp16", "float16 autocast with loss scaling (CUDA only)")
    _flag(g, "--bf16", "bfloat16 autocast (CPU or GPU)")
    _flag(g, "--compile", "torch.compile the network")
    _flag(g, "--channels-last", "channels_last memory format for image networks")
    g.add_argument("--workers", type=int, help="data-loading worker processes (default 0)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto; torchrun assigns LOCAL_RANK's GPU)")
    g.add_argument("--threads", type=int, help="CPU threads per process (default: all cores)")
    _flag(g, "--bench", "cuDNN autotuning as in EDM (default false: autotuned kernels can differ between "
                        "processes, which breaks bit-exact resume; no effect on a CPU)")

    g = p.add_argument_group("output")
    g.add_argument("--tick", type=float, help="kimg per tick: progress line and stats.jsonl (default 50)")
    g.add_argument("--snap", type=int, help="network snapshot every this many ticks, 0 = at the end (default 50)")
    g.add_argument("--dump", type=int, help="training state every this many ticks, 0 = at the end (default 500)")
    g.add_argument("--sample-every", type=int, help="sample grid every this many ticks, 0 = off "
                                                    "(default: with snapshots)")
    g.add_argument("--grid", type=int, help="samples in the preview (default 16 images / 1000 points)")
    g.add_argument("--grid-steps", type=int, help="Heun steps of the preview (default 10; EDM's sampler uses 18)")
    g.add_argument("--resume", help="continue a run: 'latest' (newest state in --outdir, or start fresh), a run "
                                    "folder or a training-state file")
    g.add_argument("--no-progress", action="store_true", help="one line per tick instead of a progress bar")
    g.add_argument("--desc", help="text appended to the run description (used in --subdir folder names)")
    g.add_argument("--subdir", action="store_true", default=None,
                   help="create a numbered run folder inside --outdir: NNNNN-<data>-<cond>-<arch>-<precond>-gpus<W>-"
                        "batch<B>-<precision>[-<desc>], as EDM does by default")
    g.add_argument("--nosubdir", action="store_true", help="--outdir is the run folder itself (the default)")
    g.add_argument("-n", "--dry-run", action="store_true", help="print the resolved options and the network size, "
                                                                 "write nothing")


# Options copied as they are into TrainConfig.
_DIRECT = ("data", "cond", "arch", "precond", "loss", "dropout", "resolution", "transform", "max_size", "xflip",
           "batch", "batch_gpu", "duration", "lr", "lr_rampup", "ema", "augment", "augment_kwargs", "seed", "compile",
           "channels_last", "workers", "device", "tick", "snap", "dump", "sample_every", "grid", "grid_steps",
           "sigma_data", "net_kwargs", "loss_kwargs", "threads", "bench", "transfer", "desc", "subdir")


def options_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the user set explicitly."""
    from diffspace.errors import ConfigError

    opts = {name: getattr(args, name) for name in _DIRECT if getattr(args, name, None) is not None}
    net_kwargs = dict(opts.pop("net_kwargs", {}))
    if args.cbase is not None:
        net_kwargs["hidden" if (opts.get("arch") == "mlp") else "model_channels"] = args.cbase
    if args.cres is not None:
        net_kwargs["channel_mult"] = args.cres
    if net_kwargs:
        opts["net_kwargs"] = net_kwargs
    if args.fp16 and args.bf16:
        raise ConfigError("--fp16 and --bf16 are exclusive: choose one")
    if args.fp16 is not None or args.bf16 is not None:
        opts["precision"] = "fp16" if args.fp16 else ("bf16" if args.bf16 else "fp32")
    if getattr(args, "ema_rampup", None) is not None:
        opts["ema_rampup"] = None if args.ema_rampup == "none" else args.ema_rampup
    if args.leak_augment:
        opts["augment_label"] = False
    if args.no_progress:
        opts["progress"] = False
    if args.subdir and args.nosubdir:
        raise ConfigError("--subdir and --nosubdir are exclusive: choose one")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads={args.threads} is invalid: use an integer >= 1")
    if args.transfer is not None and args.resume not in (None, "latest"):
        raise ConfigError("--transfer and --resume PATH are exclusive: a resumed run has its own weights")
    return opts


def run(args: argparse.Namespace) -> int:
    import os

    # Idle OpenMP threads sleep instead of spinning, as in `diffspace demo`: on a busy machine spinning threads
    # steal the cores the work needs (benchmarks/train_cpu_settings.py). Read by OpenMP when torch is imported,
    # which the CLI has not done yet; an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from diffspace.deps import check_command

    check_command("train", args)  # every package a run needs, before any work (a save must not fail at the end)
    from diffspace.errors import ConfigError
    from diffspace.train import distributed as dist
    from diffspace.train.config import IDENTITY_FIELDS, TrainConfig
    from diffspace.train.loop import train
    from diffspace.train.runfolder import find_resume

    opts = options_from_args(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    outdir = args.outdir
    if outdir is None:
        if args.resume in (None, "latest"):
            raise ConfigError("--outdir is missing: name the run folder (or pass --resume <run folder>)")
        resume_path = Path(args.resume)
        outdir = str(resume_path if resume_path.is_dir() else resume_path.parent)
    if args.subdir and args.resume is not None:
        raise ConfigError("--subdir starts a new numbered run folder: to continue a run, pass --resume with its "
                          "folder and drop --subdir")
    found = find_resume(args.resume, outdir, log=dist.print0)
    base: dict = {}
    if found is not None:
        saved = dict(found[3].get("train", {}))
        for name in sorted(set(opts) & set(IDENTITY_FIELDS)):
            if name in saved and opts[name] != saved[name]:
                raise ConfigError(f"--{name.replace('_', '-')}={opts[name]!r} differs from the resumed run's "
                                  f"{saved[name]!r}: keep it or start a new run in another --outdir")
        base = {k: v for k, v in saved.items() if k not in ("outdir", "subdir")}
    merged = {**base, **opts, "outdir": outdir}
    if "data" not in merged:
        raise ConfigError("--data is missing: name a dataset path or a built-in such as toy:gmm8 or cifar10")
    cfg = TrainConfig.from_dict({k: v for k, v in merged.items() if k in TrainConfig.__dataclass_fields__})
    try:
        train(cfg, resume=args.resume if found is None else None, resume_state=found, dry_run=args.dry_run,
              command=_command_line())
    finally:
        dist.shutdown()
    return 0


def _command_line() -> list[str]:
    """The command as typed: `diffspace train ...` for the console script and `python -m diffspace`, else argv."""
    import sys

    exe = Path(sys.argv[0])
    if exe.stem == "diffspace" or (exe.stem == "__main__" and exe.parent.name == "diffspace"):
        return ["diffspace", *sys.argv[1:]]
    return list(sys.argv)
