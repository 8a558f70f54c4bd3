"""Checkpoints: safetensors weights + JSON configuration, written atomically, verified on load.

Files of a run folder (names follow NVlabs/edm, XXXXXX = thousands of training images seen):

- `config.json`: the training configuration and the network/preconditioner classes and constructor arguments.
- `network-snapshot-XXXXXX.safetensors`: the EMA network (keys of the preconditioner's state dict); its header
  metadata holds the same class names and arguments, so `load_network(file)` rebuilds it alone.
- `training-state-XXXXXX.safetensors`: everything `--resume` needs: the raw network (`net.*`), the EMA
  (`ema.*`), optimiser moments (`optim.*`), RNG states (`rng.*`) and, in the metadata, the step, image counter,
  optimiser hyper-parameters and the configuration.

Every file carries a SHA-256 digest of its tensors in its metadata; a truncated or corrupted file fails the check
and raises CheckpointError (`latest_training_state` then falls back to the previous good one). Writes go to a
temporary file in the same folder, are fsync'ed and renamed over the target (`os.replace`), so an interrupted write
never replaces a good file. Loading reads tensors and JSON only; no code from a file is ever executed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from diffspace.errors import CheckpointError

__all__ = [
    "atomic_write", "atomic_write_text", "atomic_save_tensors", "ensure_writable_dir", "tensor_digest", "read_tensors",
    "network_config", "build_from_config", "save_network", "load_network", "save_training_state",
    "load_training_state", "list_checkpoints", "latest_training_state", "snapshot_name",
]

NETWORK_FORMAT = "diffspace.network/1"
STATE_FORMAT = "diffspace.training-state/1"
_NAME = re.compile(r"^(network-snapshot|training-state)-(\d+)\.safetensors$")


# ---------------------------------------------------------------------------------------------------------------
# Atomic files.

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), fsync the file, rename it over `path`; the temporary file is removed on failure."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; choose a writable output folder") from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the result the usual permissions
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except Exception as e:  # OSError, or a writer's own error type wrapping one (safetensors, PIL)
        raise CheckpointError(f"cannot write {path}: {_reason(e)}; check free space and permissions") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _reason(e: BaseException) -> str:
    """A one-line reason for a failed write: the OS error's text (e.g. 'No space left on device') when known."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    code = re.search(r"(?:code:|os error)\s*(\d+)", text)  # safetensors: "... (os error 28)"
    if code:
        return os.strerror(int(code.group(1)))
    return f"{type(e).__name__}: {text}"[:300]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file + fsync + rename)."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check that files can be created in it; CheckpointError otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"output folder {folder} is not writable ({e.strerror or e}): "
                              "choose another --outdir") from None
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Tensor files with a digest.

def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors with a `sha256` digest in the metadata, atomically."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["sha256"] = tensor_digest(flat)
    atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=meta))


def read_tensors(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; CheckpointError when it is missing, truncated or corrupted."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a .safetensors file or a run folder")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated headers/data
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if verify:
        want = meta.get("sha256")
        if want is None:
            raise CheckpointError(f"checkpoint {path} has no sha256 digest: it was not written by diffspace")
        if tensor_digest(tensors) != want:
            raise CheckpointError(f"checkpoint {path} fails its sha256 check (corrupted): use an earlier snapshot")
    return tensors, meta


# ---------------------------------------------------------------------------------------------------------------
# Network configuration (class names + constructor arguments).

