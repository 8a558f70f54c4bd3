"""Generation from a trained network, as EDM's `generate.py` does it: one image per seed,
latents, class labels and sampler noise drawn from that seed's own generator, images converted with
`(x·127.5 + 128).clip(0, 255)` to uint8.

A seed's image is the same bits whatever the batch size, the number of processes and the number of threads:

- noise comes from per-seed generators (`StackedRandom`), so it never depends on the batch;
- the network is always evaluated on exactly `micro_batch` samples (the last chunk is padded by repeating its last
  sample), because CPU and GPU kernels pick their algorithm, and so their rounding, by batch size;
- on the CPU every chunk runs with one intra-op thread and chunks run side by side on `workers` Python threads,
  because oneDNN/MKL results also change with the number of intra-op threads.

    net = diffspace.io.load_network("runs/fmnist/network-snapshot-000200.safetensors")
    out = generate(net, range(64), sampler="dpmpp_2m", steps=10)
    out.images.shape   # (64, 28, 28, 1) uint8, out.nfe == 10
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from diffspace.errors import ConfigError

__all__ = ["GRID_TYPES", "Generated", "MicroBatched", "check_class", "check_sampler", "default_micro_batch",
           "generate", "image_shape", "load", "needs_positive_end", "noise_levels", "sample", "shard",
           "tile", "to_uint8"]

GRID_TYPES = ("edm", "vp", "ve", "iddpm", "exponential", "li")
# Default σ range of each grid type (EDM's ablation_sampler defaults; exponential like edm).
_GRID_RANGE = {"exponential": (0.002, 80.0)}


# ---------------------------------------------------------------------------------------------------------------
# Small helpers.

def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] with EDM's conversion (x·127.5 + 128, clipped, truncated)."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one [rows·H, cols·W, C] grid in row-major order (cols = ceil(sqrt N) by default)."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return grid


def shard(seeds: Sequence[int], rank: int, world: int) -> list[int]:
    """The seeds process `rank` of `world` generates: every world-th one (results are per seed, so any split works)."""
    return list(seeds)[rank::world]


def image_shape(net, info: dict | None = None) -> tuple[int, ...]:
    """Shape of one sample: the preconditioner's image shape, [C, R, R] of a U-Net, else the training data's shape
    recorded in `info` (flattened MLPs)."""
    if getattr(net, "img_resolution", None) is not None and getattr(net, "img_channels", None) is not None:
        return (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))
    model = getattr(net, "model", net)
    kwargs = getattr(model, "init_kwargs", {}) or {}
    if "img_resolution" in kwargs and "in_channels" in kwargs:
        return (int(kwargs["in_channels"]), int(kwargs["img_resolution"]), int(kwargs["img_resolution"]))
    shape = ((info or {}).get("data") or {}).get("shape")
    if shape:
        return tuple(int(s) for s in shape)
    if "in_features" in kwargs:
        return (int(kwargs["in_features"]),)
    raise ConfigError(f"cannot tell the sample shape of {type(model).__name__}: pass shape=(C, H, W)")


def check_class(net, class_idx: int | None) -> None:
    """--class must name one of the network's classes, and only a conditional network has classes."""
    if class_idx is None:
        return
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if label_dim == 0:
        raise ConfigError(f"--class {class_idx}: this network is unconditional; drop --class")
    if not 0 <= class_idx < label_dim:
        raise ConfigError(f"--class {class_idx} is out of range: this network has classes 0..{label_dim - 1}")


# ---------------------------------------------------------------------------------------------------------------
# Noise levels.

