"""Speed of the optimal denoiser `denoisers.Empirical` against the machine's matrix-product rate.

Data: K × 784 uniform in [−1, 1] (MNIST's shape; 60 000 rows by default), B = 64 queries (data points plus
noise at σ = 0.5). Each round times, side by side in the same process:

    mm64        one float64 torch.mm of the shape [B, 784] × [784, K] (the reference rate)
    mm32        the same product in float32
    plain64     a plain float64 softmax-matmul: logits from ‖x‖² − 2x·y + ‖y‖², softmax, then × data
    Empirical   float64 data and queries; float32 data and queries (returns float32)

Empirical does two products of that shape (x·Yᵀ and P·Y), so its rate is 2·(2BKd)/time and its share of
the mm64 rate is 2·t_mm64/t_Empirical (target: at least 50 %). Ratios are taken per round (the machine may be
shared) and the median over rounds is reported, with the largest difference from the plain implementation.

    python benchmarks/empirical_speed.py            # 60 000 × 784, 7 rounds
    python benchmarks/empirical_speed.py --quick    # 10 000 × 784, 3 rounds (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from lib.machine import cpu_name


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 000 data points, 3 rounds")
    parser.add_argument("--n", type=int, default=None, help="data points (default 60000, 10000 with --quick)")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, 3 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results path without suffix: PATH.json and PATH.md (default: empirical_speed.json and "
                             ".md in benchmarks/results/; --quick writes nothing unless --out is given)")
    args = parser.parse_args(argv)

    import torch

    from diffspace.denoisers import Empirical

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (10_000 if args.quick else 60_000)
    rounds = args.rounds or (3 if args.quick else 7)
    B, d, sigma = args.queries, 784, 0.5
    g = torch.Generator().manual_seed(0)
    data32 = torch.rand(n, d, generator=g) * 2 - 1
    data64 = data32.double()
    x64 = data64[:B] + sigma * torch.randn(B, d, generator=g, dtype=torch.float64)
    x32 = x64.float()
    y64_t, y32_t = data64.T, data32.T
    emp64, emp32 = Empirical(data64), Empirical(data32)
    half_sq = 0.5 * (data64**2).sum(1)

    def plain64():
        logits = (x64 @ y64_t - half_sq) / sigma**2  # ‖x‖² is constant per row: it drops out of the softmax
        return torch.softmax(logits, dim=1) @ data64

    methods = {
        "mm64": lambda: torch.mm(x64, y64_t),
        "mm32": lambda: torch.mm(x32, y32_t),
        "plain64": plain64,
        "Empirical (float64 data, float64 x)": lambda: emp64(x64, sigma),
        "Empirical (float32 data, float32 x)": lambda: emp32(x32, sigma),
    }
    for fn in methods.values():  # warm-up
        fn()
    times = {name: [] for name in methods}
    outputs = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            t, outputs[name] = _timed(fn)
            times[name].append(t)
    reference = outputs["plain64"]
    flops_mm = 2 * B * n * d
    rows = []
    for name, ts in times.items():
        two_products = name.startswith(("Empirical", "plain"))
        share = [(2 if two_products else 1) * tm / t for tm, t in zip(times["mm64"], ts)]  # paired per round
        diff = None
        if two_products:
            diff = float((outputs[name].double() - reference).abs().max())
        rows.append({"method": name, "median_s": statistics.median(ts), "min_s": min(ts),
                     "gflops": (2 if two_products else 1) * flops_mm / statistics.median(ts) / 1e9,
                     "share_of_mm64_rate": statistics.median(share), "max_abs_diff_vs_plain64": diff})
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
               "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    header = (f"Empirical on {n} x {d} data, {B} queries, sigma {sigma}; {rounds} rounds; "
              f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
              f"({machine['torch_threads']} threads)")
    lines = [header, "", f"{'method':38s} {'median s':>9s} {'min s':>9s} {'GFLOP/s':>8s} {'share of mm64 rate':>19s} "
             f"{'max |diff| vs plain64':>22s}"]
    for r in rows:
        diff = "-" if r["max_abs_diff_vs_plain64"] is None else f"{r['max_abs_diff_vs_plain64']:.2e}"
        lines.append(f"{r['method']:38s} {r['median_s']:9.4f} {r['min_s']:9.4f} {r['gflops']:8.2f} "
                     f"{100 * r['share_of_mm64_rate']:18.0f}% {diff:>22s}")
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/empirical_speed.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    info = {"command": command, "n": n, "d": d, "queries": B, "sigma": sigma, "rounds": rounds, "machine": machine,
            "rows": rows}
    out = args.out or (None if args.quick else Path(__file__).parent / "results" / "empirical_speed")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
        out.with_suffix(".md").write_text(f"```\n{command}\n\n{table}\n```\n")
        print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
