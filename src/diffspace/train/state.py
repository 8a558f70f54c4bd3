"""Turning the training state into tensors + JSON and back (for safetensors training-state files).

The optimiser's per-parameter tensors become `optim.<index>.<name>`, its hyper-parameters JSON; RNG states of
torch (CPU and CUDA), numpy and Python's `random` become `rng.*` tensors and JSON. Restoring them is exact.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from diffspace.errors import CheckpointError

__all__ = ["optimizer_to_tensors", "optimizer_from_tensors", "rng_to_tensors", "rng_from_tensors", "prefixed",
           "unprefixed"]


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """({'optim.<i>.<name>': tensor}, JSON-able param_groups) of an optimiser's state_dict."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           groups: list[dict]) -> None:
    """Load what optimizer_to_tensors produced into `optimizer` (same parameters, same order)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimiser state does not match the network ({e}): resume with the same --arch "
                              "and network options") from None


def rng_to_tensors() -> tuple[dict[str, torch.Tensor], dict]:
    """States of torch's CPU/CUDA generators, numpy's and Python's global RNGs."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, py_state, gauss_next = random.getstate()
    info = {"numpy": [name, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(py_state), gauss_next]}
    return tensors, info


def rng_from_tensors(tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Restore what rng_to_tensors saved (CUDA states only where this machine has those devices)."""
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((int(k.split(".")[2]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        states = [v.to(torch.uint8) for _, v in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    name, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss_next = info["python"]
    random.setstate((version, tuple(py_state), gauss_next))
