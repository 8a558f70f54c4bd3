"""Run-to-run noise of the report, measured rather than asserted: a few cheap claims on exact denoisers are rerun
with another CPU thread count and their numbers compared with the records; edm.table2's FID sampling noise comes
from its bootstrap over the generated features."""

from __future__ import annotations

import math

# Cheap (< 5 s) claims with exact denoisers and fixed seeds, rerun to measure the run-to-run difference.
RERUN = ("edm.4", "edm.5", "geo.13", "geo.14", "geo.16")
FLOOR = 1e-10     # numbers below this are round-off measurements themselves: their difference counts absolutely
TOLERANCE = 1e-6  # relative difference within which a fresh run matches the report (tests check it)


def leaves(data, prefix: str = "") -> dict[str, object]:
    """Flat {path: value} of the numbers, booleans and strings in a record's data."""
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in leaves(val, f"{prefix}/{key}").items()}
    if isinstance(data, list):
        return {k: v for i, val in enumerate(data) for k, v in leaves(val, f"{prefix}[{i}]").items()}
    return {prefix: data}


def difference(a: dict, b: dict) -> float:
    """Largest relative difference |x − y| / max(|x|, |y|, FLOOR) between the numbers of two data dicts; inf
    when their structure, booleans or strings differ."""
    la, lb = leaves(a), leaves(b)
    if la.keys() != lb.keys():
        return math.inf
    worst = 0.0
    for key, x in la.items():
        y = lb[key]
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) \
                or not isinstance(y, (int, float)):
            if x != y:
                return math.inf
            continue
        worst = max(worst, abs(x - y) / max(abs(x), abs(y), FLOOR))
    return worst


def rerun(records: list[dict]) -> dict | None:
    """Rerun the RERUN claims among `records` (same mode) with a different torch thread count; the largest
    relative difference of their data. None when the report holds none of them."""
    import torch

    from diffspace.reproduce.core import _plain, load_all

    claims = load_all()
    chosen = [r for r in records if r["id"] in RERUN and r["id"] in claims]
    if not chosen:
        return None
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    torch.set_num_threads(threads)
    try:
        diffs = {}
        for r in chosen:
            c = claims[r["id"]]
            fresh = _plain(c.fn(quick=r["quick"], seed=c.seed).data)
            diffs[r["id"]] = difference(r["data"], fresh)
    finally:
        torch.set_num_threads(before)
    return {"claims": list(diffs), "threads": threads, "max_rel_diff": max(diffs.values()), "per_claim": diffs}


def table2_noise(records: list[dict]) -> dict | None:
    """edm.table2's FID sampling noise per configuration (bootstrap std), None when it is not in the report."""
    for r in records:
        if r["id"] == "edm.table2" and isinstance(r.get("data"), dict) and "configs" in r["data"]:
            d = r["data"]
            return {"fid_bootstrap_std": {k: v["fid_bootstrap_std"] for k, v in d["configs"].items()},
                    "bootstrap": d.get("bootstrap"), "threads": d.get("threads")}
    return None


def measure(records: list[dict]) -> dict:
    return {"rerun": rerun(records), "table2": table2_noise(records), "tolerance": TOLERANCE, "floor": FLOOR}


def sentences(noise: dict | None) -> list[str]:
    """The report's "Run-to-run noise" paragraph, one sentence per item (empty without a measurement)."""
    if not noise:
        return []
    out = []
    rr = noise.get("rerun")
    if rr:
        diff = rr["max_rel_diff"]
        said = "bit-identical numbers" if diff == 0 else f"numbers at most {diff:.1e} apart (relative)"
        out.append(f"Claims on exact denoisers with fixed seeds are deterministic up to floating-point summation "
                   f"order: rerunning {', '.join(rr['claims'])} with {rr['threads']} CPU thread(s) gave {said} "
                   f"(numbers below {noise['floor']:g} compared absolutely). A fresh run matches these claims' "
                   f"numbers within a relative {noise['tolerance']:g}.")
    t2 = noise.get("table2")
    if t2:
        stds = ", ".join(f"{k} {v:.2g}" for k, v in t2["fid_bootstrap_std"].items())
        out.append(f"edm.table2 trains networks: its FID has a sampling noise of (std over {t2['bootstrap']} "
                   f"bootstrap resamples of the generated images' features) {stds}. Its training is seeded, but "
                   f"CPU kernels make the last bits of the weights depend on the thread count ({t2['threads']} "
                   "here), so on another machine or thread count expect FID to differ by about this noise or "
                   "more.")
    return out
