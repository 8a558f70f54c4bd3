"""Small-data feature network: a small CNN classifier trained with cross-entropy on a dataset's labels, whose
penultimate layer replaces Inception features for FID/KID/PRDC on MNIST-like data (the usual practice there:
ImageNet features describe 28×28 digits poorly).

Saved as one safetensors file whose metadata holds the JSON config; loading reads tensors and JSON only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffspace.errors import CheckpointError, DataError

FORMAT = "diffspace.feature_net/1"


class FeatureNet(nn.Module):
    """conv-conv-pool ×2 → adaptive average pool → linear → ReLU (the features) → linear (class logits).

    Takes uint8 images [N, C, H, W] (any H, W ≥ 4) and scales them to [−1, 1] itself.
    """

    def __init__(self, channels: int, resolution: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = dict(channels=channels, resolution=resolution, num_classes=num_classes, width=width,
                           feature_dim=feature_dim)
        w, pool = width, max(1, min(4, resolution // 4))

        def conv(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(channels, w), *conv(w, w), nn.MaxPool2d(2),             # H/2
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),       # H/4
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
            nn.Linear(2 * w * pool * pool, feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [N, feature_dim] of uint8 images."""
        return self.body(images.to(torch.float32) / 127.5 - 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class SmallFeatures:
    """Feature extractor interface (`name`, `identity`, `dim`, `__call__(uint8 images)`) around a FeatureNet."""

    def __init__(self, net: FeatureNet, device: torch.device, name: str, identity: str):
        self.net, self.device, self.name, self.identity = net.eval().to(device), device, name, identity
        self.dim = net.config["feature_dim"]

    @torch.inference_mode()
    def __call__(self, images) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images)).to(self.device)
        c, r = self.net.config["channels"], self.net.config["resolution"]
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r):
            raise DataError(
                f"feature network {self.name} takes uint8 images [N, {c}, {r}, {r}]; got {x.dtype} "
                f"{tuple(x.shape)}: train a feature network on data of this shape (diffspace features train)"
            )
        return self.net.features(x)


def _batches(n: int, batch: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for s in range(0, n, batch):
        yield order[s : s + batch]


@torch.inference_mode()
def accuracy(net: FeatureNet, images: np.ndarray, labels: np.ndarray, device=None, batch: int = 512) -> float:
    """Fraction of images whose arg-max logit is the label."""
    net.eval()
    dev = torch.device(device or "cpu")
    correct = 0
    for idx in _batches(len(images), batch, None):
        logits = net(torch.as_tensor(images[idx.numpy()]).to(dev))
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(labels[idx.numpy()])).sum())
    return correct / len(images)


def train_feature_net(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    *,
    epochs: int = 5,
    batch: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    width: int = 32,
    feature_dim: int = 128,
    device=None,
    log=None,
) -> FeatureNet:
    """Train a FeatureNet on uint8 images [N, C, H, W] and integer labels [N] with cross-entropy and Adam
    (learning rate cosine-decayed to 0). Deterministic for a given seed on a given device."""
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise DataError(f"feature network training needs square uint8 images [N, C, H, W]; got {images.dtype} "
                        f"{images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"need one class label per image; got {labels.shape} labels for {len(images)} images")
    k = int(num_classes or labels.max() + 1)
    if labels.min() < 0 or labels.max() >= k or k < 2:
        lo, hi = int(labels.min()), int(labels.max())
        raise DataError(f"class labels must lie in 0..{k - 1} with at least 2 classes; got {lo}..{hi}")
    dev = torch.device(device or "cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], images.shape[2], k, width=width, feature_dim=feature_dim).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        steps = epochs * math.ceil(len(images) / batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        for epoch in range(epochs):
            net.train()
            total, count = 0.0, 0
            for idx in _batches(len(images), batch, gen):
                x = torch.as_tensor(images[idx.numpy()]).to(dev)
                y = torch.as_tensor(labels[idx.numpy()]).to(dev)
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: loss {total / count:.4f}")
    return net.eval()


def save_feature_net(net: FeatureNet, path: str | os.PathLike, **info) -> None:
    """Write weights + JSON config (and `info`, e.g. dataset name and test accuracy) to one safetensors file,
    atomically."""
    from safetensors.torch import save_file

    from diffspace.io.checkpoint import atomic_write
    from diffspace.io.files import parent_folders

    meta = {"format": FORMAT, "config": json.dumps(net.config), "info": json.dumps(info)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with parent_folders(path) as p:
        atomic_write(p, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_feature_net(path: str | os.PathLike) -> tuple[FeatureNet, dict]:
    """Load a FeatureNet and its info dict from a file written by `save_feature_net` (no code is executed)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"feature network {p} does not exist; make one with `diffspace features train`")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{p} is not a safetensors feature network: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a diffspace feature network (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r}); make one with `diffspace features train`")
    try:
        net = FeatureNet(**json.loads(meta["config"]))
        net.load_state_dict(tensors)
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"feature network {p} is damaged: {e}") from None
    return net.eval(), info


def load_feature_net(path: str | os.PathLike, device=None) -> SmallFeatures:
    """A feature extractor from a saved FeatureNet; its identity is the file's SHA-256."""
    from diffspace.metrics.features import select_device, sha256_file

    net, info = read_feature_net(path)
    name = f"smallfeat:{info.get('dataset', Path(path).stem)}"
    return SmallFeatures(net, select_device(str(device) if device is not None else None), name, sha256_file(path))
