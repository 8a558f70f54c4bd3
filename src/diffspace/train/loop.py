"""The training loop (EDM's `training_loop`), usable from Python (`train(config)`) and the CLI.

One step on a global batch of B examples, split over W processes and accumulation rounds of `batch_gpu`:

    loss  = Σ_elements λ(σ)(D(y + σn; σ) − y)² / (B/W)   per rank (DDP averages over ranks ⇒ ÷B overall)
    lr    = lr_max · min(cur_nimg / lr_rampup, 1)          (cur_nimg before the step, as in EDM)
    grad  ← nan_to_num(grad, nan=0, posinf=1e5, neginf=−1e5); Adam(β=(0.9, 0.999), ε=1e−8)
    EMA   with half-life `ema` Mimg and ramp-up min(h, 0.05·cur_nimg)

Data order, σ, noise and augmentation depend on (seed, step, position in the global batch) only (see
`diffspace.train.stream`), and a training state holds everything else, so `resume` continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch

from diffspace.errors import ConfigError, DataError, NumericalError
from diffspace.io import checkpoint as ckpt
from diffspace.train import distributed as dist
from diffspace.train.config import IDENTITY_FIELDS, TrainConfig
from diffspace.train.ema import EMA
from diffspace.train.loss import build_loss
from diffspace.train.state import (
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    rng_from_tensors,
    rng_to_tensors,
    unprefixed,
)
from diffspace.train.stream import (
    DROPOUT,
    GLOBAL,
    INIT,
    DataOrder,
    StepRandomness,
    batch_stream,
    derive_seed,
    rank_slices,
)

__all__ = ["train", "find_resume", "merge_resume_config", "TrainConfig"]


class _Arrays:
    """An in-memory dataset (vectors) with a vectorised gather."""

    def __init__(self, x: np.ndarray, labels: np.ndarray | None):
        self.x, self.y = np.ascontiguousarray(x, dtype=np.float32), labels

    def __len__(self) -> int:
        return len(self.x)

    def gather_items(self, idx):
        return self.x[idx], (None if self.y is None else self.y[idx])


# ---------------------------------------------------------------------------------------------------------------
# Resume.

def find_resume(resume: str | Path | None, outdir: str | Path, log=print):
    """Resolve `resume` to (path, tensors, state, config) or None.

    None: fresh run (outdir must not hold training states). 'latest': newest valid state of outdir, or a fresh
    run when there is none. A folder: its newest valid state (error if none). A file: that state.
    """
    def skip(path, message):
        log(f"warning: skipping {path.name}: {message}")

    if resume is None:
        if ckpt.list_checkpoints(outdir, "training-state"):
            raise ConfigError(f"{outdir} already holds a training run: add --resume latest to continue it, "
                              "or choose a new --outdir")
        return None
    if str(resume) == "latest":
        return ckpt.latest_training_state(outdir, on_skip=skip) if Path(outdir).is_dir() else None
    path = Path(resume)
    if path.is_dir():
        found = ckpt.latest_training_state(path, on_skip=skip)
        if found is None:
            raise ConfigError(f"--resume {path}: no valid training-state-*.safetensors in that folder")
        return found
    if not path.exists():
        raise ConfigError(f"--resume {path}: no such file or folder")
    return (path, *ckpt.load_training_state(path))


def merge_resume_config(config: TrainConfig, saved: dict, explicit: set[str] | None = None) -> TrainConfig:
    """Check that the identity options of `config` match the resumed run's.

    `explicit`: the options the user set; the others are taken from the saved configuration (the CLI's case).
    With explicit=None every identity option must match (the Python API's case).
    """
    saved_train = dict(saved.get("train", saved))
    merged = config.to_dict()
    for name in IDENTITY_FIELDS:
        if name not in saved_train:
            continue
        if explicit is not None and name not in explicit:
            merged[name] = saved_train[name]
        elif merged[name] != saved_train[name]:
            raise ConfigError(f"--{name.replace('_', '-')}={merged[name]!r} differs from the resumed run's "
                              f"{saved_train[name]!r}: keep it or start a new run in another --outdir")
    return TrainConfig.from_dict(merged)


# ---------------------------------------------------------------------------------------------------------------
# Set-up helpers.

def _pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return name


def _open_data(cfg: TrainConfig, dataset):
    """(dataset for fetching, is_image, item shape, label_dim, data info)."""
    if dataset is None:
        from diffspace.data import open_dataset

        dataset = open_dataset(cfg.data, resolution=cfg.resolution, transform=cfg.transform,
                               max_size=cfg.max_size, use_labels=cfg.cond, xflip=cfg.xflip)
    if isinstance(dataset, (torch.Tensor, np.ndarray)):  # an array of vectors [N, d]
        dataset = _Arrays(np.asarray(dataset.detach().cpu() if torch.is_tensor(dataset) else dataset), None)
    if len(dataset) == 0:
        raise DataError(f"dataset {cfg.data!r} is empty")
    is_image = bool(getattr(dataset, "is_image", False))
    if not is_image and hasattr(dataset, "items"):  # points: keep them in memory, gather by index
        labels = dataset.labels(0, None) if cfg.cond and hasattr(dataset, "labels") else None
        dataset = _Arrays(dataset.items(0, None), labels)
    from diffspace.train.stream import fetch_batch

    x0, l0 = fetch_batch(dataset, np.array([0]))
    is_image = is_image or (x0.dtype == torch.uint8 and x0.ndim == 4)
    label_dim = 0 if l0 is None else int(l0.shape[1])
    if cfg.cond and label_dim == 0:
        raise ConfigError(f"--cond needs labels but dataset {cfg.data!r} has none: drop --cond")
    if not cfg.cond:
        label_dim = 0
    info = {"name": str(cfg.data), "size": len(dataset), "shape": list(x0.shape[1:]), "is_image": is_image,
            "label_dim": label_dim}
    return dataset, is_image, tuple(x0.shape[1:]), label_dim, info


def _to_float(x: torch.Tensor, is_image: bool) -> torch.Tensor:
    return x.to(torch.float32) / 127.5 - 1 if is_image else x.to(torch.float32)


def _measure_sigma_data(dataset, is_image: bool) -> float:
    """EDM's σ_data: 0.5 for images in [-1, 1]; the per-element std of (up to 10⁴) points otherwise."""
    if is_image:
        return 0.5
    from diffspace.train.stream import fetch_batch

    x, _ = fetch_batch(dataset, np.arange(min(len(dataset), 10_000)))
    return float(x.to(torch.float64).std())


def _build(cfg: TrainConfig, shape, is_image: bool, label_dim: int, augment_dim: int, sigma_data: float):
    from diffspace.design.precond import build_precond
    from diffspace.nets import build_network

    torch.manual_seed(derive_seed(cfg.seed, INIT))  # same initial weights on every rank
    if is_image:
        net = build_network(cfg.arch, img_resolution=shape[1], img_channels=shape[0], label_dim=label_dim,
                            augment_dim=augment_dim, dropout=cfg.dropout, **cfg.net_kwargs)
    else:
        if len(shape) != 1:
            raise DataError(f"data items of shape {list(shape)} are neither images [C,H,W] nor vectors [d]")
        net = build_network(cfg.arch, img_resolution=None, img_channels=shape[0], label_dim=label_dim,
                            augment_dim=augment_dim, dropout=cfg.dropout, **cfg.net_kwargs)
    kwargs = {"sigma_data": sigma_data} if cfg.precond == "edm" else {}
    if is_image:
        kwargs.update(img_resolution=shape[1], img_channels=shape[0])
    return build_precond(cfg.precond, net, label_dim=label_dim, **kwargs)


def _augment_pipe(cfg: TrainConfig, is_image: bool, shape):
    p = cfg.augment if cfg.augment is not None else (0.12 if is_image else 0.0)
    if p == 0:
        return None
    if is_image:
        from diffspace.train.augment import AugmentPipe

        return AugmentPipe(p, **cfg.augment_kwargs)
    if tuple(shape) != (2,):
        raise ConfigError(f"--augment works on images and 2-D points, not on data of shape {list(shape)}: "
                          "use --augment 0")
    from diffspace.train.augment import AugmentPoints2D

    return AugmentPoints2D(p, **{"xflip": 1e8, **cfg.augment_kwargs})


def _peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def _truncate_stats(path: Path, cur_tick: int) -> None:
    """Keep the stats lines of ticks before `cur_tick` (drops lines of a killed run after its last state)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["tick"] < cur_tick:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    ckpt.atomic_write_text(path, "".join(f"{line}\n" for line in keep))


# ---------------------------------------------------------------------------------------------------------------
# The loop.

def train(config: TrainConfig | dict, *, dataset=None, resume: str | Path | None = None, resume_state=None,
          log=None) -> dict:
    """Train a diffusion model; returns a summary dict (outdir, step, cur_nimg, last snapshot/state, loss).

    `dataset`: an opened dataset (or an array of vectors [N, d]) to use instead of opening `config.data`.
    `resume`: None (fresh run), 'latest', a run folder or a training-state file (see `find_resume`);
    `resume_state`: an already loaded (path, tensors, state, config). Launch under torchrun for several
    processes.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    cfg.check()
    log = log or dist.print0
    device = dist.init(_pick_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    outdir = ckpt.ensure_writable_dir(cfg.outdir)

    # Batch split: B = W · rounds · batch_gpu.
    if cfg.batch % world:
        raise ConfigError(f"--batch={cfg.batch} is not divisible by the {world} processes: use a multiple")
    per_rank = cfg.batch // world
    batch_gpu = min(cfg.batch_gpu or per_rank, per_rank)
    if per_rank % batch_gpu:
        raise ConfigError(f"--batch-gpu={batch_gpu} does not divide the per-process batch {per_rank}: "
                          "choose a divisor")
    if cfg.precision == "fp16" and not str(device).startswith("cuda"):
        raise ConfigError("--fp16 needs a CUDA GPU (loss scaling); use --bf16 on CPU")

    found = resume_state if resume_state is not None else find_resume(resume, outdir, log)
    if found is not None:
        cfg = merge_resume_config(cfg, found[3])

    dataset, is_image, shape, label_dim, data_info = _open_data(cfg, dataset)
    sigma_data = cfg.sigma_data or _measure_sigma_data(dataset, is_image)
    pipe = _augment_pipe(cfg, is_image, shape)
    augment_dim = pipe.augment_dim if (pipe is not None and cfg.augment_label) else 0
    net = _build(cfg, shape, is_image, label_dim, augment_dim, sigma_data).to(device)
    net.train().requires_grad_(True)
    loss_fn = build_loss(cfg.precond, **({"sigma_data": sigma_data} if cfg.precond == "edm" else {}),
                         **cfg.loss_kwargs)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    ema = EMA(net, cfg.ema, cfg.ema_rampup)
    net_config = ckpt.network_config(net)
    full_config = {"train": cfg.to_dict(), "network": net_config, "data": data_info, "sigma_data": sigma_data,
                   "loss": repr(loss_fn), "augment": None if pipe is None else dict(pipe.init_kwargs),
                   "world_size": world, "torch": torch.__version__}

    step = cur_nimg = cur_tick = 0
    tick_start_nimg, elapsed = 0, 0.0
    np.random.seed(derive_seed(cfg.seed, GLOBAL, 0) % (1 << 32))  # unused by diffspace; seeded for user hooks
    random.seed(derive_seed(cfg.seed, GLOBAL, 1))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    if found is not None:
        path, tensors, state, _ = found
        net.load_state_dict(unprefixed("net.", tensors))
        ema.load_state_dict(unprefixed("ema.", tensors))
        optimizer_from_tensors(optimizer, tensors, state["optimizer"])
        rng_from_tensors(tensors, state["rng"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step, cur_nimg, cur_tick = state["step"], state["cur_nimg"], state["cur_tick"]
        tick_start_nimg, elapsed = state["tick_start_nimg"], state.get("elapsed", 0.0)
        log(f"Resuming from {path} (step {step}, kimg {cur_nimg / 1e3:.1f})")
        del tensors

    # Training-time wrappers (none of them changes the saved weights' layout).
    if cfg.channels_last and is_image:
        net = net.to(memory_format=torch.channels_last)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    fwd = net
    ddp = None
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        fwd = ddp
    if cfg.compile:
        fwd = torch.compile(fwd)

    if rank == 0:
        for tmp in outdir.glob(".*.tmp"):  # left by a killed run's interrupted writes
            tmp.unlink(missing_ok=True)
        ckpt.atomic_write_text(outdir / "config.json", json.dumps(full_config, indent=2) + "\n")
        _truncate_stats(outdir / "stats.jsonl", cur_tick)
    total_nimg = int(round(cfg.duration * 1e6))
    total_steps = math.ceil(total_nimg / cfg.batch)
    snap_every = cfg.snap
    sample_every = cfg.snap if cfg.sample_every is None else cfg.sample_every
    n_grid = cfg.grid if cfg.grid is not None else (64 if is_image else 1000)
    slices = rank_slices(cfg.batch, world, rank, batch_gpu)
    order = DataOrder(len(dataset), cfg.seed)
    stream = batch_stream(dataset, order, cfg.batch, slices, step, cfg.workers)

    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, leave=True)
    say = bar.write if bar is not None else log
    log(f"Training {type(net.model).__name__} ({sum(p.numel() for p in net.parameters()):,} parameters) on "
        f"{data_info['name']} for {cfg.duration:g} Mimg ({total_steps} steps of {cfg.batch}; {world} process(es), "
        f"{len(slices)} round(s) of {batch_gpu}; {device}, {cfg.precision})")

    last = {"snapshot": None, "state": None, "loss": None}
    tick_loss, tick_count = torch.zeros((), dtype=torch.float64), 0
    tick_start_time = time.time()
    run_start = tick_start_time - elapsed
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    elements_per_example = int(np.prod(shape))
    done = cur_nimg >= total_nimg
    try:
        while not done:
            # Accumulate gradients over this rank's rounds.
            optimizer.zero_grad(set_to_none=True)
            rnd = StepRandomness(cfg.seed, step, cfg.batch, shape, loss_fn, pipe)
            step_loss = torch.zeros((), dtype=torch.float64)
            for k, (lo, hi) in enumerate(slices):
                torch.manual_seed(derive_seed(cfg.seed, DROPOUT, step, rank, k))  # dropout
                x, labels = next(stream)
                x = _to_float(x, is_image).to(device)
                if cfg.channels_last and is_image:
                    x = x.contiguous(memory_format=torch.channels_last)
                labels = None if labels is None else labels.to(device)
                x, aug_labels = rnd.augment(x, lo, hi)
                if not cfg.augment_label:
                    aug_labels = None
                sync = ddp.no_sync() if (ddp is not None and k < len(slices) - 1) else contextlib.nullcontext()
                with sync:
                    with autocast:
                        loss = loss_fn(fwd, x, labels, aug_labels, sigma=rnd.sigma[lo:hi].to(device),
                                       noise=rnd.noise[lo:hi].to(device))
                    scaler.scale(loss.sum() / per_rank).backward()
                step_loss += loss.detach().sum().to("cpu", torch.float64)
            step_loss = dist.all_reduce_sum(step_loss)
            if not torch.isfinite(step_loss):
                good = last["state"] or (ckpt.list_checkpoints(outdir, "training-state") or [None])[0]
                raise NumericalError(f"loss is {float(step_loss)} at step {step} (kimg {cur_nimg / 1e3:.1f}); "
                                     f"last good state: {good or 'none written'}; lower --lr or check the data")

            # Update weights.
            lr = cfg.lr * min(cur_nimg / max(cfg.lr_rampup * 1e6, 1e-8), 1)
            for g in optimizer.param_groups:
                g["lr"] = lr
            scaler.unscale_(optimizer)
            for p in net.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            scaler.step(optimizer)
            scaler.update()
            ema.update(net, cfg.batch, cur_nimg)
            cur_nimg += cfg.batch
            step += 1
            tick_loss += step_loss
            tick_count += cfg.batch * elements_per_example
            if bar is not None:
                bar.update(1)
            done = cur_nimg >= total_nimg
            if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + cfg.tick * 1e3:
                continue

            # Maintenance once per tick: stats, snapshot, state, preview.
            now = time.time()
            tick_sec = now - tick_start_time
            tick_nimg = max(cur_nimg - tick_start_nimg, 1)
            mean_loss = float(tick_loss) / max(tick_count, 1)
            stats = {"tick": cur_tick, "step": step, "kimg": cur_nimg / 1e3, "loss": mean_loss, "lr": lr,
                     "sec_per_tick": tick_sec, "sec_per_kimg": tick_sec / tick_nimg * 1e3,
                     "images_per_s": tick_nimg / max(tick_sec, 1e-9), "peak_mem_gb": _peak_mem_gb(device),
                     "total_sec": now - run_start, "timestamp": now}
            last["loss"] = mean_loss
            if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
                raise NumericalError(f"network weights are NaN/Inf at step {step}: lower --lr; last good state: "
                                     f"{last['state'] or 'none written'}")
            if rank == 0:
                with open(outdir / "stats.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(stats) + "\n")
                line = (f"tick {cur_tick:<5d} kimg {cur_nimg / 1e3:<9.1f} loss {mean_loss:<8.4f} "
                        f"sec/kimg {stats['sec_per_kimg']:<7.3f} img/s {stats['images_per_s']:<8.1f}")
                if bar is not None:
                    bar.set_postfix_str(f"kimg {cur_nimg / 1e3:.1f} loss {mean_loss:.4f}")
                else:
                    say(line)
                info = {"step": step, "kimg": cur_nimg / 1e3, "cur_nimg": cur_nimg, "sigma_data": sigma_data,
                        "data": data_info}
                if done or (snap_every and cur_tick % snap_every == 0):
                    path = outdir / ckpt.snapshot_name("network-snapshot", cur_nimg)
                    ckpt.save_network(path, ema.module, config=net_config, info=info)
                    last["snapshot"] = str(path)
                if done or (cfg.dump and cur_tick % cfg.dump == 0 and cur_tick != 0):
                    last["state"] = str(_save_state(outdir, cfg, net, ema, optimizer, scaler, full_config,
                                                    step, cur_nimg, cur_tick + 1, cur_nimg, now - run_start))
                if sample_every and (done or cur_tick % sample_every == 0):
                    from diffspace.train.preview import save_preview

                    save_preview(ema.module, outdir / f"samples-{cur_nimg // 1000:06d}.png", shape,
                                 is_image=is_image, n=n_grid, steps=cfg.grid_steps, label_dim=label_dim,
                                 device=device, title=f"{data_info['name']} kimg {cur_nimg / 1e3:.1f}")
            dist.barrier()
            cur_tick += 1
            tick_start_nimg, tick_loss, tick_count = cur_nimg, torch.zeros((), dtype=torch.float64), 0
            tick_start_time = time.time()
    finally:
        if bar is not None:
            bar.close()
        del stream
    return {"outdir": str(outdir), "step": step, "cur_nimg": cur_nimg, **last}


def _save_state(outdir: Path, cfg: TrainConfig, net, ema: EMA, optimizer, scaler, full_config: dict, step: int,
                cur_nimg: int, next_tick: int, tick_start_nimg: int, elapsed: float) -> Path:
    """Write training-state-XXXXXX.safetensors: weights, EMA, optimiser, RNG states and counters."""
    tensors = {**prefixed("net.", net.state_dict()), **prefixed("ema.", ema.state_dict())}
    opt_tensors, groups = optimizer_to_tensors(optimizer)
    rng_tensors, rng_info = rng_to_tensors()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    state = {"step": step, "cur_nimg": cur_nimg, "data_position": cur_nimg, "cur_tick": next_tick,
             "tick_start_nimg": tick_start_nimg, "elapsed": elapsed, "optimizer": groups, "rng": rng_info,
             "scaler": scaler.state_dict() if scaler.is_enabled() else None}
    path = outdir / ckpt.snapshot_name("training-state", cur_nimg)
    ckpt.save_training_state(path, tensors, state, full_config)
    return path
