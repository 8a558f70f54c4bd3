"""Checkpoint files: round trips, atomic writes, detection of truncated/corrupted files, no code execution."""

import json
import os

import pytest
import torch

from diffspace.design.precond import EDMPrecond, VEPrecond, VPPrecond
from diffspace.errors import CheckpointError, ConfigError
from diffspace.io import checkpoint as ckpt
from diffspace.nets import build_network
from diffspace.train.state import optimizer_from_tensors, optimizer_to_tensors, rng_from_tensors, rng_to_tensors


def _mlp_precond(cls=EDMPrecond, **kw):
    torch.manual_seed(0)
    net = build_network("mlp", img_resolution=None, img_channels=2, label_dim=3, hidden=32, num_layers=2)
    with torch.no_grad():  # make the output layer non-trivial (it is initialised ×1e-5)
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return cls(net, label_dim=3, **kw)


@pytest.mark.parametrize("cls,kw", [(EDMPrecond, {"sigma_data": 0.7}), (VPPrecond, {}), (VEPrecond, {})])
def test_network_round_trip(tmp_path, cls, kw):
    net = _mlp_precond(cls, **kw)
    path = tmp_path / "network-snapshot-000001.safetensors"
    ckpt.save_network(path, net, info={"kimg": 1})
    back = ckpt.load_network(path)
    assert type(back) is cls and not back.training
    x, sigma = torch.randn(5, 2), torch.tensor([0.01, 0.1, 1.0, 10.0, 50.0])
    labels = torch.eye(3)[[0, 1, 2, 0, 1]]
    assert torch.equal(back(x, sigma, labels), net(x, sigma, labels))
    assert back.sigma_min == net.sigma_min and back.sigma_max == net.sigma_max  # inf survives JSON for EDM
    assert ckpt.load_network(tmp_path) is not None  # a run folder picks its newest snapshot


def test_unet_round_trip(tmp_path):
    torch.manual_seed(1)
    unet = build_network("ddpmpp-small", img_resolution=8, img_channels=1, model_channels=16,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    net = EDMPrecond(unet)
    path = tmp_path / "n.safetensors"
    ckpt.save_network(path, net)
    back = ckpt.load_network(path)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(back(x, torch.tensor([0.5, 2.0])), net(x, torch.tensor([0.5, 2.0])))


def test_truncated_and_corrupted_files_are_detected(tmp_path):
    net = _mlp_precond()
    path = tmp_path / "n.safetensors"
    ckpt.save_network(path, net)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        ckpt.load_network(tmp_path / "trunc.safetensors")
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # one byte of tensor data
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="sha256"):
        ckpt.load_network(tmp_path / "flip.safetensors")


def test_latest_state_falls_back_to_previous_good(tmp_path):
    t = {"net.w": torch.arange(4.0)}
    ckpt.save_training_state(tmp_path / "training-state-000001.safetensors", t, {"step": 1}, {"a": 1})
    ckpt.save_training_state(tmp_path / "training-state-000002.safetensors", t, {"step": 2}, {"a": 1})
    newest = tmp_path / "training-state-000002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])  # a torn write that somehow got the final name
    skipped = []
    path, tensors, state, config = ckpt.latest_training_state(tmp_path, on_skip=lambda p, m: skipped.append(p))
    assert path.name == "training-state-000001.safetensors" and state == {"step": 1} and config == {"a": 1}
    assert skipped == [newest]
    assert ckpt.latest_training_state(tmp_path / "nothing-here") is None


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "config.json"
    ckpt.atomic_write_text(path, "good")

    def explode(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.atomic_write(path, explode)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="not writable"):
        ckpt.ensure_writable_dir(blocker / "run")


def test_config_never_names_arbitrary_code(tmp_path):
    net = _mlp_precond()
    path = tmp_path / "n.safetensors"
    ckpt.save_network(path, net)
    tensors, meta = ckpt.read_tensors(path)
    config = json.loads(meta["config"])
    config["network"]["class"] = "os.system"
    with pytest.raises(ConfigError, match="unknown network class"):
        ckpt.build_from_config(config)
    config["network"]["class"] = "MLP"
    config["precond"]["class"] = "subprocess.Popen"
    with pytest.raises(CheckpointError, match="unknown preconditioner"):
        ckpt.build_from_config(config)


def test_optimizer_and_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p], lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step()
    tensors, groups = optimizer_to_tensors(opt)
    rng_t, rng_info = rng_to_tensors()
    path = tmp_path / "training-state-000000.safetensors"
    ckpt.save_training_state(path, {**tensors, **rng_t}, {"optimizer": groups, "rng": rng_info}, {})
    expect = (torch.rand(3), np.random.rand(3), random.random())
    loaded, state, _ = ckpt.load_training_state(path)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.Adam([q], lr=5.0)
    optimizer_from_tensors(opt2, loaded, state["optimizer"])
    rng_from_tensors(loaded, state["rng"])
    assert torch.equal(torch.rand(3), expect[0]) and np.array_equal(np.random.rand(3), expect[1])
    assert random.random() == expect[2]
    for o, w in ((opt, p), (opt2, q)):
        o.zero_grad()
        (w**2).sum().backward()
        o.step()
    assert torch.equal(p, q)  # same moments, step count and lr after the round trip


def test_snapshot_names_and_listing(tmp_path):
    assert ckpt.snapshot_name("network-snapshot", 12_345) == "network-snapshot-000012.safetensors"
    for k in (3, 12, 7):
        (tmp_path / f"training-state-{k:06d}.safetensors").write_bytes(b"")
    (tmp_path / ".training-state-000099.safetensors.abc.tmp").write_bytes(b"")
    assert [p.name[-18:-12] for p in ckpt.list_checkpoints(tmp_path)] == ["000012", "000007", "000003"]
    assert os.path.exists(tmp_path / ".training-state-000099.safetensors.abc.tmp")
