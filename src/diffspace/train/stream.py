"""Where every random number of training comes from, so that results depend on the seed only.

- Data order: epoch e is a permutation of the dataset drawn from a generator seeded by (seed, e); the global
  batch of step s is positions [s·B, (s+1)·B) of the concatenated epochs. Rank r of W takes the slice
  [r·B/W, (r+1)·B/W) and splits it into accumulation rounds of `batch_gpu` examples.
- Per-example randomness (σ, noise, augmentation) of step s is drawn for the whole global batch from generators
  seeded by (seed, purpose, s), and each rank/round takes its slice. So an example's σ and noise are the same
  whatever the number of processes or accumulation rounds, and a resumed run draws exactly what an
  uninterrupted one would.
- Dropout uses torch's global RNG, reseeded at every step from (seed, step, rank, round).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["derive_seed", "DataOrder", "StepRandomness", "rank_slices", "fetch_batch", "batch_stream"]

# Purposes of derived seeds.
DATA, SIGMA, NOISE, AUGMENT, DROPOUT, INIT, GLOBAL = range(7)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that is a hash of (seed, *keys) (numpy SeedSequence): independent streams per purpose."""
    entropy = [int(seed) % (1 << 64), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


class DataOrder:
    """Dataset indices at global positions [start, stop) of the infinite sequence of seeded epoch permutations."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = int(size), int(seed)
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = _generator(self.seed, DATA, epoch)
            self._cache[epoch] = torch.randperm(self.size, generator=g).numpy()
        return self._cache[epoch]

    def indices(self, start: int, stop: int) -> np.ndarray:
        out, pos = [], int(start)
        while pos < stop:
            epoch, offset = divmod(pos, self.size)
            take = min(stop - pos, self.size - offset)
            out.append(self.permutation(epoch)[offset:offset + take])
            pos += take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def rank_slices(batch: int, world: int, rank: int, batch_gpu: int) -> list[tuple[int, int]]:
    """Rows [lo, hi) of the global batch that each accumulation round of `rank` processes."""
    per_rank = batch // world
    base = rank * per_rank
    return [(base + k, base + k + batch_gpu) for k in range(0, per_rank, batch_gpu)]


class StepRandomness:
    """σ, noise and augmentation of one step for the whole global batch (sliced per rank and round)."""

    def __init__(self, seed: int, step: int, batch: int, shape: tuple[int, ...], loss, augment_pipe=None):
        self.seed, self.step, self.batch = int(seed), int(step), int(batch)
        self.sigma = loss.sample_sigma(self.batch, _generator(seed, SIGMA, step), "cpu")
        self.noise = torch.randn((self.batch, *shape), generator=_generator(seed, NOISE, step))
        self.augment_pipe = augment_pipe
        self.aug_params = None
        if augment_pipe is not None and hasattr(augment_pipe, "draw") and len(shape) == 3:
            self.aug_params = augment_pipe.draw(self.batch, shape[1], shape[2],
                                                generator=_generator(seed, AUGMENT, step))

    def augment(self, x: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment rows [lo, hi) of the global batch, given their data x; returns (x, labels)."""
        pipe = self.augment_pipe
        if pipe is None:
            return x, None
        if self.aug_params is not None:  # image pipeline: parameters drawn once for the global batch
            params = type(self.aug_params)(*(t[lo:hi] for t in self.aug_params))
            return pipe.apply(x, params), params.labels.to(x.device)
        # Other pipelines: run on the global batch (zeros outside [lo, hi)) with a freshly seeded generator.
        full = x.new_zeros((self.batch, *x.shape[1:]))
        full[lo:hi] = x
        out, labels = pipe(full, generator=_generator(self.seed, AUGMENT, self.step))
        return out[lo:hi], labels[lo:hi].to(x.device)


def fetch_batch(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(data, labels) of dataset items `indices`: uint8 images stay uint8, vectors become float32."""
    gather = getattr(dataset, "gather_items", None)
    if gather is not None:
        x, labels = gather(indices)
    else:
        items = [dataset[int(i)] for i in indices]
        if items and isinstance(items[0], (tuple, list)):
            x = np.stack([np.asarray(it[0]) for it in items])
            labels = np.stack([np.asarray(it[1], dtype=np.float32) for it in items])
        else:
            x, labels = np.stack([np.asarray(it) for it in items]), None
    x = torch.as_tensor(np.asarray(x))
    if x.dtype != torch.uint8:
        x = x.to(torch.float32)
    labels = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if labels is not None and labels.ndim == 2 and labels.shape[1] == 0:
        labels = None
    return x, labels


class _IndexBatches(torch.utils.data.Sampler):
    """Index lists of this rank's accumulation rounds, step after step, from `first_step`."""

    def __init__(self, order: DataOrder, batch: int, slices: list[tuple[int, int]], first_step: int):
        self.order, self.batch, self.slices, self.first_step = order, batch, slices, first_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.first_step
        while True:
            for lo, hi in self.slices:
                yield self.order.indices(step * self.batch + lo, step * self.batch + hi).tolist()
            step += 1


class _Collate:
    """Turns a list of indices into (data, labels) inside a loader worker (picklable, unlike a lambda)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, indices):
        return fetch_batch(self.dataset, np.asarray(indices))


class _Items(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, idx):
        return idx

    def __len__(self):
        return len(self.dataset)


def batch_stream(dataset, order: DataOrder, batch: int, slices: list[tuple[int, int]], first_step: int,
                 workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches (data, labels) of this rank's rounds in order; `workers` > 0 loads them in background processes."""
    sampler = _IndexBatches(order, batch, slices, first_step)
    if workers <= 0:
        return (fetch_batch(dataset, np.asarray(idx)) for idx in sampler)
    loader = torch.utils.data.DataLoader(
        _Items(dataset), batch_sampler=sampler, num_workers=workers, persistent_workers=False,
        collate_fn=_Collate(dataset), prefetch_factor=2,
    )
    return iter(loader)
