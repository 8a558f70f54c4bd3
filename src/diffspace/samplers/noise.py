"""Noise sources. Results depend on seeds only, never on batch size, device count or execution order."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from diffspace.errors import ConfigError


class StackedRandom:
    """One torch.Generator per sample, seeded with that sample's seed (like EDM's StackedRandomGenerator).

    Sample k of every draw comes from generator k alone, so a seed gives the same latents and the same
    per-step noise whether it is generated in a batch of 1 or of 64, on one process or on eight.
    """

    def __init__(self, seeds: Sequence[int] | Iterable[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ConfigError("StackedRandom needs at least one seed")
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 32)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[len(seeds), *shape] standard normal."""
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ConfigError(f"noise source has {len(self.generators)} seeds but the batch has {x.shape[0]} samples")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per sample (e.g. random class labels)."""
        return torch.stack([torch.randint(high, (), generator=g, device=self.device) for g in self.generators])


class GlobalRandom:
    """torch's global RNG (k-diffusion's behaviour); results then depend on batch composition."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x)


def parse_seeds(text: str) -> list[int]:
    """'0-63', '1,2,5-7' -> list of ints (EDM's --seeds syntax)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"seeds {text!r} is not a list of ranges: use e.g. 0-63 or 1,2,5-7")
        lo = int(m.group(1))
        seeds.extend(range(lo, int(m.group(2)) + 1) if m.group(2) is not None else [lo])
    return seeds
