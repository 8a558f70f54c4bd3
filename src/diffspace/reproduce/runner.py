"""Running a set of claims into a report folder, in parallel processes, resuming the claims a previous run of
the same mode finished (they are kept in results.json, rewritten after every claim). The report shows every
finished claim of the mode, so `--only` adds to an existing report."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from diffspace.reproduce import noise, report
from diffspace.reproduce.core import VERDICTS, Claim, load_all, run_claim


def _worker(claim_id: str, quick: bool, figure: str) -> dict:
    import torch

    torch.set_num_threads(1)
    return run_claim(load_all()[claim_id], quick=quick, figure_path=Path(figure))


def _finished(path: Path, quick: bool, figures: Path) -> dict[str, dict]:
    """Records of a previous run that can be reused: same mode, a known verdict, the figure still present."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(records, list):
        return {}
    keep = {}
    for r in records:
        if not isinstance(r, dict) or r.get("verdict") not in VERDICTS or r.get("quick") != quick:
            continue
        if r.get("figure") and not (figures / r["figure"]).exists():
            continue
        keep[r["id"]] = r
    return keep


def run_all(claims: list[Claim], *, quick: bool, outdir: Path, jobs: int = 1, progress: bool = True,
            log: Callable[[str], None] | None = None) -> list[dict]:
    """Run `claims` (skipping those already finished in outdir/results.json), then write the report."""
    import time

    from diffspace.io.checkpoint import ensure_writable_dir

    outdir = ensure_writable_dir(outdir)
    figures = outdir / "figures"
    results = outdir / "results.json"
    done = _finished(results, quick, figures)
    todo = [c for c in claims if c.id not in done]
    bar = _bar(len(todo), progress)
    log = log or bar.write
    if todo and len(todo) < len(claims):
        log(f"resuming: {len(claims) - len(todo)} of {len(claims)} claims already finished in {results}")
    order = list(load_all())
    t0 = time.perf_counter()

    def finish(record: dict) -> None:
        done[record["id"]] = record
        report.save_results(results, sorted((r for r in done.values() if r["id"] in order),
                                            key=lambda r: order.index(r["id"])))
        log(f"{record['id']:10s} {record['verdict']:13s} {record['seconds']:7.1f} s  {record['measurement']}")

    if todo:
        for stale in ("index.html", "report.md"):  # rewritten once every selected claim has finished
            (outdir / stale).unlink(missing_ok=True)
    if jobs > 1 and len(todo) > 1:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, c.id, quick, str(figures / f"{c.id}.png")) for c in todo]
            for f in as_completed(futures):
                finish(f.result())
                bar.update(1)
    else:
        for c in todo:
            finish(run_claim(c, quick=quick, figure_path=figures / f"{c.id}.png"))
            bar.update(1)
    bar.close()
    records = [done[c.id] for c in claims]
    # The report shows every finished claim of this mode in the folder: a run with --only adds to an earlier
    # report instead of replacing it (results.json already keeps them all).
    shown = sorted((r for r in done.values() if r["id"] in order), key=lambda r: order.index(r["id"]))
    ran = {c.id for c in todo}
    meta = {**report.machine(), "mode": "quick" if quick else "full", "seconds": time.perf_counter() - t0
            + sum(r["seconds"] for r in shown if r["id"] not in ran)}
    meta["noise"] = noise.measure(shown)
    report.write(outdir, shown, meta)
    return records


class _NoBar:
    write = staticmethod(print)

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="claims", unit="claim", leave=False)
