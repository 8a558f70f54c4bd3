"""Training-step throughput (images/s) of DDPM++ at 32×32: EDM's CIFAR-10 size and the CPU-sized preset.

One step = EDM loss forward (one σ per image) + backward + gradient sanitising + Adam + EMA update: the same
calls as `diffspace.train.loop`; data loading and augmentation are not included. Each (network, variant) runs in
its own process (so torch.compile caches and allocator state do not carry over) and reports the median over
`--steps` timed steps after `--warmup` untimed ones.

    python benchmarks/train_throughput.py                      # CPU, writes benchmarks/results/train_throughput.*
    python benchmarks/train_throughput.py --device cuda --out benchmarks/results/gpu
    python benchmarks/train_throughput.py --quick               # seconds: small preset, batch 4, no compile;
                                                                # writes to a fresh temp folder unless --out

bf16 runs the network under autocast; the preconditioning casts its output back to float32 (as the training loop
relies on), so no hook is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib.machine import cpu_name

CONFIGS = {"ddpmpp": 8, "ddpmpp-small": 32}  # network preset -> batch size
VARIANTS = ("fp32", "bf16", "channels_last", "compile")
QUICK = {"archs": "ddpmpp-small", "variants": "fp32,bf16,channels_last", "steps": 1, "warmup": 1, "batch": 4}


def measure(arch: str, batch: int, variant: str, steps: int, warmup: int, device: str) -> dict:
    """Time training steps of one network/variant in this process."""
    import torch

    from diffspace.design.precond import EDMPrecond
    from diffspace.nets import build_network, count_parameters
    from diffspace.train.ema import EMA
    from diffspace.train.loss import EDMLoss

    dev = torch.device(device)
    torch.manual_seed(0)
    net = EDMPrecond(build_network(arch, img_resolution=32, img_channels=3), img_resolution=32,
                     img_channels=3).to(dev).train()
    ema = EMA(net, 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    loss_fn = EDMLoss()
    cl = variant in ("channels_last",)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=variant == "bf16")
    fwd = torch.compile(net) if variant == "compile" else net
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1).to(dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        sigma, noise = loss_fn.draw(x, torch.Generator().manual_seed(i))
        with autocast:
            loss = loss_fn(fwd, x, sigma=sigma.to(dev), noise=noise.to(dev))
        (loss.sum() / batch).backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        ema.update(net, batch, 10**7)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync()
    warm = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(warmup + i)
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"arch": arch, "batch": batch, "variant": variant, "status": "ok", "params": count_parameters(net),
            "sec_per_step": med, "images_per_s": batch / med, "min_sec": min(times), "max_sec": max(times),
            "warmup_sec": warm, "steps": steps, "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(CONFIGS), help=f"presets to time (batch sizes: {CONFIGS})")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, help="batch size for every network (default: per preset, see --archs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run in seconds: ddpmpp-small, batch 4, fp32/bf16/channels_last (no compile), "
                         "1 timed step; results go to a new temporary folder unless --out is given")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per (network, variant) before giving up")
    ap.add_argument("--out", help="folder for the JSON/markdown (default: benchmarks/results)")
    ap.add_argument("--note", help="a remark stored with the results (e.g. other load on the machine)")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown (and note) from a results JSON")
    ap.add_argument("--one", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            if key in ("archs", "variants", "steps", "warmup") and f"--{key}" in sys.argv[1:]:
                continue
            if key == "batch" and args.batch is not None:
                continue
            setattr(args, key, value)
        args.out = args.out or tempfile.mkdtemp(prefix="train_throughput_quick_")
    args.out = args.out or str(Path(__file__).parent / "results")

    if args.render:
        data = json.loads(Path(args.render).read_text())
        if args.note:
            data["note"] = args.note
        write(data, Path(args.out))
        return 0

    if args.one:
        arch, variant = args.one
        print(json.dumps(measure(arch, args.batch or CONFIGS[arch], variant, args.steps, args.warmup, args.device)))
        return 0

    import torch

    rows = []
    for arch in args.archs.split(","):
        for variant in args.variants.split(","):
            batch = args.batch or CONFIGS[arch]
            cmd = [sys.executable, __file__, "--one", arch, variant, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--device", args.device, "--batch", str(batch)]
            t = time.time()
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if res.returncode == 0:
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                else:
                    last = (res.stderr.strip().splitlines() or ["?"])[-1]
                    row = {"arch": arch, "batch": batch, "variant": variant, "status": f"failed: {last}"}
            except subprocess.TimeoutExpired:
                row = {"arch": arch, "batch": batch, "variant": variant,
                       "status": f"not run: exceeded {args.timeout:.0f} s"}
            row["wall_sec"] = time.time() - t
            rows.append(row)
            print(json.dumps(row), flush=True)

    machine = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "device": args.device,
               "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
               "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    command = ("python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])).strip()
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    data = {"command": command, "machine": machine, "steps": args.steps, "warmup": args.warmup,
            "note": args.note, "results": rows}
    write(data, Path(args.out))
    failed = [r for r in rows if r["status"] != "ok"]
    return 1 if (args.quick and failed) else 0


def write(data: dict, out: Path) -> None:
    """Write train_throughput.json and train_throughput.md into `out`."""
    m = data["machine"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# Training-step throughput ({m['device']})", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs" + (f", GPU {m['gpu']}" if m["gpu"] else "")
             + f"; torch {m['torch']}, {m['torch_threads']} intra-op thread(s).", "",
             f"Command: `{data['command']}`", "",
             "One step = EDM loss forward + backward + nan_to_num + Adam + EMA (no data loading or augmentation); "
             f"median of {data['steps']} timed steps after {data['warmup']} warm-up step(s), each network/variant "
             "in a fresh process.", ""]
    if data.get("note"):
        lines += [f"Note: {data['note']}", ""]
    lines += ["| network | batch | params | variant | images/s | s/step | warm-up s | status |",
              "|---|---:|---:|---|---:|---:|---:|---|"]
    for r in data["results"]:
        if r["status"] == "ok":
            lines.append(f"| {r['arch']} | {r['batch']} | {r['params'] / 1e6:.1f}M | {r['variant']} | "
                         f"{r['images_per_s']:.2f} | {r['sec_per_step']:.3f} | {r['warmup_sec']:.1f} | ok |")
        else:
            lines.append(f"| {r['arch']} | {r['batch']} | | {r['variant']} | | | | {r['status']} |")
    (out / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
