"""Safe import of NVlabs/edm snapshot pickles (diffspace.io.edm_pickle).

The pickles here are written by a small stand-in for EDM's `torch_utils.persistence` that emits the same
record layout: `_reconstruct_persistent_obj(dict(type='class', version, module_src, class_name, state))`,
with torch ModuleDicts pickled by value (NEWOBJ + state). Each record's `module_src` is code that would
fail loudly if the loader ever executed it.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from diffspace.design.precond import build_precond
from diffspace.errors import CheckpointError
from diffspace.io.edm_pickle import EDMRecord, load_edm_network, read_edm_pickle
from diffspace.nets import DhariwalUNet, SongUNet

from .helpers import one_hot, randomize_

TRAP_SOURCE = "raise SystemExit('EDM module source was executed')\n"


def _reconstruct_persistent_obj(meta):  # the global EDM's records name; never called by the loader
    raise AssertionError("the loader called a function from the pickle")


@pytest.fixture
def edm_modules(monkeypatch):
    """Importable `torch_utils.persistence` so that pickle can name the reconstruct function."""
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)


class Persistent:
    """Pickles as an EDM persistent-object record."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=TRAP_SOURCE, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


def module_state(module: torch.nn.Module, init_kwargs: dict | None = None) -> dict:
    children = OrderedDict((k, as_record(m)) for k, m in module._modules.items())
    return dict(training=False, _parameters=OrderedDict(module._parameters), _buffers=OrderedDict(module._buffers),
                _non_persistent_buffers_set=set(), _modules=children, _forward_hooks=OrderedDict(),
                _init_args=(), _init_kwargs=init_kwargs or {})


def as_record(module: torch.nn.Module):
    if isinstance(module, torch.nn.ModuleDict):
        # A real ModuleDict whose __dict__ holds records: pickles by value (NEWOBJ + state), as in EDM.
        container = torch.nn.ModuleDict()
        container.__dict__.update(module_state(module))
        return container
    # EDM's layers record numpy scalars among their arguments (e.g. skip_scale=np.sqrt(0.5)).
    return Persistent(type(module).__name__, module_state(module, dict(gain=np.float64(0.5))))


def edm_snapshot(precond_class: str, net: torch.nn.Module, img_channels: int, buffers: dict | None = None,
                 **precond_kwargs) -> bytes:
    """Bytes of an EDM-style snapshot whose 'ema' is `precond_class` around our raw `net`."""
    kw = dict(net.init_kwargs)
    kwargs = dict(img_resolution=kw.pop("img_resolution"), img_channels=img_channels, label_dim=kw.pop("label_dim"),
                  use_fp16=False, model_type=type(net).__name__, **precond_kwargs)
    kw.pop("in_channels"), kw.pop("out_channels")
    kwargs.update(kw)
    ema = Persistent(precond_class, module_state(torch.nn.Module(), kwargs))
    ema.state["_modules"] = OrderedDict(model=as_record(net))
    ema.state["_buffers"] = OrderedDict(buffers or {})
    data = dict(ema=ema, loss_fn=Persistent("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)),
                augment_pipe=None, dataset_kwargs=dict(path="cifar10-32x32.zip", use_labels=True))
    return pickle.dumps(data, protocol=4)


def small_ncsnpp() -> SongUNet:
    return SongUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, augment_dim=9, model_channels=32,
                    channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13, embedding_type="fourier",
                    channel_mult_noise=2, encoder_type="residual", resample_filter=[1, 3, 3, 1])


def test_snapshot_round_trip_gives_identical_denoiser(edm_modules, tmp_path):
    net = randomize_(small_ncsnpp()).eval()
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(edm_snapshot("EDMPrecond", net, 3, sigma_data=0.5))
    loaded = load_edm_network(path)
    assert type(loaded.model) is SongUNet and loaded.model.init_kwargs == net.init_kwargs
    assert (loaded.img_resolution, loaded.img_channels, loaded.label_dim) == (8, 3, 4)
    assert not loaded.training
    reference = build_precond("edm", net, label_dim=4).eval()
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0.1, 3.0])
    labels, aug = one_hot([1, 3], 4), torch.randn(2, 9, generator=g)
    with torch.no_grad():
        y = loaded(x, sigma, labels, augment_labels=aug)
        assert torch.equal(y, reference(x, sigma, labels, augment_labels=aug))


def test_records_expose_kwargs_and_other_entries(edm_modules):
    data = read_edm_pickle(edm_snapshot("EDMPrecond", small_ncsnpp(), 3))
    assert isinstance(data["ema"], EDMRecord) and data["ema"].class_name == "EDMPrecond"
    assert data["loss_fn"].class_name == "EDMLoss" and data["augment_pipe"] is None
    assert data["ema"].init_kwargs["resample_filter"] == [1, 3, 3, 1]
    block = data["ema"].state["_modules"]["model"].state["_modules"]["enc"]
    assert block.class_name == "ModuleDict"  # torch container pickled by value
    gain = block.state["_modules"]["8x8_block0"].init_kwargs["gain"]
    assert type(gain) is float and gain == 0.5  # numpy scalar read without numpy's unpickling hooks


def test_iddpm_adm_snapshot_keeps_the_mean_channels(edm_modules):
    net = randomize_(DhariwalUNet(img_resolution=8, in_channels=3, out_channels=6, label_dim=4, model_channels=32,
                                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])).eval()
    reference = build_precond("iddpm", net, label_dim=4, out_channels=3).eval()
    kwargs = dict(C_1=0.001, C_2=0.008, M=1000)
    with pytest.raises(CheckpointError, match='"u"'):
        load_edm_network(edm_snapshot("iDDPMPrecond", net, 3, **kwargs))  # EDM's table u is missing
    loaded = load_edm_network(edm_snapshot("iDDPMPrecond", net, 3, buffers=dict(u=reference.u), **kwargs))
    assert loaded.model.init_kwargs["out_channels"] == 6
    x, sigma, labels = torch.randn(2, 3, 8, 8), reference.round_sigma(torch.tensor([0.5, 20.0])), one_hot([0, 2], 4)
    with torch.no_grad():
        y = loaded(x, sigma, labels)
        assert y.shape == x.shape
        assert torch.equal(y, reference(x, sigma, labels))


def test_code_in_a_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    with pytest.raises(CheckpointError, match="system"):
        read_edm_pickle(pickle.dumps(dict(ema=Evil())))
    assert not (tmp_path / "pwned").exists()


def test_mismatched_weights_and_unknown_classes(edm_modules, tmp_path):
    net = small_ncsnpp()
    data = read_edm_pickle(edm_snapshot("EDMPrecond", net, 3))
    del data["ema"].state["_modules"]["model"].state["_modules"]["map_layer0"].state["_parameters"]["bias"]
    from diffspace.io.edm_pickle import build_from_record

    with pytest.raises(CheckpointError, match="map_layer0.bias"):
        build_from_record(data["ema"])
    with pytest.raises(CheckpointError, match="EDMLoss"):
        load_edm_network(edm_snapshot("EDMPrecond", net, 3), key="loss_fn")
    with pytest.raises(CheckpointError, match="'net'"):
        load_edm_network(edm_snapshot("EDMPrecond", net, 3), key="net")
    with pytest.raises(CheckpointError, match="missing.pkl"):
        load_edm_network(tmp_path / "missing.pkl")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_edm_pickle(b"\x80\x04not a pickle")
