"""Every verifiable claim of EDM (Karras et al. 2022), Li et al. 2024 and the geometric perspective (Chen et al.
2023, with GITS and AMED), each a small seeded experiment with a verdict.

    from diffspace import reproduce
    reproduce.run("edm.1")                  # one claim: a dict with measurement and verdict
    reproduce.claims()                      # id -> Claim (source, title, prediction)

`diffspace reproduce [--quick] [--only IDS] [--outdir DIR] [--jobs N]` runs them into a report folder.
"""

from __future__ import annotations

from pathlib import Path

from diffspace.reproduce.core import FAIL, NOT_AVAILABLE, PASS, REPORTED, Claim, Outcome

__all__ = ["FAIL", "NOT_AVAILABLE", "PASS", "REPORTED", "Claim", "Outcome", "claims", "run"]


def claims() -> dict[str, Claim]:
    """All registered claims, in report order."""
    from diffspace.reproduce.core import load_all

    return dict(load_all())


def run(claim_id: str, *, quick: bool = True, figure: str | Path | None = None, **components) -> dict:
    """Run one claim and return its record (id, source, prediction, measurement, verdict, seconds, command, data).

    Components the claim uses can be replaced by keyword (e.g. `heun=my_heun` for "edm.1") to check a variant —
    or to see the claim fail on a deliberately broken one."""
    from diffspace.errors import ConfigError
    from diffspace.reproduce.core import run_claim

    known = claims()
    if claim_id not in known:
        raise ConfigError(f"unknown claim {claim_id!r}: known claims are {', '.join(known)}")
    return run_claim(known[claim_id], quick=quick, figure_path=Path(figure) if figure else None, **components)
