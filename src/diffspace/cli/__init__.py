"""The `diffspace` command line. Each command lives in its own module with `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when needed so that `diffspace --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help). Keep sorted by the order a newcomer meets them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("diffspace.cli.demo", "run the end-to-end demo on embedded data"),
    "train": ("diffspace.cli.train", "train a diffusion model (torchrun for several processes)"),
    "generate": ("diffspace.cli.generate", "generate images from a checkpoint"),
    "fid": ("diffspace.cli.fid", "reference statistics and FID/KID/PRDC"),
    "features": ("diffspace.cli.features", "train a small-data feature network for FID"),
    "dataset": ("diffspace.cli.dataset", "convert image folders, IDX or npz files into an EDM zip"),
    "converge": ("diffspace.cli.converge", "measure the convergence order of samplers"),
    "analyze": ("diffspace.cli.analyze", "trajectories, mean shift, memorisation, ODE-Jump (geometric perspective)"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, text) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, text)
    return out


def build_parser() -> argparse.ArgumentParser:
    from diffspace import __version__

    parser = argparse.ArgumentParser(
        prog="diffspace", description="Diffusion models in the EDM design space: train, sample, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"diffspace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, text) in _available().items():
        p = sub.add_parser(name, help=text, description=text)
        module = importlib.import_module(mod)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from diffspace.errors import DiffspaceError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DiffspaceError as e:
        print(f"diffspace {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffspace {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
