"""Shared helpers for the network tests."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a random O(1)-gain value, so that zero-initialised output layers do not hide
    the paths under test (EDM initialises them to 0 or 1e-5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def one_hot(indices: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(indices), num_classes).to(torch.float32)


def assert_compiles_whole(net: nn.Module, *args: torch.Tensor) -> None:
    """No Python branch on tensor values (no .item()): dynamo traces the whole forward as one graph, and the
    compiled forward equals the eager one."""
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    try:
        with torch.no_grad():
            torch.testing.assert_close(compiled(*args), net(*args))
    finally:
        torch._dynamo.reset()