def noise_levels(net, steps: int, grid: str = "edm", *, sigma_min: float | None = None,
                 sigma_max: float | None = None, rho: float = 7.0, final_zero: bool = True) -> torch.Tensor:
    """`steps` noise levels of grid type `grid` (+ a final 0 when `final_zero`), float64.

    The σ range defaults to the grid type's (EDM's ablation_sampler) and is clamped to the network's
    [sigma_min, sigma_max] as EDM does; every level goes through `net.round_sigma` (identity except iDDPM).
    'li' is Li et al.'s schedule with T = steps levels (its own σ range; sigma_min/sigma_max do not apply).
    """
    from diffspace.design import grids
    from diffspace.samplers.edm import DISC_DEFAULTS

    if grid not in GRID_TYPES:
        raise ConfigError(f"unknown grid type {grid!r}: choose one of {', '.join(GRID_TYPES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps {steps} must be an integer >= 1")
    if grid == "li":
        if sigma_min is not None or sigma_max is not None:
            raise ConfigError("--grid-type li sets its own sigma range: drop --sigma_min/--sigma_max")
        if steps < 2:
            raise ConfigError("--grid-type li needs --steps >= 2")
        levels = grids.li(steps)
    else:
        lo, hi = {**DISC_DEFAULTS, **_GRID_RANGE}[grid]
        lo = max(lo if sigma_min is None else sigma_min, float(getattr(net, "sigma_min", 0.0)))
        hi = min(hi if sigma_max is None else sigma_max, float(getattr(net, "sigma_max", math.inf)))
        if grid == "edm":
            levels = grids.edm(steps, lo, hi, rho, append_zero=False)
        elif grid == "exponential":
            levels = grids.exponential(steps, lo, hi, append_zero=False)
        elif grid == "vp":
            levels = grids.vp(steps, lo, hi, append_zero=False)
        elif grid == "ve":
            levels = grids.ve(steps, lo, hi, append_zero=False)
        else:
            levels = grids.iddpm(steps, lo, hi, append_zero=False)
    if hasattr(net, "round_sigma"):
        levels = torch.as_tensor(net.round_sigma(levels)).to(torch.float64)
    if final_zero:
        levels = torch.cat([levels, levels.new_zeros(1)])
    return grids.check(levels)


# ---------------------------------------------------------------------------------------------------------------
# Batch-invariant network evaluation.

