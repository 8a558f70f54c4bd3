"""Safe import of NVlabs/edm network snapshots (`network-snapshot-*.pkl` and the published `edm-*.pkl`).

An EDM snapshot is a pickle of `dict(ema=<precond>, loss_fn=..., augment_pipe=..., dataset_kwargs=...)`
whose objects are `torch_utils.persistence` records: `_reconstruct_persistent_obj(meta)` with
`meta = dict(type='class', version, module_src, class_name, state)`, `state` being the object's `__dict__`
(for a module: `_parameters`, `_buffers`, `_modules`, and `_init_args`/`_init_kwargs`, the arguments the
object was constructed with). EDM's own loader executes `module_src`; this one never does. A restricted
unpickler accepts only the handful of globals such a file needs (records, ordered dicts, tensors and their
storages, numpy scalars), turns every persistent object into an inert `EDMRecord`, and the network is rebuilt
from diffspace's classes (same names, arguments and parameters as EDM's) with the weights loaded strictly.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from diffspace.errors import CheckpointError

__all__ = ["EDMRecord", "read_edm_pickle", "build_from_record", "load_edm_network", "edm_info", "load_edm_snapshot"]


class EDMRecord:
    """An unpickled persistent object, kept as data: its class name and its `__dict__` (`state`)."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __setstate__(self, state: dict) -> None:  # plain torch containers (ModuleDict) pickled by value
        self.class_name = type(self).container_name
        self.state = state if isinstance(state, dict) else {}

    container_name = "?"

    def __repr__(self) -> str:
        return f"EDMRecord({self.class_name!r})"

    @property
    def init_kwargs(self) -> dict:
        """Constructor keyword arguments recorded by EDM, with numpy scalars turned into Python numbers."""
        return _plain(dict(self.state.get("_init_kwargs") or {}))

    @property
    def init_args(self) -> tuple:
        return tuple(_plain(list(self.state.get("_init_args") or ())))

    def state_dict(self, prefix: str = "") -> OrderedDict:
        """Flat `name -> tensor` dict in the order `nn.Module.state_dict` uses (own params, buffers, children)."""
        out: OrderedDict = OrderedDict()
        skip = self.state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{prefix}{name} in the EDM pickle is a {type(value).__name__}, "
                                          f"not a tensor: the file is not an EDM network snapshot")
                out[prefix + name] = value.detach()
        for name, child in (self.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, EDMRecord):
                raise CheckpointError(f"submodule {prefix}{name} in the EDM pickle is a {type(child).__name__}: "
                                      f"only EDM's own layer classes can be imported")
            out.update(child.state_dict(f"{prefix}{name}."))
        return out


def _container(name: str) -> type:
    return type(f"EDMRecord_{name}", (EDMRecord,), {"container_name": name})


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, tuples -> lists, recursively (JSON-friendly kwargs)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _persistent_record(meta: Any) -> EDMRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise CheckpointError("unexpected torch_utils.persistence record in the EDM pickle: not a class record")
    return EDMRecord(meta["class_name"], dict(meta.get("state") or {}))


