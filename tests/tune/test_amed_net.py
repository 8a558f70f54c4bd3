"""AMED's predictor network on a diffspace U-Net: trains on CPU through a forward hook without touching the
network's parameters, lowers the error against the teacher, and round-trips through its file."""

import pytest
import torch

from diffspace import samplers
from diffspace.design import grids
from diffspace.design.precond import EDMPrecond
from diffspace.errors import CheckpointError, ConfigError
from diffspace.nets.presets import build_network
from diffspace.tune.amed_net import AMEDPredictor, train_predictor
from diffspace.tune.gits import _latents


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    unet = build_network("ddpmpp-small", img_resolution=16, img_channels=1, model_channels=8, channel_mult=[1, 2],
                         num_blocks=1, attn_resolutions=[])
    # A random network has a near-zero output layer; give it a non-trivial denoiser by scaling that layer up.
    with torch.no_grad():
        for p in unet.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)
    return EDMPrecond(unet, img_resolution=16, img_channels=1).eval()


@pytest.mark.slow
def test_predictor_trains_and_beats_midpoint(tiny_unet, tmp_path):
    net = tiny_unet
    sig = grids.edm(4, 0.002, 80.0, append_zero=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pred = train_predictor(net, sig, shape=(1, 16, 16), warmup=32, epochs=10, batch=16, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # network untouched
    assert all(p.grad is None for p in net.parameters())
    lat = _latents((1, 16, 16), range(1000, 1016))
    fine = grids.edm(61, 0.002, 80.0, append_zero=False)
    with torch.no_grad():
        ref = samplers.get("ipndm")(net, lat * 80, fine)
        half = samplers.get("amed")(net, lat * 80, sig)
        learned = samplers.get("amed")(net, lat * 80, sig, predictor=pred)
    e_half = float((half - ref).flatten(1).norm(dim=1).mean())
    e_learned = float((learned - ref).flatten(1).norm(dim=1).mean())
    assert e_learned < e_half
    path = tmp_path / "amed.safetensors"
    pred.save(path)
    with torch.no_grad():
        again = samplers.get("amed")(net, lat * 80, sig, predictor=str(path))
    assert torch.equal(again, learned)
    with pytest.raises(ConfigError, match="trained for the grid"):
        samplers.get("amed")(net, lat * 80, grids.edm(6, 0.002, 80.0, append_zero=False), predictor=pred)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError):
        AMEDPredictor.load(tmp_path / "bad.safetensors")


def test_predictor_needs_a_unet():
    from diffspace.samplers import problems

    P = problems.get("gmm2")
    with pytest.raises(ConfigError, match="diffspace U-Net"):
        train_predictor(P.denoiser, grids.edm(3, 0.002, 80.0, append_zero=False), shape=P.shape, warmup=4)