@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Append n copies of the last row."""
    return t if n == 0 else torch.cat([t, t[-1:].expand(n, *t.shape[1:])])


class MicroBatched:
    """D(x; σ) evaluated on chunks of exactly `size` samples (the last one padded), on `workers` threads.

    Other attributes (sigma_min, sigma_max, round_sigma, label_dim) are the wrapped network's. Use it inside
    `single_threaded()` on the CPU so that every chunk runs with one intra-op thread.
    """

    def __init__(self, net, size: int, workers: int = 1):
        if int(size) < 1 or int(workers) < 1:
            raise ConfigError(f"micro_batch={size} and workers={workers} must be >= 1")
        self.net, self.size, self.workers = net, int(size), int(workers)
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _one(self, args) -> torch.Tensor:
        x, sigma, kwargs, n = args
        with torch.no_grad():  # grad mode is per thread
            return self.net(x, sigma, **kwargs)[:n]

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        b, m = x.shape[0], self.size
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.reshape(-1).expand(b) if sigma.numel() == 1 else sigma.reshape(b)
        jobs = []
        for s in range(0, b, m):
            n = min(m, b - s)
            kw = {k: (_pad(v[s:s + n], m - n) if torch.is_tensor(v) and v.ndim and v.shape[0] == b else v)
                  for k, v in kwargs.items()}
            jobs.append((_pad(x[s:s + n], m - n), _pad(sigma[s:s + n], m - n), kw, n))
        parts = list(self._pool.map(self._one, jobs)) if self._pool is not None else [self._one(j) for j in jobs]
        return torch.cat(parts)


def default_micro_batch(device: torch.device) -> int:
    """8 on the CPU (little padding waste, same speed per image as larger chunks), 64 on accelerators."""
    return 8 if device.type == "cpu" else 64


# ---------------------------------------------------------------------------------------------------------------
# Sampling.

def _sampler_call(name: str, options: dict) -> Callable:
    """fn(model, latents, sigmas, noise, class_labels, callback, stats) -> x for a registered sampler or 'ablation'."""
    from diffspace import samplers

    if "noise" in options:
        raise ConfigError("the noise source is generate's own (one generator per seed): drop the 'noise' option")
    if name == "ablation":
        params = inspect.signature(samplers.ablation).parameters
        fixed = {"net", "latents", "class_labels", "noise", "callback", "stats", "num_steps", "sigma_min",
                 "sigma_max", "rho", "discretization"}
        unknown = sorted(set(options) - (set(params) - fixed))
        if unknown:
            raise ConfigError(f"sampler 'ablation' does not take option(s) {', '.join(unknown)}; it takes: "
                              f"{', '.join(p for p in params if p not in fixed)}")
        return None  # handled in sample()
    entry = samplers.get(name)
    entry.check_options(options)

    def call(model, latents, sigmas, noise, class_labels, callback, stats):
        extra = {"class_labels": class_labels} if class_labels is not None else {}
        return entry(model, latents.to(torch.float64) * sigmas[0], sigmas, extra_args=extra, callback=callback,
                     disable=True, noise=noise, stats=stats, **options)

    return call


def needs_positive_end(sampler: str) -> bool:
    """Samplers that stop at σ_min > 0 (Li et al. forms A, C, D, F; adaptive samplers)."""
    if sampler == "ablation":
        return False
    from diffspace import samplers

    return samplers.get(sampler).positive_end


@torch.no_grad()
def sample(net, seeds: Sequence[int], *, sampler: str = "edm", options: dict | None = None, steps: int = 18,
           grid: str = "edm", sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
           sigmas: torch.Tensor | None = None, class_idx: int | None = None, shape: Sequence[int] | None = None,
           device: str | torch.device = "cpu", callback=None, stats: dict | None = None,
           model=None, jump_at: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch: (samples float64 [len(seeds), *shape], class indices [len(seeds)] or None).

    Per seed, in EDM's order: latents ~ N(0, I) (float32), a random class (conditional nets; `class_idx` then
    overrides it), then every noise draw of the sampler. `sigmas` overrides the grid options. `model`: the
    callable the sampler evaluates (e.g. a MicroBatched wrapper of `net`); default `net`. `jump_at=K`: ODE-Jump,
    stop at step K and return that step's denoised estimate (diffspace.geometry.jump).
    """
    from diffspace.samplers import StackedRandom, ablation

    options = dict(options or {})
    device = torch.device(device)
    shape = tuple(shape) if shape is not None else image_shape(net)
    check_class(net, class_idx)
    positive_end = sigmas is None and needs_positive_end(sampler)
    if positive_end:  # finish with D(x; σ_min) unless asked otherwise
        options.setdefault("denoise_to_zero", True)
    call = _sampler_call(sampler, options)
    rnd = StackedRandom(seeds, device)
    latents = rnd.randn(shape, dtype=torch.float32)
    labels = onehot = None
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if label_dim:
        labels = rnd.randint(label_dim).to(device)
        if class_idx is not None:
            labels = torch.full_like(labels, class_idx)
        onehot = torch.eye(label_dim, device=device)[labels]
    model = net if model is None else model
    if call is None:  # EDM's Table-1 sampler builds its own grid from the options.
        if jump_at is not None:
            raise ConfigError("--jump-at works with the registered samplers, not 'ablation'")
        if sigmas is not None:
            raise ConfigError("sampler 'ablation' builds its own grid: use --grid-type/--steps, not explicit sigmas")
        if grid not in ("edm", "vp", "ve", "iddpm"):
            raise ConfigError(f"sampler 'ablation' supports grid types edm, vp, ve, iddpm, not {grid!r}")
        x = ablation(model, latents, class_labels=onehot, num_steps=steps, sigma_min=sigma_min, sigma_max=sigma_max,
                     rho=rho, discretization=grid, noise=rnd, callback=callback, stats=stats, **options)
        return x, labels
    if sigmas is None:
        sigmas = noise_levels(net, steps, grid, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                              final_zero=not positive_end)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).to(device)
    if jump_at is not None:  # ODE-Jump: the sampler runs unchanged until step K, whose D(x; σ) is the output
        from diffspace.geometry.jump import run_with_jump

        def until_jump(m, x, s, callback):
            return call(m, x, s, rnd, onehot, callback, None)

        x = run_with_jump(until_jump, model, latents.to(device, torch.float64), sigmas, jump_at, callback=callback,
                          stats=stats)
        return x, labels
    return call(model, latents.to(device), sigmas, rnd, onehot, callback, stats), labels


