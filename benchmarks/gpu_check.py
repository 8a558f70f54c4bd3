"""One prepared check of every CUDA path of diffspace, sized to finish in about 8 minutes on one H100/H200.

    bash scripts/gpu-check.sh                      # on a machine with a CUDA GPU and a CUDA build of torch
    bash scripts/gpu-check.sh --cpu                # the CPU-safe parts, tiny sizes, about a minute (CI runs it)
    python benchmarks/gpu_check.py --quick         # the same as --cpu (every benchmark has a --quick mode)

Parts (each one is reported as ok / failed / skipped with the reason, so one failure does not hide the rest):

  a. `diffspace train` of DDPM++ at EDM's CIFAR-10 width (`--arch ddpmpp`, 55.7M parameters) on random 32×32
     images for a few hundred steps in fp32, bf16 and fp16 (loss scaling), with and without `--compile`:
     images/s after the first tick, the loss finite throughout and at the end at least 10 % below the start
     (the random images are smooth, so there is something to learn; with --cpu only finiteness is required).
  b. the same with torchrun and nccl on every GPU when there are several (1 process is part a).
  c. `diffspace generate` of 256 images with heun and dpmpp_2m from the part-a fp32 snapshot; the per-seed
     guarantee on the GPU: one batch of 16 against batches of 5, 5, 6 (same micro-batch): images and float64
     states compared bit for bit.
  d. GPU against CPU: one forward of the network (float32; with TF32 off, and with torch's default) and one
     sampler run (Heun, 18 steps) with the exact float64 mixture denoiser `gmm64` and with the network.
  e. Inception features of 64 generated images on the GPU and on the CPU (needs the Inception detector file).
  f. sampler overhead with a near-free denoiser on the GPU, ours against k-diffusion's loop when installed.

With --cpu every part runs on the CPU at tiny sizes (the "GPU" side is the CPU too, so the comparisons only
exercise the code); fp16, compile and nccl are skipped there. Writes gpu_check.json and gpu_check.md into
--outdir (default benchmarks/results/gpu; with --cpu/--quick a new temporary folder unless --outdir is given).
Exit status 1 when a part failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = dict(arch="ddpmpp", cbase=None, res=32, batch=128, steps=200, gen=256, gen_batch=64, gen_steps=(18, 10),
            seeds=16, seed_steps=10, agree_steps=18, inception=64, overhead_steps=200, require_decrease=True)
TINY = dict(arch="ddpmpp-small", cbase=8, res=16, batch=8, steps=12, gen=4, gen_batch=2, gen_steps=(4, 4),
            seeds=6, seed_steps=3, agree_steps=4, inception=2, overhead_steps=20, require_decrease=False)
# Tolerances of part d (max |GPU - CPU| / max |CPU|): float32 networks with TF32 off differ only by summation
# order (~1e-6 per layer over ~40 layers); TF32 rounds products to 10 mantissa bits (~5e-4 each).
TOL = {"forward_fp32": 1e-4, "forward_tf32": 2e-2, "sampler_exact_float64": 1e-10, "sampler_network_fp32": 1e-2,
       "inception_fp32": 1e-3}


class Check:
    """Runs parts in order within a time budget and records what each one found."""

    def __init__(self, budget: float):
        self.t0, self.budget, self.parts = time.time(), budget, {}

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def run(self, name: str, fn, *args, need: float = 0.0, **kwargs) -> dict | None:
        if self.left() < need:
            self.parts[name] = {"status": f"skipped: time budget ({self.left():.0f} s left, needs ~{need:.0f} s)"}
        else:
            t = time.time()
            try:
                self.parts[name] = {"status": "ok", **fn(*args, **kwargs)}
            except Skip as e:
                self.parts[name] = {"status": f"skipped: {e}"}
            except subprocess.TimeoutExpired as e:
                self.parts[name] = {"status": f"not finished: stopped after {e.timeout:.0f} s (time budget or cap)"}
            except Exception as e:  # noqa: BLE001 - a part's failure is a result, not the end of the check
                last = (str(e).strip().splitlines() or [""])[-1]
                self.parts[name] = {"status": f"failed: {type(e).__name__}: {last}"}
            self.parts[name]["seconds"] = round(time.time() - t, 1)
        print(f"[{time.time() - self.t0:6.0f} s] {name}: {json.dumps(self.parts[name])}", flush=True)
        return self.parts[name]


class Skip(Exception):
    pass


def _cmd(args: list[str], timeout: float, env: dict | None = None) -> str:
    res = subprocess.run(args, capture_output=True, text=True, timeout=max(timeout, 1), env=env)
    if res.returncode != 0:
        raise RuntimeError((res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").splitlines()[-1])
    return res.stdout


def random_data(path: Path, n: int, res: int) -> Path:
    """n random smooth images: 4×4×3 uniform noise upsampled bilinearly (i.i.d. pixel noise would leave the
    network almost nothing to learn beyond what the preconditioning already gives, so the loss would not move)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    images = ((x * 127.5 + 128).clamp(0, 255).to(torch.uint8)).permute(0, 2, 3, 1).numpy()
    np.savez(path, images=np.ascontiguousarray(images))
    return path


