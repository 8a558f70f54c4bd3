"""The claim registry: each verifiable claim of the three papers is a small seeded experiment that returns what it
measured and a verdict (PASS, FAIL, REPORTED, or NOT AVAILABLE when the feature it exercises is missing)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diffspace.errors import ConfigError

PASS, FAIL, REPORTED, NOT_AVAILABLE = "PASS", "FAIL", "REPORTED", "NOT AVAILABLE"
VERDICTS = (PASS, FAIL, REPORTED, NOT_AVAILABLE)


@dataclass
class Outcome:
    """What a claim's experiment returns: the measurement in words, the verdict, the numbers behind them and an
    optional figure drawer `figure(fig)` that fills a matplotlib figure."""

    measurement: str
    verdict: str
    data: dict = field(default_factory=dict)
    figure: Callable | None = None


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    title: str
    prediction: str
    fn: Callable[..., Outcome]
    quick: bool = True  # part of `--quick`
    seed: int = 0


CLAIMS: dict[str, Claim] = {}


def claim(id: str, *, source: str, title: str, prediction: str, quick: bool = True, seed: int = 0):
    """Register `fn(quick: bool, seed: int, **components) -> Outcome` as claim `id`."""

    def wrap(fn):
        CLAIMS[id] = Claim(id, source, title, prediction, fn, quick, seed)
        return fn

    return wrap


def load_all() -> dict[str, Claim]:
    import importlib

    for module in ("edm", "table2", "li", "geometry"):
        importlib.import_module(f"diffspace.reproduce.{module}")
    return CLAIMS


def select(only: str | None = None, quick: bool = False) -> list[Claim]:
    """Claims to run: all (the quick subset with `quick`), or those named by comma-separated ids or prefixes."""
    claims = load_all()
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        chosen = []
        for w in wanted:
            hits = [c for c in claims.values() if c.id == w or c.id.startswith(w + ".")]
            if not hits:
                raise ConfigError(f"unknown claim {w!r}: known claims are {', '.join(claims)} "
                                  "(a prefix such as 'edm' selects a paper's claims)")
            chosen += [h for h in hits if h not in chosen]
    else:
        chosen = list(claims.values())
    return [c for c in chosen if c.quick or not quick]


def command_for(claim_id: str, quick: bool) -> str:
    return f"diffspace reproduce --only {claim_id}" + (" --quick" if quick else "")


def run_claim(c: Claim, *, quick: bool, figure_path: Path | None = None, **components) -> dict:
    """Run one claim and return its result record (the figure, if any, is written to `figure_path`)."""
    t0 = time.perf_counter()
    try:
        out = c.fn(quick=quick, seed=c.seed, **components)
    except FeatureMissing as e:
        out = Outcome(f"not yet available: {e}", NOT_AVAILABLE)
    except Exception as e:  # a crashing experiment is a failed check, reported with its cause
        out = Outcome(f"the experiment raised {type(e).__name__}: {e}", FAIL,
                      {"traceback": traceback.format_exc(limit=4)})
    if out.verdict not in VERDICTS:
        raise ValueError(f"claim {c.id} returned verdict {out.verdict!r}")
    figure = None
    if out.figure is not None and figure_path is not None:
        figure = _save_figure(out.figure, figure_path)
    record = {
        "id": c.id, "source": c.source, "title": c.title, "prediction": c.prediction,
        "measurement": out.measurement, "verdict": out.verdict, "seconds": round(time.perf_counter() - t0, 2),
        "command": command_for(c.id, quick), "seed": c.seed, "quick": quick, "data": _plain(out.data),
        "figure": figure,
    }
    return record


class FeatureMissing(Exception):
    """Raised by a claim whose feature is not in this build of diffspace."""


def need(module: str, *names: str):
    """Import `module` and return the named attributes, or raise FeatureMissing naming what is absent."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise FeatureMissing(f"{module} is not in this build") from e
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise FeatureMissing(f"{module} has no {', '.join(missing)}")
    return [getattr(mod, n) for n in names] if len(names) != 1 else getattr(mod, names[0])


def _save_figure(draw: Callable, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffspace.io.checkpoint import atomic_write

    fig = plt.figure(figsize=(6.4, 3.6), dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path.name


def _plain(obj):
    """JSON-ready copy: tensors and numpy values become lists and floats."""
    import math

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def as_dict(c: Claim) -> dict:
    d = asdict(c)
    d.pop("fn")
    return d
