"""Set-up of a training run: device, dataset, network, augmentation, initial weights from another model
(`--transfer`), and the check that warns when a full-size network is trained on a CPU."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import torch

from diffspace.errors import CheckpointError, ConfigError, DataError
from diffspace.io import checkpoint as ckpt
from diffspace.train.config import TrainConfig
from diffspace.train.stream import INIT, derive_seed

__all__ = ["pick_device", "open_data", "to_float", "measure_sigma_data", "build", "augment_pipe", "peak_mem_gb",
           "truncate_stats", "load_transfer", "apply_transfer", "FULL_SIZE_ARCHS"]

# EDM's full-size presets: days per Mimg on a CPU.
FULL_SIZE_ARCHS = ("ddpmpp", "ncsnpp", "adm")


class _Arrays:
    """An in-memory dataset (vectors) with a vectorised gather."""

    def __init__(self, x: np.ndarray, labels: np.ndarray | None):
        self.x, self.y = np.ascontiguousarray(x, dtype=np.float32), labels

    def __len__(self) -> int:
        return len(self.x)

    def gather_items(self, idx):
        return self.x[idx], (None if self.y is None else self.y[idx])


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return name


def open_data(cfg: TrainConfig, dataset):
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


def to_float(x: torch.Tensor, is_image: bool) -> torch.Tensor:
    return x.to(torch.float32) / 127.5 - 1 if is_image else x.to(torch.float32)


def measure_sigma_data(dataset, is_image: bool) -> float:
    """EDM's σ_data: 0.5 for images in [-1, 1]; the per-element std of (up to 10⁴) points otherwise."""
    if is_image:
        return 0.5
    from diffspace.train.stream import fetch_batch

    x, _ = fetch_batch(dataset, np.arange(min(len(dataset), 10_000)))
    return float(x.to(torch.float64).std())


def build(cfg: TrainConfig, shape, is_image: bool, label_dim: int, augment_dim: int, sigma_data: float):
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


def augment_pipe(cfg: TrainConfig, is_image: bool, shape):
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


def peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def truncate_stats(path: Path, cur_tick: int) -> None:
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




def load_transfer(source: str) -> dict[str, torch.Tensor]:
    """The EMA weights (preconditioner state dict) of a diffspace network snapshot, training state or run folder,
    or of an NVlabs/edm snapshot `.pkl` (read by the safe loader: no code from the file runs)."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"--transfer {source}: no such file or folder")
    if path.is_file() and path.suffix == ".pkl":
        from diffspace.io.edm_pickle import load_edm_network

        net = load_edm_network(path)
    else:
        net = ckpt.load_network(path, which="ema")
    return {k: v.detach().to("cpu") for k, v in net.state_dict().items()}


def apply_transfer(net: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> str:
    """Copy the tensors of `weights` whose names exist in `net` (EDM copies the same way: tensors the source lacks
    keep their initial values); a tensor of another shape is an error. Returns a one-line summary."""
    own = net.state_dict()
    common = [k for k in own if k in weights]
    for k in common:
        if tuple(weights[k].shape) != tuple(own[k].shape):
            raise CheckpointError(f"--transfer {source}: {k} has shape {list(weights[k].shape)} there and "
                                  f"{list(own[k].shape)} here: use the same --arch, --cbase and --cres as the source")
    if not common:
        raise CheckpointError(f"--transfer {source}: none of its {len(weights)} tensors has a name of this network "
                              f"(e.g. {next(iter(weights), '-')} vs {next(iter(own), '-')}): use the same --arch")
    with torch.no_grad():
        for k in common:
            own[k].copy_(weights[k].to(own[k].dtype))
    missing = [k for k in own if k not in weights]
    note = f"; kept the initial values of {len(missing)} (e.g. {missing[0]})" if missing else ""
    return f"Transferred {len(common)} of {len(own)} tensors from {source}{note}"


def cpu_warning(cfg: TrainConfig, device: torch.device, images_per_s: float, total_nimg: int) -> str | None:
    """A warning when one of EDM's full-size networks is trained on a CPU, with the measured speed."""
    if device.type != "cpu" or cfg.arch not in FULL_SIZE_ARCHS:
        return None
    days = total_nimg / max(images_per_s, 1e-9) / 86400
    return (f"warning: {cfg.arch} is one of EDM's full-size networks and trains at {images_per_s:.1f} images/s on "
            f"this CPU: {cfg.duration:g} Mimg would take {days:,.1f} days; on a CPU use a small network "
            "(--arch ddpmpp-small, or mlp for points), a lower --cbase, or a GPU")