def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'inf', '-inf', 'nan'
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _precond_kwargs(precond: nn.Module) -> dict:
    """Constructor arguments of a diffspace preconditioner, read back from its attributes."""
    names: list[str] = []
    for cls in type(precond).__mro__:
        if cls is nn.Module:
            break
        if "__init__" in vars(cls):
            names += [n for n, p in inspect.signature(cls.__init__).parameters.items()
                      if n not in ("self", "model") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return {n: _jsonable(getattr(precond, n)) for n in dict.fromkeys(names) if hasattr(precond, n)}


def network_config(precond: nn.Module) -> dict:
    """{'precond': {'class', 'kwargs'}, 'network': {'class', 'kwargs'}} for a preconditioner around a diffspace
    network (the network must expose `init_kwargs`)."""
    model = getattr(precond, "model", None)
    if model is None or not hasattr(model, "init_kwargs"):
        raise CheckpointError(f"{type(precond).__name__} has no .model with init_kwargs: only diffspace "
                              "preconditioners around diffspace networks can be saved")
    return {
        "precond": {"class": type(precond).__name__, "kwargs": _precond_kwargs(precond)},
        "network": {"class": type(model).__name__, "kwargs": _jsonable(dict(model.init_kwargs))},
    }


def _restore_floats(kwargs: dict) -> dict:
    """Turn the 'inf'/'-inf'/'nan' strings written by _jsonable back into floats."""
    out = dict(kwargs)
    for k, v in kwargs.items():
        if isinstance(v, str) and v in ("inf", "-inf", "nan"):
            out[k] = float(v)
    return out


def build_from_config(config: Mapping) -> nn.Module:
    """Rebuild a preconditioner + network from `network_config` output (weights uninitialised)."""
    from diffspace.design.precond import PRECONDS
    from diffspace.nets import network_from_config

    try:
        p_cls_name, p_kwargs = config["precond"]["class"], dict(config["precond"]["kwargs"])
        n_cls_name, n_kwargs = config["network"]["class"], dict(config["network"]["kwargs"])
    except (KeyError, TypeError):
        raise CheckpointError("checkpoint config lacks precond/network class and kwargs: "
                              "it was not written by diffspace") from None
    classes = {cls.__name__: cls for cls in PRECONDS.values()}
    if p_cls_name not in classes:
        raise CheckpointError(f"checkpoint names an unknown preconditioner {p_cls_name!r}: "
                              f"expected one of {', '.join(classes)}")
    model = network_from_config(n_cls_name, _restore_floats(n_kwargs))
    return classes[p_cls_name](model, **_restore_floats(p_kwargs))


def snapshot_name(kind: str, cur_nimg: int) -> str:
    """'network-snapshot-000123.safetensors' style names (thousands of images)."""
    return f"{kind}-{int(cur_nimg) // 1000:06d}.safetensors"


def save_network(path: str | os.PathLike, precond: nn.Module, *, config: Mapping | None = None,
                 info: Mapping | None = None) -> None:
    """Write a preconditioned network (e.g. the EMA) as safetensors with its class names and arguments."""
    config = network_config(precond) if config is None else config
    meta = {"format": NETWORK_FORMAT, "config": json.dumps(config), "info": json.dumps(_jsonable(dict(info or {})))}
    atomic_save_tensors(path, precond.state_dict(), meta)


def list_checkpoints(folder: str | os.PathLike, kind: str = "training-state") -> list[Path]:
    """Checkpoint files of one kind in a run folder, newest (largest number) first."""
    folder = Path(folder)
    found = []
    for p in folder.glob(f"{kind}-*.safetensors"):
        m = _NAME.match(p.name)
        if m and m.group(1) == kind:
            found.append((int(m.group(2)), p))
    return [p for _, p in sorted(found, reverse=True)]


def load_network(path: str | os.PathLike, *, which: str = "ema", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the preconditioned network of a network snapshot, a training state (`which`: 'ema' or 'net') or a
    run folder (its newest valid network snapshot, else its newest training state). Returned in eval mode."""
    path = Path(path)
    if which not in ("ema", "net"):
        raise CheckpointError(f"which={which!r}: choose 'ema' or 'net'")
    if path.is_dir():
        candidates = list_checkpoints(path, "network-snapshot") + list_checkpoints(path, "training-state")
        if not candidates:
            raise CheckpointError(f"run folder {path} holds no network-snapshot-*.safetensors or "
                                  "training-state-*.safetensors: pass a checkpoint file")
        errors = []
        for c in candidates:
            try:
                return load_network(c, which=which, device=device)
            except CheckpointError as e:
                errors.append(str(e))
        raise CheckpointError(f"no valid checkpoint in {path}: {errors[0]}")
    tensors, meta = read_tensors(path)
    fmt = meta.get("format")
    if fmt == NETWORK_FORMAT:
        state = tensors
    elif fmt == STATE_FORMAT:
        prefix = f"{which}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    else:
        raise CheckpointError(f"{path} is not a diffspace checkpoint (format {fmt!r}): "
                              "convert foreign checkpoints first")
    try:
        config = json.loads(meta["config"])
        if fmt == STATE_FORMAT:
            config = config["network"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has no readable network config in its metadata") from None
    net = build_from_config(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the saved configuration ({str(e).splitlines()[0]})") \
            from None
    return net.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------------------------------------------------------
# Training states.

def save_training_state(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], state: Mapping,
                        config: Mapping) -> None:
    """Write a training state: prefixed tensors (net., ema., optim., rng.) + JSON `state` and `config`."""
    meta = {"format": STATE_FORMAT, "state": json.dumps(_jsonable(dict(state))),
            "config": json.dumps(_jsonable(dict(config)))}
    atomic_save_tensors(path, tensors, meta)


def load_training_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(tensors, state, config) of a verified training-state file; CheckpointError if broken."""
    tensors, meta = read_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a diffspace training state (format {meta.get('format')!r})")
    try:
        return tensors, json.loads(meta["state"]), json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has unreadable state metadata") from None


def latest_training_state(folder: str | os.PathLike, on_skip=None):
    """Newest training state of `folder` that passes its checks, as (path, tensors, state, config), or None when
    there is none. Broken files are skipped (reported through `on_skip(path, message)`), never deleted."""
    for p in list_checkpoints(folder, "training-state"):
        try:
            return (p, *load_training_state(p))
        except CheckpointError as e:
            if on_skip is not None:
                on_skip(p, str(e))
    return None
