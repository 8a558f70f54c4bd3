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
import dataclasses
import json
import math
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffspace.errors import CheckpointError, ConfigError, DiffspaceError, NumericalError
from diffspace.io import checkpoint as ckpt
from diffspace.train import distributed as dist
from diffspace.train import setup
from diffspace.train.config import IDENTITY_FIELDS, TrainConfig
from diffspace.train.ema import EMA
from diffspace.train.loss import build_loss
from diffspace.train.runfolder import (
    RunLock,
    RunLog,
    check_tensors_fit,
    find_resume,
    numbered_run_dir,
    run_description,
    run_files,
)
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
    DataOrder,
    StepRandomness,
    batch_stream,
    derive_seed,
    rank_slices,
)

__all__ = ["train", "find_resume", "merge_resume_config", "TrainConfig"]


# ---------------------------------------------------------------------------------------------------------------
# Resume.

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
# The loop.

def train(config: TrainConfig | dict, *, dataset=None, resume: str | Path | None = None, resume_state=None,
          log=None, deadline: float | None = None, dry_run: bool = False, command: list[str] | None = None) -> dict:
    """Train a diffusion model; returns a summary dict (outdir, step, cur_nimg, last snapshot/state, loss).

    `dataset`: an opened dataset (or an array of vectors [N, d]) to use instead of opening `config.data`.
    `resume`: None (fresh run), 'latest', a run folder or a training-state file (see `find_resume`);
    `resume_state`: an already loaded (path, tensors, state, config). `deadline`: a `time.time()` value at which
    training stops as if its duration were reached (final snapshot and state written). `dry_run`: print the
    resolved options and the network size and return without writing anything. `command`: the command line to
    record in config.json (default sys.argv). Launch under torchrun for several processes.

    Everything is checked (options, data, network, resume state) before the run folder is created; the folder
    is locked for the run (see `diffspace.train.runfolder`) and `log.txt` in it receives what is printed.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    cfg.check()
    device = dist.init(setup.pick_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    runlog = RunLog(log or dist.print0)
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.bench)

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
    if cfg.subdir and (resume is not None or resume_state is not None):
        raise ConfigError("--subdir starts a new numbered run folder: to continue a run, pass --resume with its "
                          "folder and drop --subdir")

    if cfg.transfer:
        cfg = dataclasses.replace(cfg, ema_rampup=None)  # as EDM: the EMA starts from the transferred weights
    known = {p.name for p in ckpt.list_checkpoints(cfg.outdir)}  # states present before this run
    found = resume_state if resume_state is not None else find_resume(resume, cfg.outdir, runlog)
    if found is not None:
        cfg = merge_resume_config(cfg, found[3])
    transfer = None
    if cfg.transfer and found is None:
        transfer = setup.load_transfer(cfg.transfer)

    dataset, is_image, shape, label_dim, data_info = setup.open_data(cfg, dataset)
    sigma_data = cfg.sigma_data or setup.measure_sigma_data(dataset, is_image)
    pipe = setup.augment_pipe(cfg, is_image, shape)
    augment_dim = pipe.augment_dim if (pipe is not None and cfg.augment_label) else 0
    net = setup.build(cfg, shape, is_image, label_dim, augment_dim, sigma_data).to(device)
    net.train().requires_grad_(True)
    net_config = ckpt.network_config(net)
    if found is not None:
        check_tensors_fit(found[0], found[1], net, found[3], net_config)
    transferred = None if transfer is None else setup.apply_transfer(net, transfer, cfg.transfer)
    n_params = sum(p.numel() for p in net.parameters())
    if dry_run:
        return _dry_run(cfg, runlog, world, net, n_params, data_info, found, transferred)

    outdir, lock, created = _claim_folder(cfg, world, resume, found, known, runlog)
    cfg = dataclasses.replace(cfg, outdir=str(outdir), subdir=False)
    ok = False
    try:
        if rank == 0:
            runlog.open(outdir / "log.txt")
        if transferred:
            runlog(transferred)
        summary = _loop(cfg, device, rank, world, outdir, runlog, dataset, is_image, shape, label_dim, data_info,
                        sigma_data, pipe, net, net_config, found, per_rank, batch_gpu, deadline, command)
        ok = True
        return summary
    except DiffspaceError as e:
        runlog.to_file(f"error: {e}")
        raise
    finally:
        runlog.close()
        if not ok and created is not None and lock is not None and not _checkpoints(outdir):
            shutil.rmtree(created, ignore_errors=True)  # nothing of value was written: leave no folder behind
        if lock is not None:
            lock.release()


def _checkpoints(folder: Path) -> list[Path]:
    return ckpt.list_checkpoints(folder, "training-state") + ckpt.list_checkpoints(folder, "network-snapshot")


def _dry_run(cfg, runlog, world, net, n_params, data_info, found, transferred) -> dict:
    outdir = Path(cfg.outdir)
    if cfg.subdir:
        outdir = numbered_run_dir(outdir, run_description(cfg, world))
    runlog("Training options (dry run: nothing is written):")
    runlog(json.dumps(cfg.to_dict(), indent=2))
    runlog(f"Network:          {type(net.model).__name__} in {type(net).__name__}, {n_params:,} parameters")
    runlog(f"Data:             {data_info['name']} ({data_info['size']} items of shape {data_info['shape']})")
    runlog(f"Output directory: {outdir}{'' if outdir.exists() else ' (would be created)'}")
    runlog(f"Start:            {'resume ' + str(found[0]) if found is not None else 'fresh run'}"
           f"{'; ' + transferred if transferred else ''}")
    return {"outdir": str(outdir), "dry_run": True, "parameters": n_params, "config": cfg.to_dict(), "step": 0,
            "cur_nimg": 0, "snapshot": None, "state": None, "loss": None}


def _claim_folder(cfg: TrainConfig, world: int, resume, found, known: set[str], runlog):
    """Create and lock the run folder on rank 0 (the numbered subfolder with `subdir`), then check that no state
    appeared (beyond the `known` ones) since `found` was chosen. Returns (outdir, lock or None, the topmost
    folder this call created or None)."""
    error, lock, created = None, None, None
    outdir = Path(cfg.outdir)
    if dist.rank() == 0:
        try:
            if cfg.subdir:
                outdir = numbered_run_dir(outdir, run_description(cfg, world))
            if not outdir.exists():
                created = outdir
                while not created.parent.exists():
                    created = created.parent
            ckpt.ensure_writable_dir(outdir)
            lock = RunLock(outdir, runlog).acquire()
            newest = [p for p in ckpt.list_checkpoints(outdir, "training-state") if p.name not in known]
            if found is None and resume is None and run_files(outdir):
                raise ConfigError(f"{outdir} already holds a training run ({run_files(outdir)[0]}, ...): add "
                                  "--resume latest to continue it, or choose a new --outdir")
            if found is None and resume is not None and _checkpoints(outdir):
                raise ConfigError(f"{outdir}: {_checkpoints(outdir)[0].name} appeared while this run started: "
                                  "run the command again")
            if found is not None and newest and Path(found[0]).parent.resolve() == outdir.resolve() \
                    and newest[0].name > Path(found[0]).name:
                raise ConfigError(f"{outdir}: a newer state {newest[0].name} appeared while this run started: "
                                  "run the command again")
        except DiffspaceError as e:
            error = e
            if lock is not None:  # only the lock holder may remove what it created
                if created is not None and not _checkpoints(outdir):
                    shutil.rmtree(created, ignore_errors=True)
                lock.release()
    message = dist.broadcast_object(None if error is None else f"{type(error).__name__}|{error}")
    if message is not None:
        if error is not None:
            raise error
        kind, text = message.split("|", 1)
        raise (CheckpointError if kind == "CheckpointError" else ConfigError)(text)
    return Path(dist.broadcast_object(str(outdir))), lock, created


def _loop(cfg, device, rank, world, outdir, runlog, dataset, is_image, shape, label_dim, data_info, sigma_data, pipe,
          net, net_config, found, per_rank, batch_gpu, deadline, command) -> dict:
    from diffspace import __version__

    loss_name = cfg.loss or cfg.precond  # e.g. EDM preconditioning trained with the VP loss (EDM Table 2, D)
    loss_fn = build_loss(loss_name, **({"sigma_data": sigma_data} if loss_name == "edm" else {}), **cfg.loss_kwargs)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    ema = EMA(net, cfg.ema, cfg.ema_rampup)
    full_config = {"train": cfg.to_dict(), "network": net_config, "data": data_info, "sigma_data": sigma_data,
                   "loss": repr(loss_fn), "augment": None if pipe is None else dict(pipe.init_kwargs),
                   "world_size": world, "diffspace": __version__, "torch": torch.__version__,
                   "python": platform.python_version(), "command": list(command if command is not None else sys.argv),
                   "threads": torch.get_num_threads(), "device": str(device)}

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
        runlog(f"Resuming from {path} (step {step}, kimg {cur_nimg / 1e3:.1f})")
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
        setup.truncate_stats(outdir / "stats.jsonl", cur_tick)
    total_nimg = int(round(cfg.duration * 1e6))
    total_steps = math.ceil(total_nimg / cfg.batch)
    snap_every = cfg.snap
    sample_every = cfg.snap if cfg.sample_every is None else cfg.sample_every
    n_grid = cfg.grid if cfg.grid is not None else (16 if is_image else 1000)
    slices = rank_slices(cfg.batch, world, rank, batch_gpu)
    order = DataOrder(len(dataset), cfg.seed)
    stream = batch_stream(dataset, order, cfg.batch, slices, step, cfg.workers)

    # The "Training" line first, then the progress bar on a line of its own.
    runlog(f"Training {type(net.model).__name__} ({sum(p.numel() for p in net.parameters()):,} parameters) on "
           f"{data_info['name']} for {cfg.duration:g} Mimg ({total_steps} steps of {cfg.batch}; {world} "
           f"process(es), {len(slices)} round(s) of {batch_gpu}; {device}, {cfg.precision}, "
           f"{torch.get_num_threads()} thread(s)) in {outdir}")
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, leave=True)

    def say(message: str) -> None:
        if bar is not None:
            bar.write(message)
            runlog.to_file(message)
        else:
            runlog(message)

    last = {"snapshot": None, "state": None, "loss": None, "stopped_at_deadline": False}
    tick_loss, tick_count = torch.zeros((), dtype=torch.float64), 0
    tick_start_time = time.time()
    run_start = tick_start_time - elapsed
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    elements_per_example = int(np.prod(shape))
    done = cur_nimg >= total_nimg
    first_step = step
    try:
        while not done:
            step_start = time.time()
            # Accumulate gradients over this rank's rounds.
            optimizer.zero_grad(set_to_none=True)
            rnd = StepRandomness(cfg.seed, step, cfg.batch, shape, loss_fn, pipe)
            step_loss = torch.zeros((), dtype=torch.float64)
            for k, (lo, hi) in enumerate(slices):
                torch.manual_seed(derive_seed(cfg.seed, DROPOUT, step, rank, k))  # dropout
                x, labels = next(stream)
                x = setup.to_float(x, is_image).to(device)
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
            if step == first_step + 1 and rank == 0:
                warning = setup.cpu_warning(cfg, device, cfg.batch / max(time.time() - step_start, 1e-9), total_nimg)
                if warning:
                    say(warning)
            done = cur_nimg >= total_nimg
            if not done and deadline is not None:
                hit = dist.broadcast_object(time.time() >= deadline)  # every rank stops after the same step
                if hit:
                    done = last["stopped_at_deadline"] = True
                    say(f"Time is up: stopping at step {step} (kimg {cur_nimg / 1e3:.1f}) of {total_steps}")
            if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + cfg.tick * 1e3:
                continue

            # Maintenance once per tick: stats, snapshot, state, preview.
            now = time.time()
            tick_sec = now - tick_start_time
            tick_nimg = max(cur_nimg - tick_start_nimg, 1)
            mean_loss = float(tick_loss) / max(tick_count, 1)
            stats = {"tick": cur_tick, "step": step, "kimg": cur_nimg / 1e3, "loss": mean_loss, "lr": lr,
                     "sec_per_tick": tick_sec, "sec_per_kimg": tick_sec / tick_nimg * 1e3,
                     "images_per_s": tick_nimg / max(tick_sec, 1e-9), "peak_mem_gb": setup.peak_mem_gb(device),
                     "total_sec": now - run_start, "timestamp": now}
            last["loss"] = mean_loss
            if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
                raise NumericalError(f"network weights are NaN/Inf at step {step}: lower --lr; last good state: "
                                     f"{last['state'] or 'none written'}")
            if rank == 0:
                _append_stats(outdir / "stats.jsonl", stats)
                line = (f"tick {cur_tick:<5d} kimg {cur_nimg / 1e3:<9.1f} loss {mean_loss:<8.4f} "
                        f"sec/kimg {stats['sec_per_kimg']:<7.3f} img/s {stats['images_per_s']:<8.1f}")
                if bar is not None:
                    bar.set_postfix_str(f"kimg {cur_nimg / 1e3:.1f} loss {mean_loss:.4f}")
                    runlog.to_file(line)
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
                # No preview of the untrained network at tick 0 (unless the run ends there).
                if sample_every and (done or (cur_tick % sample_every == 0 and cur_tick != 0)):
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
    runlog(f"Done: {step} steps, {cur_nimg / 1e3:.1f} kimg; snapshot {last['snapshot']}")
    return {"outdir": str(outdir), "step": step, "cur_nimg": cur_nimg, **last}


def _append_stats(path: Path, stats: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(stats) + "\n")
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; check free space and permissions") from None


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