@dataclass
class Generated:
    """Images of `seeds` (uint8 [N, H, W, C]), their class indices (or None) and the NFE per image."""

    images: np.ndarray
    seeds: list[int]
    labels: np.ndarray | None
    nfe: int


def generate(net, seeds: Sequence[int], *, sampler: str = "edm", options: dict | None = None, steps: int = 18,
             grid: str = "edm", sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
             sigmas: torch.Tensor | None = None, batch: int = 64, class_idx: int | None = None,
             shape: Sequence[int] | None = None, device: str | torch.device = "cpu", micro_batch: int | None = None,
             workers: int | None = None, callback=None, progress: bool = False,
             on_batch: Callable[[Generated], None] | None = None, jump_at: int | None = None) -> Generated:
    """Images for `seeds` in batches of `batch`, identical for any batch size, process count or thread count.

    `micro_batch`: samples per network call (default 8 on CPU, 64 elsewhere; results depend on it). `workers`:
    CPU threads running chunks side by side (default: torch's thread count). `on_batch(part)` is called after
    each batch (e.g. to write PNGs as they come). Options as in `sample`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("no seeds to generate: pass e.g. --seeds 0-63")
    if int(batch) < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    device = torch.device(device)
    shape = tuple(shape) if shape is not None else image_shape(net)
    if len(shape) != 3:
        raise ConfigError(f"the network makes samples of shape {list(shape)}, not images [C, H, W]: use sample()")
    check_class(net, class_idx)
    on_cpu = device.type == "cpu"
    workers = (workers or torch.get_num_threads()) if on_cpu else 1
    model = MicroBatched(net, micro_batch or default_micro_batch(device), workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds), unit="img", dynamic_ncols=True)
    images, labels, nfe = [], [], 0
    try:
        with _intra_op_threads(1) if on_cpu else contextlib.nullcontext():
            for s in range(0, len(seeds), batch):
                part_seeds = seeds[s:s + batch]
                stats: dict = {}
                x, lab = sample(net, part_seeds, sampler=sampler, options=options, steps=steps, grid=grid,
                                sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, sigmas=sigmas,
                                class_idx=class_idx, shape=shape, device=device, callback=callback, stats=stats,
                                model=model, jump_at=jump_at)
                nfe = int(stats.get("nfe", 0))
                part = Generated(to_uint8(x), part_seeds, None if lab is None else lab.cpu().numpy(), nfe)
                images.append(part.images)
                if part.labels is not None:
                    labels.append(part.labels)
                if on_batch is not None:
                    on_batch(part)
                if bar is not None:
                    bar.update(len(part_seeds))
    finally:
        model.close()
        if bar is not None:
            bar.close()
    return Generated(np.concatenate(images), seeds, np.concatenate(labels) if labels else None, nfe)



def check_sampler(net, sampler: str, options: dict | None = None, *, steps: int = 18, grid: str = "edm",
                  sigma_min: float | None = None, sigma_max: float | None = None,
                  rho: float = 7.0, jump_at: int | None = None) -> torch.Tensor | None:
    """Validate a sampler, its options and the grid before any work; the noise levels it will use (None for
    'ablation', which builds its own)."""
    options = dict(options or {})
    if sampler == "ablation":
        _sampler_call(sampler, options)
        if jump_at is not None:
            raise ConfigError("--jump-at works with the registered samplers, not 'ablation'")
        if grid not in ("edm", "vp", "ve", "iddpm"):
            raise ConfigError(f"sampler 'ablation' supports grid types edm, vp, ve, iddpm, not {grid!r}")
        return None
    positive_end = needs_positive_end(sampler)
    if positive_end:
        options.setdefault("denoise_to_zero", True)
    _sampler_call(sampler, options)
    levels = noise_levels(net, steps, grid, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                          final_zero=not positive_end)
    if jump_at is not None:
        from diffspace.geometry.jump import check_jump

        check_jump(jump_at, levels)
    return levels


def load(path, *, which: str = "ema", device: str | torch.device = "cpu", on_skip: Callable[[str], None] | None = None):
    """(network, info) of a checkpoint file or run folder; `info` is what training recorded (data shape, kimg).

    A run folder gives its newest readable network snapshot (with `which='net'`: its newest training state, the
    only files that hold the raw weights). EDM snapshots (.pkl) and diffusers folders are accepted too
    (diffspace.external.load_foreign). When newer files are unreadable, `on_skip(message)` is told which file
    was skipped for which (default: a Python warning), so an older snapshot is never used silently.
    """
    import json
    import warnings
    from pathlib import Path

    from diffspace.errors import CheckpointError
    from diffspace.external.load import load_foreign
    from diffspace.io import checkpoint as ckpt

    if which not in ("ema", "net"):
        raise ConfigError(f"--which {which!r}: choose ema or net")
    foreign = load_foreign(path, which=which, device=device)
    if foreign is not None:
        return foreign
    path = Path(path)
    files = [path]
    if path.is_dir():
        snapshots = ckpt.list_checkpoints(path, "network-snapshot") if which == "ema" else []
        files = snapshots + ckpt.list_checkpoints(path, "training-state")
        if not files:
            raise CheckpointError(f"run folder {path} holds no " + (
                "network-snapshot-*.safetensors or " if which == "ema" else "") + "training-state-*.safetensors"
                                  ": pass a checkpoint file")
    errors: list[tuple[Path, str]] = []
    for f in files:
        try:
            _check_which(f, which)
            net = ckpt.load_network(f, which=which, device=device)
        except CheckpointError as e:
            if len(files) == 1:
                raise
            errors.append((f, str(e)))
            continue
        if errors:
            bad = ", ".join(p.name for p, _ in errors)
            message = (f"{errors[0][0]} is unreadable ({errors[0][1]}); using the older {f.name} instead"
                       if len(errors) == 1 else f"{bad} are unreadable (first: {errors[0][1]}); using the older "
                                                f"{f.name} instead")
            if on_skip is not None:
                on_skip(message)
            else:
                warnings.warn(message, stacklevel=2)
        return net, _checkpoint_info(f, json)
    raise CheckpointError(f"no valid checkpoint in {path}: {errors[0][1]}")


def _check_which(path, which: str) -> None:
    """`which='net'` needs a training state: a network snapshot holds only the EMA weights."""
    if which != "net":
        return
    from diffspace.errors import CheckpointError

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            fmt = (f.metadata() or {}).get("format")
    except Exception:  # unreadable: load_network names the problem
        return
    if fmt == "diffspace.network/1":
        raise CheckpointError(f"--which net: {path} is a network snapshot, which holds only the EMA weights; pass a "
                              "training-state-*.safetensors file (or drop --which net)")


def _checkpoint_info(path, json) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
    try:
        if "info" in meta:
            return dict(json.loads(meta["info"]))
        return {"data": json.loads(meta.get("config", "{}")).get("data")}
    except (ValueError, TypeError, AttributeError):
        return {}
