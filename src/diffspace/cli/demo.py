"""`diffspace demo`: the whole pipeline on data that is already on the machine, in about five minutes on 2 CPU cores.

    diffspace demo                      # Fashion-MNIST (or MNIST, else scikit-learn digits) -> demo-out/
    diffspace demo --data digits --minutes 2
    diffspace demo --toy                # every sampler on an exact 2-D mixture (no training)

Steps: pick the data; train a small classifier whose features give a small-data FID/KID; measure how fast this
machine trains and samples and split the time budget accordingly; train a small EDM-preconditioned U-Net with
`diffspace train`'s loop; generate with Heun (18 steps, NFE 35) and with a low-NFE sampler (NFE 10); compare both
with held-out real images. Everything goes into one folder: the run (config, stats, checkpoint), image grids,
metrics.json and a README.md that sums it up.
"""

from __future__ import annotations

import argparse

DATA_CHOICES = ("auto", "fashion-mnist", "mnist", "digits")
# Network per resolution: a DDPM++ U-Net sized for a few minutes of CPU training (EDM's DDPM++, scaled down).
NET_28 = {"model_channels": 16, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_resolutions": []}
NET_8 = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "attn_resolutions": []}
# Small batches: in a short run the number of updates matters most (Fashion-MNIST, 15 kimg, FID of 256 images:
# batch 128 -> 54.9, 64 -> 31.5, 32 -> 25.8; lr 4e-3 gave 24.3 but leaves less margin against divergence).
BATCH, LR = 32, 2e-3
REF_MAX = 2000                 # real images in the FID/KID reference
GRID = 64                      # images per grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outdir", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--data", default="auto", choices=DATA_CHOICES,
                   help="auto: Fashion-MNIST if installed, else MNIST if found, else scikit-learn digits")
    p.add_argument("--minutes", type=float, default=4.5, help="time budget of the whole demo (default 4.5); "
                                                              "training stops when its share is spent")
    p.add_argument("--seed", type=int, default=0, help="seed of training and sampling (default 0)")
    p.add_argument("--fast-sampler", default="dpmpp_2m", help="the low-NFE sampler (default dpmpp_2m)")
    p.add_argument("--fast-steps", type=int, default=10, help="its number of noise levels (default 10: NFE 10)")
    p.add_argument("--kimg", type=float, default=None, help="train on this many thousand images instead of "
                                                            "filling the time budget")
    p.add_argument("--images", type=int, default=None, help="images per sampler for FID/KID (default: what "
                                                            "fits the budget, at most 1000)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --outdir")
    p.add_argument("--toy", action="store_true", help="the 2-D toy demo instead: every sampler vs the exact "
                                                      "answer on a Gaussian mixture")


def pick_data(choice: str) -> str:
    """The dataset the demo uses: the first of Fashion-MNIST, MNIST, digits that is available."""
    from diffspace.data import builtin
    from diffspace.errors import DataError

    if choice != "auto":
        return choice
    for name, find in (("fashion-mnist", builtin.find_fashion_mnist), ("mnist", builtin.find_mnist)):
        try:
            find("train")
            return name
        except DataError:
            continue
    return "digits"


def _clock():
    import resource
    import time

    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


class Phase:
    """Wall and CPU seconds of one step, printed as it ends."""

    def __init__(self, log: dict, name: str):
        self.log, self.name = log, name

    def __enter__(self):
        self.start = _clock()
        print(f"[{self.name}]", flush=True)
        return self

    def __exit__(self, *exc):
        wall, cpu = (b - a for a, b in zip(self.start, _clock()))
        self.log[self.name] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        if exc[0] is None:
            print(f"[{self.name}] {wall:.1f} s (cpu {cpu:.1f} s)", flush=True)


def _load_images(name: str, seed: int):
    """uint8 training images [N, C, H, W] and class indices, and a held-out real set with its class indices (the
    test split when there is one)."""
    import numpy as np

    from diffspace.data import open_dataset
    from diffspace.errors import DataError

    train = open_dataset(name, use_labels=True)
    images, labels = np.asarray(train.images_uint8(0, len(train))), np.asarray(train.class_indices())
    try:
        test = open_dataset(f"{name}:test", use_labels=True)
        held_out, held_labels = np.asarray(test.images_uint8(0, len(test))), np.asarray(test.class_indices())
    except DataError:  # digits: hold out part of the training images for the real-vs-real baseline
        perm = np.random.RandomState(seed).permutation(len(images))
        cut = len(images) // 2
        held_out, held_labels = images[perm[:cut]], labels[perm[:cut]]
        images, labels = images[perm[cut:]], labels[perm[cut:]]
    return images, labels, held_out, held_labels


