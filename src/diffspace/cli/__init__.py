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
    "convert": ("diffspace.cli.convert", "convert an NVlabs/edm snapshot (.pkl) into a diffspace checkpoint"),
    "reproduce": ("diffspace.cli.reproduce", "check the papers' verifiable claims and write a report"),
    "tune": ("diffspace.cli.tune", "choose the best sampler and time grid per NFE budget (GITS, AMED)"),
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. from a scheduler or torchrun), handled like Ctrl-C: clean-up code runs, nothing partial stays."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost sub-command parser the command line selected (`diffspace fid ref …` -> the `ref` parser)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if not subs or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


# Errors of the operating system that are the user's environment, not a bug: one line, no traceback.
_ENVIRONMENT_ERRNOS = {"ENOSPC": "free some space", "EDQUOT": "free some space", "EROFS": "choose a writable folder",
                       "EACCES": "check the permissions", "EPERM": "check the permissions", "EIO": "check the disk"}


def _environment_error(e: OSError) -> str | None:
    import errno

    name = errno.errorcode.get(e.errno or -1)
    if name not in _ENVIRONMENT_ERRNOS:
        return None
    where = f" {e.filename}" if e.filename else ""
    return f"cannot read or write{where} ({e.strerror or name}): {_ENVIRONMENT_ERRNOS[name]}"


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    # SIGTERM is handled like Ctrl-C from the first moment: clean-up code runs, no partial output stays.
    handling = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handling else None
    try:
        return _main(argv)
    except Terminated:
        print("diffspace: terminated (SIGTERM) before starting", file=sys.stderr)
        return 143
    finally:
        if handling:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    from diffspace.errors import DiffspaceError

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the usage of the sub-command that was given, not the top-level one
        _leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    name = args.command + (f" {args.action}" if isinstance(getattr(args, "action", None), str) else "")
    try:
        from diffspace.deps import check_command

        check_command(args.command, args)  # every package the command needs, before any work
        return int(args._run(args) or 0)
    except DiffspaceError as e:
        print(f"diffspace {name}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"diffspace {name}: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"diffspace {name}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        message = _environment_error(e)
        if message is None:
            raise
        print(f"diffspace {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
