"""`diffspace reproduce`: check the papers' verifiable claims and write a browsable report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="the fast subset with small settings (about 3 minutes on 2 cores)")
    p.add_argument("--only", metavar="IDS", help="comma-separated claim ids or prefixes, e.g. edm.1,li or geo")
    p.add_argument("--outdir", default="reproduce-out", help="report folder (default: reproduce-out); a rerun "
                   "with the same folder and mode resumes the finished claims")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="claims run in N parallel processes")
    p.add_argument("--list", action="store_true", help="list the claims and exit")


def run(args: argparse.Namespace) -> int:
    from diffspace.errors import ConfigError
    from diffspace.reproduce.core import FAIL, select
    from diffspace.reproduce.runner import run_all

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs} must be >= 1")
    chosen = select(args.only, quick=args.quick)
    if args.list:
        for c in chosen:
            print(f"{c.id:10s} {'quick' if c.quick else 'full '}  {c.source}: {c.title}")
        return 0
    if not chosen:
        raise ConfigError(f"--only {args.only} selects no claim of the --quick set: drop --quick or pick others")
    records = run_all(chosen, quick=args.quick, outdir=Path(args.outdir), jobs=args.jobs)
    failed = [r["id"] for r in records if r["verdict"] == FAIL]
    print(f"report: {Path(args.outdir) / 'index.html'}; " + ("failed: " + ", ".join(failed) if failed
                                                           else "no claim failed"))
    return 1 if failed else 0