def _load_storage(data: bytes):
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("tensor storage in the EDM pickle is not a byte string")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                               OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_scalar(dtype, data: bytes | None = None):
    dtype = np.dtype(dtype)
    if dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"numpy scalar of dtype {dtype} in the EDM pickle cannot be read safely")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(spec, *flags):
    if not isinstance(spec, str):
        raise CheckpointError(f"numpy dtype {spec!r} in the EDM pickle cannot be read safely")
    return np.dtype(spec)


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("dnnlib.util", "EasyDict"): dict,
    **{("torch.nn.modules.container", n): _container(n) for n in ("ModuleDict", "ModuleList", "Sequential")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(f"the EDM pickle refers to {module}.{name}, which a network snapshot never "
                                  f"needs: refusing to load it (only NVlabs/edm snapshots are supported)") from None

    def persistent_load(self, pid):
        raise CheckpointError("the pickle uses persistent ids (a torch.save file?): load it with torch.load")


def read_edm_pickle(source: str | os.PathLike | bytes) -> dict:
    """Unpickle an EDM snapshot without executing code; persistent objects become `EDMRecord`s."""
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            with open(source, "rb") as f:
                data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read EDM pickle {source!s}: {e.strerror}") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as e:  # truncated or corrupt stream
        raise CheckpointError(f"{source if not isinstance(source, bytes) else 'data'} is not a readable EDM "
                              f"pickle ({type(e).__name__}: {e})") from None
    if isinstance(obj, EDMRecord):  # a bare pickled network
        obj = {"ema": obj}
    if not isinstance(obj, dict):
        raise CheckpointError(f"the EDM pickle holds a {type(obj).__name__}, expected a dict with key 'ema'")
    return obj


# Preconditioner record -> (diffspace name, its own constructor arguments, EDM's default model_type).
_PRECONDS = {
    "EDMPrecond": ("edm", ("sigma_min", "sigma_max", "sigma_data"), "DhariwalUNet"),
    "VPPrecond": ("vp", ("beta_d", "beta_min", "M", "epsilon_t"), "SongUNet"),
    "VEPrecond": ("ve", ("sigma_min", "sigma_max"), "SongUNet"),
    "iDDPMPrecond": ("iddpm", ("C_1", "C_2", "M"), "DhariwalUNet"),
}
_PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16")


def build_from_record(record: EDMRecord) -> nn.Module:
    """diffspace preconditioner + network equivalent to an EDM precond record, weights loaded strict."""
    from diffspace.design.precond import build_precond
    from diffspace.nets.presets import NETWORKS, network_from_config

    if not isinstance(record, EDMRecord) or record.class_name not in _PRECONDS:
        name = record.class_name if isinstance(record, EDMRecord) else type(record).__name__
        raise CheckpointError(f"cannot import EDM object {name!r}: supported classes are {', '.join(_PRECONDS)}")
    precond_name, precond_args, default_model = _PRECONDS[record.class_name]
    kwargs = dict(zip(_PRECOND_POSITIONAL, record.init_args)) | record.init_kwargs
    try:
        img_resolution = int(kwargs.pop("img_resolution"))
        img_channels = int(kwargs.pop("img_channels"))
    except KeyError as e:
        raise CheckpointError(f"the EDM record has no saved argument {e.args[0]!r}: cannot rebuild the network") \
            from None
    label_dim = int(kwargs.pop("label_dim", 0))
    use_fp16 = bool(kwargs.pop("use_fp16", False))
    model_type = kwargs.pop("model_type", default_model)
    if model_type not in NETWORKS:
        raise CheckpointError(f"EDM network class {model_type!r} has no diffspace equivalent")
    own = {k: kwargs.pop(k) for k in precond_args if k in kwargs}
    out_channels = img_channels * 2 if precond_name == "iddpm" else img_channels
    try:
        model = network_from_config(model_type, dict(kwargs, img_resolution=img_resolution, in_channels=img_channels,
                                                     out_channels=out_channels, label_dim=label_dim))
    except Exception as e:
        raise CheckpointError(f"cannot rebuild {model_type} from the EDM pickle's arguments: {e}") from None
    if precond_name == "iddpm":
        own["out_channels"] = img_channels
    net = build_precond(precond_name, model, label_dim=label_dim, use_fp16=use_fp16, **own)
    try:
        net.load_state_dict(record.state_dict(), strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise CheckpointError(f"EDM weights do not match the rebuilt {model_type}: {detail}") from None
    net.img_resolution = img_resolution  # what EDM's generate.py reads from a network
    net.img_channels = img_channels
    return net.eval()


def load_edm_network(source: str | os.PathLike | bytes, key: str = "ema") -> nn.Module:
    """Read an NVlabs/edm snapshot safely and return the equivalent diffspace preconditioned network
    (attribute `.model` holds the raw SongUNet/DhariwalUNet), in eval mode, on the CPU."""
    data = read_edm_pickle(source)
    if key not in data:
        raise CheckpointError(f"the EDM pickle has no entry {key!r}: it has {', '.join(map(str, data))}")
    return build_from_record(data[key])


def _json_only(value: Any) -> Any:
    """Numbers, strings, booleans, None and lists/dicts of them (numpy scalars turned into numbers); records become
    {'class': name, 'state': ...}; anything else (tensors, opaque objects) is dropped as None."""
    value = _plain(value) if not isinstance(value, EDMRecord) else value
    if isinstance(value, EDMRecord):
        state = {k: v for k, v in value.state.items() if not k.startswith("_") and k != "training"}
        return {"class": value.class_name, "state": _json_only(state)}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            j = _json_only(v)
            if j is not None or v is None:
                out[str(k)] = j
        return out
    if isinstance(value, list):
        return [_json_only(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return None


def edm_info(data: dict, key: str = "ema") -> dict:
    """The training options an EDM snapshot records, JSON-ready: data shape and label dimension, the
    preconditioner class and its arguments, the dataset options, the loss and the augmentation pipeline."""
    record = data.get(key)
    if not isinstance(record, EDMRecord):
        raise CheckpointError(f"the EDM pickle's {key!r} entry is not a network record")
    kwargs = dict(zip(_PRECOND_POSITIONAL, record.init_args)) | record.init_kwargs
    shape = [int(kwargs.get("img_channels", 0)), int(kwargs.get("img_resolution", 0)),
             int(kwargs.get("img_resolution", 0))]
    edm = {"precond": record.class_name, "network_kwargs": _json_only(kwargs)}
    for name in ("dataset_kwargs", "loss_fn", "augment_pipe"):
        if name in data:
            edm[name] = _json_only(data[name])
    return {"data": {"shape": shape, "label_dim": int(kwargs.get("label_dim", 0) or 0)}, "edm": edm}


def load_edm_snapshot(source: str | os.PathLike | bytes, key: str = "ema") -> tuple[nn.Module, dict]:
    """(network, info) of an EDM snapshot: `load_edm_network` plus `edm_info`, from one read of the file."""
    data = read_edm_pickle(source)
    if key not in data:
        raise CheckpointError(f"the EDM pickle has no entry {key!r}: it has {', '.join(map(str, data))}")
    return build_from_record(data[key]), edm_info(data, key)
