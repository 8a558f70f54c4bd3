"""Training speed (images/s) of `diffspace train` on a CPU with and without its CPU settings, on an idle machine and
under a competing CPU load.

Settings compared (each run is a fresh process running the real `diffspace train` command line):

- `default`: torch imported before the command runs, so OpenMP keeps its default wait policy (idle threads spin
  for a while before sleeping); torch's default thread count (all cores). This is what the trainer did before it
  set the policy itself.
- `passive`: `diffspace train` as shipped: OMP_WAIT_POLICY=PASSIVE set before torch loads; all cores.
- `passive-1thread`: the same with `--threads 1`.

The competing load is one process per `--load` that spins in a Python busy loop for the whole measurement. The
workload is the `diffspace demo` network on 8×8 digits (DDPM++ U-Net, 32 base channels), batch 32; images/s is
that of the timed tick (every step after the first).

    python benchmarks/train_cpu_settings.py            # writes benchmarks/results/train_cpu_settings.{json,md}
    python benchmarks/train_cpu_settings.py --quick    # a short run of every case; prints the table only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "passive", "passive-1thread")
NET = '{"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_resolutions": []}'
BATCH = 32


def _train_args(outdir: str, steps: int, threads: int | None) -> list[str]:
    kimg_timed = (steps - 1) * BATCH / 1000
    args = ["train", "--data", "digits", "--arch", "ddpmpp-small", "--net-kwargs", NET, "--dropout", "0",
            "--augment", "0", "--batch", str(BATCH), "--duration", str(steps * BATCH / 1e6), "--lr-rampup", "0.001",
            "--tick", str(kimg_timed), "--snap", "0", "--dump", "0", "--sample-every", "0", "--no-progress",
            "--device", "cpu", "--outdir", outdir]
    return args + (["--threads", str(threads)] if threads else [])


def worker(setting: str, outdir: str, steps: int) -> None:
    """Run one training in this process (called in a subprocess by `measure`)."""
    if setting == "default":
        import torch  # noqa: F401  (loads OpenMP before the command can set its wait policy)
    from diffspace.cli import main

    sys.exit(main(_train_args(outdir, steps, 1 if setting == "passive-1thread" else None)))


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(setting: str, steps: int, load: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT"):
        env.pop(name, None)
    hogs = [_busy() for _ in range(load)]
    try:
        time.sleep(0.5 if load else 0)
        load_avg = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            t = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, "--worker", setting, "--worker-out", str(run),
                                "--steps", str(steps)], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise SystemExit(f"{setting}: diffspace train failed:\n{r.stdout}\n{r.stderr}")
            stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
            config = json.loads((run / "config.json").read_text())
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    timed = stats[-1]
    return {"setting": setting, "load": load, "images_per_s": timed["images_per_s"], "timed_steps": steps - 1,
            "threads": config["threads"], "wall_s": round(wall, 1), "loadavg_1min": round(load_avg, 2),
            "loss": timed["loss"]}


def summarise(rows: list[dict], loads) -> list[dict]:
    """Median, min and max images/s per (load, setting), and the median's ratio to the default setting's."""
    import statistics

    summary = []
    for load in loads:
        base = None
        for setting in SETTINGS:
            ips = sorted(r["images_per_s"] for r in rows if r["load"] == load and r["setting"] == setting)
            median = statistics.median(ips)
            base = median if setting == "default" else base
            summary.append({"load": load, "setting": setting, "median_images_per_s": round(median, 1),
                            "min": round(ips[0], 1), "max": round(ips[-1], 1), "speedup": round(median / base, 1)})
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run of every case (CI); prints the table only")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 150; quick 6)")
    p.add_argument("--repeats", type=int, default=None, help="runs per case (default 3; quick 1)")
    p.add_argument("--load", type=int, default=1, help="busy-loop processes of the loaded case (default 1)")
    p.add_argument("--note", default="", help="a sentence about the machine's other load, put into the results")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results; none with --quick)")
    p.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    steps = args.steps or (6 if args.quick else 150)
    if args.worker:
        worker(args.worker, args.worker_out, steps)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    rows = []
    for load in (0, args.load):
        for rep in range(repeats):
            for setting in SETTINGS:  # interleaved, so a change of the machine's other load hits every setting
                row = measure(setting, steps, load)
                row["repeat"] = rep
                rows.append(row)
                print(f"  load {load}  {setting:16s} {row['images_per_s']:8.1f} img/s  (loadavg "
                      f"{row['loadavg_1min']:.2f}, {row['threads']} threads)", flush=True)
    summary = summarise(rows, (0, args.load))
    import torch

    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "processor": cpu_name()}
    lines = ["| competing busy loops | setting | img/s (median) | min | max | vs default |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['load']} | {s['setting']} | {s['median_images_per_s']} | {s['min']} | {s['max']} | "
                     f"{s['speedup']}x |")
    table = "\n".join(lines)
    print(f"\n{table}\n")
    out = args.out or (None if args.quick else str(ROOT / "benchmarks" / "results"))
    if out is None:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "note": args.note, "steps": steps, "repeats": repeats, "batch": BATCH,
              "network": json.loads(NET), "summary": summary, "runs": rows}
    (Path(out) / "train_cpu_settings.json").write_text(json.dumps(result, indent=2) + "\n")
    (Path(out) / "train_cpu_settings.md").write_text(
        f"# diffspace train: CPU settings under load\n\n`python benchmarks/train_cpu_settings.py --steps {steps} "
        f"--repeats {repeats} --load {args.load}` ({steps} steps of {BATCH} per run, the first untimed; {repeats} "
        f"runs per case, median). Machine: {machine['cpu_count']} "
        f"cores ({machine['processor']}), {machine['platform']}, Python {machine['python']}, torch "
        f"{machine['torch']}.\n\n{table}\n\nThe 1-minute load average at the start of each run is in the JSON file "
        f"(`loadavg_1min`). {args.note}\n")
    print(f"wrote {out}/train_cpu_settings.json and .md")


if __name__ == "__main__":
    main()