def _train_seconds_per_image(shape, net_kwargs: dict, batch: int) -> float:
    """Wall seconds per training image of the demo network on this machine (3 timed Adam steps after 1 warm-up)."""
    import time

    import torch

    from diffspace.design.precond import EDMPrecond
    from diffspace.nets import build_network
    from diffspace.train.loss import build_loss

    net = EDMPrecond(build_network("ddpmpp-small", img_resolution=shape[1], img_channels=shape[0], dropout=0.0,
                                   **net_kwargs))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = build_loss("edm")
    y = torch.rand(batch, *shape) * 2 - 1
    times = []
    for _ in range(4):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net, y, generator=torch.Generator().manual_seed(0)).sum().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / 3 / batch


def _sample_seconds_per_nfe(shape, net_kwargs: dict) -> float:
    """Wall seconds per image and denoiser call when generating (untrained network of the same size)."""
    import time

    from diffspace.design.precond import EDMPrecond
    from diffspace.generate import generate
    from diffspace.nets import build_network

    net = EDMPrecond(build_network("ddpmpp-small", img_resolution=shape[1], img_channels=shape[0], **net_kwargs))
    net.eval().requires_grad_(False)
    generate(net, range(16), sampler="euler", steps=1, batch=16)  # warm-up
    t = time.perf_counter()
    out = generate(net, range(64), sampler="edm", steps=3, batch=64)  # the demo's batch and sampler; NFE 5
    return (time.perf_counter() - t) / (64 * out.nfe)


def _plan(budget_s: float, spent_s: float, train_cost: float, nfe_cost: float, nfe_total: int,
          images: int | None, kimg: float | None) -> tuple[float, int]:
    """(training kimg, images per sampler) that fill what is left of the budget: 25% sampling, the rest training,
    with 10% of the remainder and 15 s (metrics, files) held back."""
    left = max(budget_s - spent_s - 15.0, 10.0) * 0.9
    if images is None:
        images = int(0.25 * left / (nfe_total * nfe_cost))
        images = max(128, min(1000, images))
    if kimg is None:
        train_s = max(left - images * nfe_total * nfe_cost, 5.0)
        kimg = train_s / train_cost / 1000
    return kimg, images


