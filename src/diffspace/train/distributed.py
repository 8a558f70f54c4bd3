"""Process-group set-up for torchrun (gloo on CPU, nccl on GPU) and rank helpers.

Without torchrun (no WORLD_SIZE in the environment) everything works as a single process: rank 0 of 1, and the
collectives below are no-ops.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as tdist

from diffspace.errors import ConfigError

__all__ = ["init", "shutdown", "is_initialized", "rank", "world_size", "local_rank", "is_main", "barrier",
           "print0", "broadcast_object", "all_reduce_sum"]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer: launch with torchrun") from None


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init(device: str | torch.device = "cpu", backend: str | None = None, timeout_s: float = 600) -> torch.device:
    """Join the torchrun process group when WORLD_SIZE > 1 and return the device this process should use.

    Backend: gloo for CPU, nccl for CUDA (unless `backend` is given). On CUDA each process takes the GPU of its
    LOCAL_RANK. Idempotent: a second call returns the device without re-initialising.
    """
    device = torch.device(device)
    ws = _env_int("WORLD_SIZE", 1)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0) % max(torch.cuda.device_count(), 1))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ws > 1 and not is_initialized():
        if not tdist.is_available():
            raise ConfigError("this torch build has no torch.distributed: run a single process")
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        tdist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return device


def shutdown() -> None:
    if is_initialized():
        tdist.destroy_process_group()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs)
        sys.stdout.flush()


def broadcast_object(obj, src: int = 0):
    """The object of rank `src` on every rank (identity in a single process)."""
    if not is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process)."""
    if is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t