def train(work: Path, cfg: dict, device: str, precision: str, compile_: bool, timeout: float, nproc: int = 1) -> dict:
    """`diffspace train` in a subprocess; img/s after tick 0 and the loss per tick from stats.jsonl."""
    out = work / f"train-{precision}{'-compile' if compile_ else ''}{f'-np{nproc}' if nproc > 1 else ''}"
    nimg = cfg["steps"] * cfg["batch"]
    args = ["--data", str(work / "data.npz"), "--arch", cfg["arch"], "--batch", str(cfg["batch"]),
            "--duration", f"{nimg / 1e6:.8f}", "--lr-rampup", "0.0001", "--augment", "0",
            "--tick", f"{nimg / 5 / 1e3:.6f}", "--snap", "0", "--dump", "0", "--sample-every", "0", "--no-progress",
            "--outdir", str(out), "--device", device]
    args += ["--cbase", str(cfg["cbase"])] if cfg["cbase"] else []
    args += {"bf16": ["--bf16"], "fp16": ["--fp16"]}.get(precision, []) + (["--compile"] if compile_ else [])
    launcher = [sys.executable, "-m", "diffspace", "train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "diffspace", "train"]
    t = time.time()
    _cmd(launcher + args, timeout)
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in stats]
    rate = [s["images_per_s"] for s in stats[1:]] or [stats[-1]["images_per_s"]]
    finite = all(math.isfinite(v) for v in losses)
    if not finite or (cfg["require_decrease"] and not losses[-1] < 0.9 * losses[0]):
        raise RuntimeError(f"loss per tick {[round(v, 4) for v in losses]}: not finite and decreasing by 10 %")
    return {"run": str(out), "steps": cfg["steps"], "batch": cfg["batch"], "processes": nproc,
            "images_per_s": round(sorted(rate)[len(rate) // 2], 1), "first_tick_s": round(stats[0]["sec_per_tick"], 1),
            "loss_per_tick": [round(v, 4) for v in losses], "peak_mem_gb": stats[-1].get("peak_mem_gb"),
            "wall_s": round(time.time() - t, 1)}


def generate_cli(work: Path, run: str, sampler: str, steps: int, n: int, batch: int, device: str,
                 timeout: float) -> dict:
    out = work / f"gen-{sampler}"
    t = time.time()
    _cmd([sys.executable, "-m", "diffspace", "generate", "--network", run, "--seeds", f"0-{n - 1}", "--batch",
          str(batch), "--sampler", sampler, "--steps", str(steps), "--outdir", str(out), "--device", device,
          "--no-progress"], timeout)
    files = sorted(out.glob("*.png"))
    if len(files) != n:
        raise RuntimeError(f"{len(files)} PNGs written, expected {n}")
    wall = time.time() - t
    return {"images": n, "outdir": str(out), "wall_s": round(wall, 1), "images_per_s_incl_startup": round(n / wall, 1)}


def per_seed(run: str, device: str, n: int, steps: int) -> dict:
    """A seed's result must not depend on the batch it is in (fixed micro-batch, per-seed generators)."""
    import numpy as np
    import torch

    from diffspace.generate import MicroBatched, generate, load, sample

    net, _ = load(run, device=device)
    seeds, m, k = list(range(n)), n // 2, n // 3
    one = generate(net, seeds, sampler="heun", steps=steps, batch=n, device=device, micro_batch=m).images
    split = generate(net, seeds, sampler="heun", steps=steps, batch=k, device=device, micro_batch=m).images
    model = MicroBatched(net, m)
    x1, _ = sample(net, seeds, sampler="dpmpp_2m", steps=steps, device=device, model=model)
    x2 = torch.cat([sample(net, seeds[a:a + k], sampler="dpmpp_2m", steps=steps, device=device, model=model)[0]
                    for a in range(0, n, k)])
    other = generate(net, seeds, sampler="heun", steps=steps, batch=n, device=device, micro_batch=n).images
    state_diff = float((x1 - x2).abs().max())
    if not np.array_equal(one, split) or state_diff != 0:
        raise RuntimeError(f"batch {n} vs {k}: images equal {np.array_equal(one, split)}, state diff {state_diff}")
    return {"seeds": n, "batches": [n, k], "micro_batch": m, "images_bit_exact": True,
            "float64_state_max_diff": state_diff,
            "why": "the network always sees micro-batches of the same size (the last one padded) and each seed has "
                   "its own generator, so the same kernels run on the same numbers whatever the batch",
            "images_differing_with_another_micro_batch": int((one != other).any(axis=(1, 2, 3)).sum())}


def agreement(device: str, cfg: dict) -> dict:
    """GPU vs CPU: one network forward (TF32 off and torch's default) and Heun runs."""
    import torch

    from diffspace import grids, samplers
    from diffspace.design.precond import EDMPrecond
    from diffspace.nets import build_network
    from diffspace.samplers import problems

    def rel(a, b, scale=None):
        scale = b.double().abs().max() if scale is None else scale
        return float((a.cpu().double() - b.double()).abs().max() / scale)

    torch.manual_seed(0)
    kw = {"model_channels": cfg["cbase"]} if cfg["cbase"] else {}
    r = cfg["res"]
    net = EDMPrecond(build_network(cfg["arch"], img_resolution=r, img_channels=3, dropout=0.0, **kw),
                     img_resolution=r, img_channels=3).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # EDM zero-initialises some layers (the output among them): F would be 0 on both sides
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    x = torch.randn(8, 3, r, r, generator=torch.Generator().manual_seed(1)) * 2
    sigma = torch.tensor([0.002, 0.02, 0.2, 0.5, 1.0, 5.0, 20.0, 80.0])
    with torch.no_grad():
        ref = net(x, sigma)
        # Forward differences relative to the network's part c_out·F of D = c_skip·x + c_out·F (c_skip·x is exact).
        c_skip = net.sigma_data**2 / (sigma**2 + net.sigma_data**2)
        f_scale = float((ref - c_skip.reshape(-1, 1, 1, 1) * x).abs().max())
        gnet = net.to(device)
        res = {}
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            res["forward_fp32"] = rel(gnet(x.to(device), sigma.to(device)), ref, f_scale)
            sig = grids.edm(cfg["agree_steps"])
            x0 = samplers.StackedRandom(range(4)).randn([3, r, r], dtype=torch.float64) * sig[0]
            res["sampler_network_fp32"] = rel(samplers.heun(gnet, x0.to(device), sig.to(device)),
                                              samplers.heun(net.cpu(), x0, sig))
            gnet = net.to(device)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
            res["forward_tf32"] = rel(gnet(x.to(device), sigma.to(device)), net.cpu()(x, sigma), f_scale)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        problem = problems.get("gmm64")
        sig = grids.edm(18)
        z = samplers.StackedRandom(range(64)).randn(problem.shape, dtype=torch.float64) * sig[0]
        res["sampler_exact_float64"] = rel(samplers.heun(problem.denoiser, z.to(device), sig.to(device)),
                                           samplers.heun(problem.denoiser, z, sig))
    bad = {k: v for k, v in res.items() if not v <= TOL[k]}
    if bad:
        raise RuntimeError(f"over tolerance: {bad} (tolerances {TOL})")
    return {"max_rel_diff": res, "tolerance": {k: TOL[k] for k in res},
            "notes": "forward: max |GPU - CPU| / max |c_out·F| (the network's part of D); samplers: relative to "
                     "max |result|; TF32 is torch's default for cuDNN convolutions"}


def inception(gen_dir: str, n: int, device: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from diffspace.errors import CheckpointError
    from diffspace.metrics.features import load_inception

    files = sorted(Path(gen_dir).glob("*.png"))[:n]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).transpose(0, 3, 1, 2)
    try:
        cpu = load_inception(device="cpu")
    except CheckpointError as e:
        raise Skip(f"no Inception detector ({str(e)[:120]}…)") from None
    t = time.time()
    ref = cpu(images)
    t_cpu = time.time() - t
    dev = load_inception(device=device)
    dev(images[:2])
    t = time.time()
    got_default = dev(images).cpu()  # what `diffspace fid` computes on a GPU (torch's default TF32 convolutions)
    t_dev = time.time() - t
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        got = dev(images).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    diff = float((got - ref).abs().max() / ref.abs().max())
    diff_default = float((got_default - ref).abs().max() / ref.abs().max())
    if not (diff <= TOL["inception_fp32"] and diff_default <= TOL["forward_tf32"]):
        raise RuntimeError(f"features differ by {diff:.2e} (TF32 off; tolerance {TOL['inception_fp32']}) and "
                           f"{diff_default:.2e} (default; tolerance {TOL['forward_tf32']}), relative to the largest")
    return {"images": len(files), "max_rel_diff_tf32_off": diff, "max_rel_diff_default": diff_default,
            "tolerance": {"tf32_off": TOL["inception_fp32"], "default": TOL["forward_tf32"]},
            "cpu_images_per_s": round(len(files) / t_cpu, 1), "device_images_per_s": round(len(files) / t_dev, 1)}


def overhead(device: str, steps: int) -> dict:
    """Time per sampler step with D(x; σ) = x / (1 + σ²) (a few elementwise kernels): the loop's own cost."""
    import torch

    from diffspace import grids, samplers

    def D(x, sigma, **_):
        return x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)

    x = torch.randn(64, 3, 32, 32, dtype=torch.float64, device=device) * 80
    sig = grids.edm(steps).to(device)
    ours = {name: samplers.get(name) for name in ("euler", "heun", "dpmpp_2m")}
    theirs = {}
    try:
        sys.path.insert(0, str(HERE))
        from compare_k_diffusion import load_k_sampling

        ks = load_k_sampling()
        theirs = {"euler": ks.sample_euler, "heun": ks.sample_heun, "dpmpp_2m": ks.sample_dpmpp_2m}
    except (SystemExit, ImportError) as e:
        theirs_note = f"k-diffusion not available: {e}"
    else:
        theirs_note = "k-diffusion installed"

    def per_step(fn, **kw) -> float:
        fn(D, x, sig, **kw)
        best = math.inf
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(D, x, sig, **kw)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return round(best / steps * 1e6, 1)

    rows = {name: {"ours_us_per_step": per_step(fn)} for name, fn in ours.items()}
    for name, fn in theirs.items():
        rows[name]["k_diffusion_us_per_step"] = per_step(fn, disable=True)
    return {"batch": "64x3x32x32 float64", "steps": steps, "samplers": rows, "k_diffusion": theirs_note}


def environment(device: str) -> dict:
    import torch

    import diffspace

    info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "diffspace": diffspace.__version__,
            "python": platform.python_version(), "machine": platform.platform(), "cpus": os.cpu_count(),
            "device": device, "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = _cmd(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 30).split()[0]
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            info["driver"] = "unknown (nvidia-smi not available)"
    try:
        info["git_commit"] = _cmd(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], 10).strip()
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="CPU-safe parts only, tiny sizes (CI)")
    ap.add_argument("--quick", action="store_true", help="the same as --cpu")
    ap.add_argument("--outdir", help="folder for gpu_check.json/.md (default benchmarks/results/gpu)")
    ap.add_argument("--budget", type=float, default=480, help="seconds for all parts (default 480)")
    ap.add_argument("--steps", type=int, help="training steps per run (default 200; --cpu 12)")
    args = ap.parse_args()
    cpu = args.cpu or args.quick
    cfg = dict(TINY if cpu else FULL)
    if args.steps:
        cfg["steps"] = args.steps
    import torch

    if not cpu and not torch.cuda.is_available():
        print(f"gpu_check: error: torch {torch.__version__} sees no CUDA GPU; run with --cpu, or install a CUDA "
              "build of torch", file=sys.stderr)
        return 2
    device = "cpu" if cpu else "cuda"
    outdir = Path(args.outdir) if args.outdir else (Path(tempfile.mkdtemp(prefix="gpu_check_")) if cpu
                                                      else HERE / "results" / "gpu")
    work = Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    random_data(work / "data.npz", 256 if cpu else 4096, cfg["res"])
    if cpu:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the train/generate subprocesses
        torch.set_num_threads(1)  # tiny tensors: one thread, and no spinning OpenMP threads on a busy CI machine
    check = Check(args.budget)
    env = environment(device)
    print(json.dumps(env), flush=True)
    cap = 600 if cpu else 150  # seconds for one training run (compile runs get twice that; CI machines are slow)
    check.run("d. gpu vs cpu agreement", agreement, device, cfg, need=10)
    runs = {}
    for prec in ("fp32", "bf16", "fp16"):
        name = f"a. train {prec}"
        if prec == "fp16" and cpu:
            check.parts[name] = {"status": "skipped: fp16 loss scaling is CUDA-only"}
            continue
        runs[prec] = check.run(name, train, work, cfg, device, prec, False, min(cap, check.left()), need=30)
    fp32_run = str(work / "train-fp32") if list((work / "train-fp32").glob("network-snapshot-*")) else None
    gen_dir = None
    for sampler, steps in zip(("heun", "dpmpp_2m"), cfg["gen_steps"]):
        name = f"c. generate {cfg['gen']} images, {sampler}"
        if fp32_run is None:
            check.parts[name] = {"status": "skipped: no fp32 snapshot from part a"}
            continue
        r = check.run(name, generate_cli, work, fp32_run, sampler, steps, cfg["gen"], cfg["gen_batch"], device,
                      min(120, check.left()), need=15)
        gen_dir = gen_dir or r.get("outdir")
    if fp32_run:
        check.run("c. per-seed guarantee between batch sizes", per_seed, fp32_run, device, cfg["seeds"],
                  cfg["seed_steps"], need=10)
    if gen_dir:
        check.run("e. inception gpu vs cpu", inception, gen_dir, cfg["inception"], device, need=30)
    check.run("f. sampler overhead, near-free denoiser", overhead, device, cfg["overhead_steps"], need=10)
    gpus = env["gpus"]
    if cpu:
        check.parts["b. torchrun nccl"] = {"status": "skipped: --cpu (gloo DDP is covered by tests/train/test_ddp.py)"}
    elif gpus < 2:
        check.parts["b. torchrun nccl"] = {"status": f"skipped: {gpus} GPU (1 process is part a)"}
    else:
        check.run("b. torchrun nccl", train, work, cfg, device, "bf16", False, min(cap, check.left()), gpus, need=40)
    for prec in ("fp32", "bf16", "fp16"):
        name = f"a. train {prec} --compile"
        if cpu:
            check.parts[name] = {"status": "skipped: --cpu (compiling takes minutes on a CPU)"}
            continue
        check.run(name, train, work, cfg, device, prec, True, min(2 * cap, check.left()), need=60)
    command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
    data = {"command": command.strip(), "environment": env, "sizes": cfg, "tolerances": TOL,
            "total_s": round(time.time() - check.t0, 1), "parts": check.parts}
    write(data, outdir)
    failed = [k for k, v in check.parts.items() if v["status"].startswith("failed")]
    print(f"wrote {outdir}/gpu_check.json and .md; {len(failed)} part(s) failed", flush=True)
    return 1 if failed else 0


def write(data: dict, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "gpu_check.json").write_text(json.dumps(data, indent=1) + "\n")
    e = data["environment"]
    lines = ["# diffspace GPU check", "",
             f"Device: {e.get('gpu', 'CPU only')} (driver {e.get('driver', '-')}, {e['gpus']} GPU(s)); torch "
             f"{e['torch']} (CUDA {e['cuda_runtime']}); diffspace {e['diffspace']} ({e['git_commit']}); "
             f"Python {e['python']}; {e['cpus']} CPUs.", "", f"Command: `{data['command']}`; {data['total_s']} s.", "",
             "| part | status | seconds | result |", "|---|---|---:|---|"]
    for name, part in data["parts"].items():
        rest = {k: v for k, v in part.items() if k not in ("status", "seconds", "run", "outdir")}
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', '')} | "
                     f"{json.dumps(rest).replace('|', '/') if rest else ''} |")
    (outdir / "gpu_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
