"""Guidance as a denoiser: w = 0 and w = 1 give the reference and the conditional denoiser bit for bit, the formula
D_ref + w·(D − D_ref) in between, every sampler runs on it, the network-evaluation count is 2 per denoiser call
(one batched forward for classifier-free guidance), and mismatched guiding networks are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffspace import samplers
from diffspace.cli import main
from diffspace.errors import ConfigError
from diffspace.external import Guided
from diffspace.io.checkpoint import save_network

from .test_edm_snapshots import _unet


class GaussianClasses:
    """Exact denoiser of class-conditional data y ~ N(μ_c, s² I) (μ = labels @ means; the all-zero null label
    gives μ = 0): D = μ + s²/(s² + σ²)·(x − μ). Counts forwards and the batch sizes it sees."""

    def __init__(self, means, s=0.5, dim=4):
        self.means, self.s, self.label_dim, self.sigma_min, self.sigma_max = means, s, len(means), 0.0, float("inf")
        self.shape, self.batches = (dim,), []

    def __call__(self, x, sigma, class_labels=None):
        self.batches.append(x.shape[0])
        mu = torch.zeros_like(x) if class_labels is None else class_labels.to(x.dtype) @ self.means.to(x.dtype)
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        return mu + self.s**2 / (self.s**2 + sigma**2) * (x - mu)


def _inputs(b=5, label_dim=3, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, *shape, generator=g, dtype=torch.float64) * 3
    sigma = torch.rand(b, generator=g, dtype=torch.float64) * 5 + 0.1
    labels = torch.eye(label_dim)[torch.randint(label_dim, (b,), generator=g)]
    return x, sigma, labels


@torch.no_grad()
def test_weights_zero_and_one_are_exact_for_cfg_and_autoguidance():
    net, weak = _unet(seed=0), _unet(seed=7)
    x, sigma, labels = _inputs()
    null = torch.zeros_like(labels)
    cond, uncond = net(x, sigma, labels), net(x, sigma, null)
    assert (cond - uncond).abs().max() > 1e-3  # the label matters
    # Two forwards: exactly the two denoisers.
    assert torch.equal(Guided(net, 0.0, batch=False)(x, sigma, labels), uncond)
    assert torch.equal(Guided(net, 1.0, batch=False)(x, sigma, labels), cond)
    # One batched forward: exactly the two halves of the doubled batch.
    both = net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
    assert torch.equal(Guided(net, 0.0)(x, sigma, labels), both[5:])
    assert torch.equal(Guided(net, 1.0)(x, sigma, labels), both[:5])
    # Autoguidance: the weak network is the reference.
    ref = weak(x, sigma, labels)
    assert torch.equal(Guided(net, 0.0, weak)(x, sigma, labels), ref)
    assert torch.equal(Guided(net, 1.0, weak)(x, sigma, labels), cond)
    for w in (0.3, 2.5, -1.0):
        torch.testing.assert_close(Guided(net, w, weak)(x, sigma, labels), ref + w * (cond - ref), rtol=1e-5,
                                   atol=1e-5)


def test_cfg_of_gaussian_classes_extrapolates_the_class_mean():
    """For the exact denoisers, D_w = μ_w + s²/(s²+σ²)(x − μ_w) with μ_w = w·μ_c (null mean 0): closed form."""
    means = torch.randn(3, 4, dtype=torch.float64)
    D = GaussianClasses(means)
    x, sigma, labels = _inputs(b=6, shape=(4,))
    w = 3.0
    mu = w * labels.double() @ means
    want = mu + 0.25 / (0.25 + sigma.reshape(-1, 1) ** 2) * (x - mu)
    torch.testing.assert_close(Guided(D, w)(x, sigma, labels), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_runs_guided_and_counts_two_network_evaluations_per_call(name):
    means = torch.randn(3, 4, dtype=torch.float64)
    entry = samplers.get(name)
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.2, 0.05, 0.0], dtype=torch.float64)
    if entry.positive_end:
        sigmas = sigmas[:-1]
    x, _, labels = _inputs(b=6, shape=(4,))
    for autoguide in (False, True):
        main_net, weak = GaussianClasses(means), GaussianClasses(0.5 * means)
        G = Guided(main_net, 2.0, weak if autoguide else None)
        stats = {}
        kw = {"noise": samplers.StackedRandom(range(6))} if "noise" in entry.options else {}
        out = entry(G, x * sigmas[0], sigmas, extra_args={"class_labels": labels}, stats=stats, **kw)
        assert torch.isfinite(out).all()
        nfe = stats["nfe"] if entry.adaptive else entry.nfe(sigmas)  # adaptive: known only after the run
        assert stats["nfe"] == nfe == G.calls and G.network_evals == 2 * nfe
        if autoguide:  # two networks, one forward each per call
            assert G.forwards == 2 * nfe and main_net.batches == weak.batches == [6] * nfe
        else:  # one network, one forward of the doubled batch per call
            assert G.forwards == nfe and main_net.batches == [12] * nfe


def test_mismatched_guiding_networks_are_refused():
    net = _unet(label_dim=3)
    with pytest.raises(ConfigError, match="label_dim 0 but the main network has 3"):
        Guided(net, 2.0, _unet(label_dim=0))
    wide = _unet(label_dim=3)
    wide.img_resolution, wide.img_channels = 16, 1
    with pytest.raises(ConfigError, match=r"shape \[1, 16, 16\] but the main network \[1, 8, 8\]"):
        Guided(net, 2.0, wide)
    with pytest.raises(ConfigError, match="needs a class-conditional network"):
        Guided(_unet(label_dim=0), 2.0)
    with pytest.raises(ConfigError, match="finite"):
        Guided(net, float("nan"))


def test_generate_with_guidance(tmp_path, capsys):
    save_network(tmp_path / "net.safetensors", _unet(seed=0))
    save_network(tmp_path / "weak.safetensors", _unet(seed=7))
    torch.manual_seed(0)
    from diffspace.design.precond import EDMPrecond
    from diffspace.nets import build_network

    other = EDMPrecond(build_network("ddpmpp-small", img_resolution=16, img_channels=1, label_dim=3, model_channels=8,
                                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[]), label_dim=3)
    save_network(tmp_path / "other.safetensors", other)
    common = ["generate", "--network", str(tmp_path / "net.safetensors"), "--seeds", "0-3", "--steps", "5",
              "--sampler", "euler", "--no-progress"]
    npz = {k: tmp_path / f"{k}.npz" for k in ("plain", "w1", "w3", "auto")}
    assert main([*common, "--npz", str(npz["plain"])]) == 0
    assert "NFE 5 per image" in capsys.readouterr().out
    assert main([*common, "--npz", str(npz["w1"]), "--guidance", "1", "--guidance-net",
                 str(tmp_path / "weak.safetensors")]) == 0
    assert "NFE 5 (10 network evaluations with guidance)" in capsys.readouterr().out
    assert main([*common, "--npz", str(npz["w3"]), "--guidance", "3"]) == 0
    assert main([*common, "--npz", str(npz["auto"]), "--guidance", "3", "--guidance-net",
                 str(tmp_path / "weak.safetensors")]) == 0
    images = {k: np.load(v)["images"] for k, v in npz.items()}
    assert np.array_equal(images["w1"], images["plain"])  # w = 1 is the conditional network itself
    assert not np.array_equal(images["w3"], images["plain"]) and not np.array_equal(images["auto"], images["w3"])
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    for extra, needle in ((["--guidance", "2", "--guidance-net", str(tmp_path / "other.safetensors")], "shape"),
                          (["--guidance-net", str(tmp_path / "weak.safetensors")], "needs a guidance weight")):
        assert main([*common, "--npz", str(bad), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, err
    assert not bad.exists()
