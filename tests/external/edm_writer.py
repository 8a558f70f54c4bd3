"""Test-only writer of NVlabs/edm snapshots, in EDM's persistence format, from diffspace networks.

EDM pickles every network object as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = dict(type='class', version, module_src, class_name, state)`, where `state` is the object's `__dict__`
(for a module: `_parameters`, `_buffers`, `_modules`, `_init_args`, `_init_kwargs`, ...) and `module_src` is the
source code EDM's loader executes to recreate the class. Torch containers (ModuleList, ModuleDict) are pickled by
value. The snapshot is `dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=EasyDict(...))`.

Here `module_src` is a trap: executed, it writes a marker file, so a test can prove that loading never runs it.
The globals the pickle names (`torch_utils.persistence._reconstruct_persistent_obj`, `dnnlib.util.EasyDict`)
are provided as stand-in modules only while the pickle is written, and removed afterwards.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def _reconstruct_persistent_obj(meta):  # what the pickle names; the loader must never call it
    raise AssertionError("a function from the pickle was called")


class EasyDict(dict):
    pass


@contextlib.contextmanager
def _edm_globals():
    """Importable torch_utils.persistence and dnnlib.util while pickling (pickle looks globals up by name)."""
    mods = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib",
                                                      "dnnlib.util")}
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib"].util = mods["dnnlib.util"]
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def trap_source(marker: Path) -> str:
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            "class EDMPrecond:\n    pass\n")


class _Record:
    def __init__(self, class_name: str, state: dict, module_src: str):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return _reconstruct_persistent_obj, (meta,)


def _module_state(module: torch.nn.Module, src: str, init_kwargs: dict | None = None) -> dict:
    children = OrderedDict((k, _as_record(m, src)) for k, m in module._modules.items())
    return dict(training=False, _parameters=OrderedDict(module._parameters), _buffers=OrderedDict(module._buffers),
                _non_persistent_buffers_set=set(), _modules=children, _forward_hooks=OrderedDict(),
                _forward_pre_hooks=OrderedDict(), _init_args=(), _init_kwargs=init_kwargs or {})


def _as_record(module: torch.nn.Module, src: str):
    if isinstance(module, (torch.nn.ModuleDict, torch.nn.ModuleList, torch.nn.Sequential)):
        container = type(module)()  # pickled by value; its __dict__ holds the records of its children
        container.__dict__.update(_module_state(module, src))
        return container
    return _Record(type(module).__name__, _module_state(module, src, dict(init_weight=np.float64(1.0))), src)


def edm_snapshot_bytes(precond: torch.nn.Module, marker: Path, class_name: str | None = None,
                       **extra_precond_kwargs) -> bytes:
    """Bytes of an EDM snapshot whose 'ema' is the given diffspace preconditioner (EDMPrecond, VPPrecond, ...);
    `class_name` overrides the recorded class name, `extra_precond_kwargs` the recorded constructor arguments."""
    src = trap_source(marker)
    net = precond.model
    kw = dict(net.init_kwargs)
    channels = kw.pop("in_channels")
    kw.pop("out_channels")
    own = {k: getattr(precond, k) for k in ("sigma_min", "sigma_max", "sigma_data") if type(precond).__name__ ==
           "EDMPrecond"}
    kwargs = dict(img_resolution=kw.pop("img_resolution"), img_channels=channels, label_dim=kw.pop("label_dim"),
                  use_fp16=False, model_type=type(net).__name__, **own, **kw)
    kwargs.update(extra_precond_kwargs)
    kwargs = {k: (np.float64(v) if isinstance(v, float) else v) for k, v in kwargs.items()}  # as EDM records them
    ema = _Record(class_name or type(precond).__name__, _module_state(precond, src, kwargs), src)
    loss = _Record("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5), src)
    dataset = EasyDict(class_name="training.dataset.ImageFolderDataset", path="datasets/toy.zip", use_labels=True,
                       xflip=False, cache=True, resolution=kwargs["img_resolution"], max_size=1000)
    with _edm_globals():
        return pickle.dumps(dict(ema=ema, loss_fn=loss, augment_pipe=None, dataset_kwargs=dataset), protocol=4)


def write_edm_snapshot(path: Path, precond: torch.nn.Module, marker: Path, **extra) -> Path:
    path.write_bytes(edm_snapshot_bytes(precond, marker, **extra))
    return path