def _save_grid(images, path, min_size: int = 256) -> None:
    """A tiled PNG, scaled up by an integer factor (nearest) to at least `min_size` pixels wide."""
    import math

    import PIL.Image

    from diffspace.cli.generate import to_pil
    from diffspace.generate import tile
    from diffspace.io.checkpoint import atomic_write

    img = to_pil(tile(images))
    k = max(1, math.ceil(min_size / img.size[0]))
    img = img.resize((img.size[0] * k, img.size[1] * k), PIL.Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    # Idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads steal the cores the work
    # needs (measured here: 64 ms instead of 12 ms per training image with 2 threads). Only effective before torch
    # is imported, which the CLI does not do before this point.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from diffspace.errors import ConfigError

    outdir = Path(args.outdir)
    if args.toy:
        from diffspace.toydemo import run_toy_demo

        run_toy_demo(outdir, seed=args.seed)
        return 0
    if not args.minutes > 0:
        raise ConfigError(f"--minutes {args.minutes:g} must be > 0")
    if args.kimg is not None and not args.kimg > 0:
        raise ConfigError(f"--kimg {args.kimg:g} must be > 0")
    if args.images is not None and args.images < 2:
        raise ConfigError(f"--images {args.images} must be >= 2 (KID needs two images per set)")
    if args.fast_steps < 1:
        raise ConfigError(f"--fast-steps {args.fast_steps} must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    from diffspace import samplers

    samplers.get(args.fast_sampler)  # unknown names fail here, before any work
    if (outdir / "run").exists() and not args.force:
        raise ConfigError(f"{outdir} already holds a demo: pass --force to replace it, or choose another --outdir")
    return _demo(args, outdir)


def _demo(args, outdir) -> int:
    import json
    import shutil
    import time

    import numpy as np
    import torch

    from diffspace.generate import check_sampler, generate, load
    from diffspace.io.checkpoint import atomic_write_text, ensure_writable_dir
    from diffspace.metrics.fid import fid_from_features
    from diffspace.metrics.kid import kid
    from diffspace.metrics.smallfeat import SmallFeatures, accuracy, save_feature_net, train_feature_net
    from diffspace.train.config import TrainConfig
    from diffspace.train.loop import train

    start = _clock()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    budget = args.minutes * 60
    phases: dict = {}
    name = pick_data(args.data)

    with Phase(phases, "data"):
        images, labels, held_out, held_labels = _load_images(name, args.seed)
        shape = tuple(images.shape[1:])
        net_kwargs = NET_28 if shape[1] >= 16 else NET_8
        rng = np.random.RandomState(args.seed)
        ref = images[rng.choice(len(images), min(REF_MAX, len(images)), replace=False)]
        print(f"{name}: {len(images)} training images {list(shape)}, {len(held_out)} held out; "
              f"{torch.get_num_threads()} CPU threads")
    ensure_writable_dir(outdir)
    if args.force:
        shutil.rmtree(outdir / "run", ignore_errors=True)

    with Phase(phases, "feature network"):
        n_feat = min(len(images), 12_000)
        epochs = max(1, min(15, 12_000 // n_feat))  # about 12k image presentations
        fnet = train_feature_net(images[:n_feat], labels[:n_feat], int(labels.max()) + 1, epochs=epochs, batch=128,
                                 lr=2e-3, seed=args.seed, width=16, feature_dim=64)
        acc = accuracy(fnet, held_out[:2000], held_labels[:2000])
        save_feature_net(fnet, outdir / "features.safetensors", dataset=name, epochs=epochs, num_train=n_feat,
                         test_accuracy=acc)
        print(f"feature network: {n_feat} images x {epochs} epoch(s), held-out accuracy {acc:.3f}")
        ext = SmallFeatures(fnet, torch.device("cpu"), f"smallfeat:{name}", "demo")
        feats_ref = ext(ref).numpy()
        feats_real = ext(held_out[:1000]).numpy()

    with Phase(phases, "calibration"):
        fast_nfe = _nfe(args.fast_sampler, args.fast_steps)
        train_cost = 1.1 * _train_seconds_per_image(shape, net_kwargs, BATCH)  # + data, EMA, bookkeeping
        nfe_cost = _sample_seconds_per_nfe(shape, net_kwargs)
        spent = _clock()[0] - start[0]
        kimg, n_images = _plan(budget, spent, train_cost, nfe_cost, 35 + fast_nfe, args.images, args.kimg)
        # Training's share of the budget is a wall-clock deadline: a machine that gets busier after this
        # calibration trains fewer images instead of overrunning the budget (--kimg: a fixed amount, no deadline).
        train_share = None if args.kimg is not None else kimg * 1000 * train_cost
        print(f"training {train_cost * 1e3:.2f} ms/image, sampling {nfe_cost * 1e3:.2f} ms/image/NFE -> train "
              f"{kimg:.1f} kimg" + ("" if train_share is None else f" (up to {2 * kimg:.1f}) for {train_share:.0f} s")
              + f", {n_images} images per sampler")

    with Phase(phases, "training"):
        # With a deadline the calibrated kimg is only an estimate (short timings overstate the per-image cost):
        # allow twice as much and let the wall clock end training, so the budget is used, not left idle.
        cap = kimg if train_share is None else 2 * kimg
        cfg = TrainConfig(data=name, outdir=str(outdir / "run"), arch="ddpmpp-small", net_kwargs=dict(net_kwargs),
                          batch=BATCH, duration=cap / 1000, lr=LR, lr_rampup=0.002, ema=0.005, dropout=0.0,
                          augment=0.0, seed=args.seed, tick=max(kimg / 10, 0.5), snap=0, dump=0, sample_every=0,
                          device="cpu", progress=True)
        deadline = None if train_share is None else time.time() + train_share
        summary = train(cfg, log=lambda s: None, deadline=deadline)
        net, _ = load(summary["snapshot"])
        print(f"trained {summary['cur_nimg'] / 1e3:.1f} kimg, final loss {summary['loss']:.4f}"
              + (" (stopped at its time share)" if summary["stopped_at_deadline"] else ""))

    seeds = range(args.seed * 100_000, args.seed * 100_000 + n_images)
    rows = []
    mu_real = fid_from_features(feats_real[:n_images], feats_ref)
    kid_real = kid(feats_real[:n_images], feats_ref, num_subsets=50, seed=args.seed)
    rows.append({"sampler": "real (held out)", "steps": None, "nfe": None, "fid": mu_real, "kid": kid_real[0],
                 "kid_std": kid_real[1], "seconds": None})
    for sampler, steps, label in (("edm", 18, "heun"), (args.fast_sampler, args.fast_steps, args.fast_sampler)):
        check_sampler(net, sampler, steps=steps)
        with Phase(phases, f"generate {label}"):
            t = time.perf_counter()
            out = generate(net, seeds, sampler=sampler, steps=steps, batch=64, progress=True)
            secs = time.perf_counter() - t
        feats = ext(out.images.transpose(0, 3, 1, 2)).numpy()
        k = kid(feats, feats_ref, num_subsets=50, seed=args.seed)
        rows.append({"sampler": "edm (Heun)" if sampler == "edm" else sampler, "steps": steps, "nfe": out.nfe,
                     "fid": fid_from_features(feats, feats_ref), "kid": k[0], "kid_std": k[1], "seconds": secs})
        _save_grid(out.images[:GRID], outdir / f"samples-{label}.png")
    _save_grid(held_out[:GRID].transpose(0, 2, 3, 1), outdir / "real.png")

    wall, cpu = (b - a for a, b in zip(start, _clock()))
    table = _table(rows)
    result = {"data": name, "shape": list(shape), "network": {"arch": "ddpmpp-small", **net_kwargs},
              "parameters": sum(p.numel() for p in net.parameters()), "train_kimg": summary["cur_nimg"] / 1e3,
              "final_loss": summary["loss"], "snapshot": str(summary["snapshot"]),
              "reference_images": len(ref), "images_per_sampler": n_images, "metrics": rows, "phases": phases,
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "threads": torch.get_num_threads(),
              "budget_s": budget, "training_share_s": train_share,
              "stopped_at_deadline": bool(summary["stopped_at_deadline"]), "feature_net_accuracy": acc,
              "features": "features.safetensors (small CNN classifier, penultimate layer)"}
    atomic_write_text(outdir / "metrics.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(outdir / "README.md", _readme(result, table, args))
    print(f"\n{name}, {summary['cur_nimg'] / 1e3:.1f} kimg of training; FID/KID of {n_images} images against "
          f"{len(ref)} training images (small-data features):\n{table}")
    print(f"\ntotal {wall:.0f} s wall, {cpu:.0f} s CPU; wrote {outdir}/ (README.md, metrics.json, samples-*.png, "
          "run/)")
    return 0


def _nfe(sampler: str, steps: int) -> int:
    """NFE of a sampler on an edm grid of `steps` levels (+ final 0), from the registry's formula."""
    from diffspace import grids, samplers

    return samplers.get(sampler).nfe(grids.edm(steps))


def _table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"{'sampler':18s} {'steps':>5s} {'NFE':>4s} {'FID':>8s} {'KID':>9s} {'seconds':>8s}"]
    for r in rows:
        lines.append(f"{r['sampler']:18s} {fmt(r['steps'], 'd'):>5s} {fmt(r['nfe'], 'd'):>4s} {r['fid']:8.2f} "
                     f"{r['kid']:9.4f} {fmt(r['seconds'], '.1f'):>8s}")
    return "\n".join(lines)


def _readme(result: dict, table: str, args) -> str:
    fast = args.fast_sampler
    return f"""# diffspace demo

Data: **{result['data']}** {result['shape']}; network: DDPM++ U-Net ({result['parameters']:,} parameters, EDM
preconditioning and loss), trained on {result['train_kimg']:.1f} thousand images (final loss
{result['final_loss']:.4f}). Total time {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU, {result['threads']}
threads.

FID and KID use the features of a small CNN classifier trained on the same data (`features.safetensors`, held-out
accuracy {result['feature_net_accuracy']:.3f}), with {result['reference_images']} training images as reference and
{result['images_per_sampler']} images per row; the first row compares held-out real images: the floor at this
sample size.

```
{table}
```

| real (held out) | Heun, 18 steps (NFE 35) | {fast}, {args.fast_steps} steps |
|---|---|---|
| ![real](real.png) | ![heun](samples-heun.png) | ![{fast}](samples-{fast}.png) |

More images from the same network:

    diffspace generate --network {result['snapshot']} --outdir images --seeds 0-63
    diffspace generate --network {result['snapshot']} --grid grid.png --sampler {fast} --steps {args.fast_steps}

`metrics.json` holds these numbers and the time of every step; `run/` the training run (config, stats, checkpoint).
"""
