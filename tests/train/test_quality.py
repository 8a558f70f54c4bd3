"""Exact-quality test: an MLP trained for about a minute on toy:gmm8 and sampled with Heun reproduces the true
mixture's component weights and likelihood.

Ground truth is the data set's own mixture (8 Gaussians, std 0.1, weights (k+1)/36): samples are assigned to
components with GaussianMixture.responsibilities and scored with GaussianMixture.log_prob.
"""

import math

import pytest
import torch

from diffspace.data import open_dataset
from diffspace.denoisers import GaussianMixture
from diffspace.io import load_network
from diffspace.train.loop import train
from diffspace.train.preview import sample

N_SAMPLES = 4000
STEPS = 40  # Heun steps (NFE 79)


def _scores(gmm: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    x = x.to(torch.float64)
    freq = torch.bincount(gmm.responsibilities(x).argmax(1), minlength=gmm.K).double() / len(x)
    return freq, float(-gmm.log_prob(x).mean())


@pytest.mark.slow
def test_mlp_on_gmm8_matches_the_true_mixture(tmp_path):
    ds = open_dataset("toy:gmm8")
    gmm = GaussianMixture(*ds.mixture())
    # About a minute on 2 CPU cores: 1950 Adam steps of 2048 points (EDM loss and optimiser; a short run needs a
    # short LR warm-up and an EMA of the last quarter of training, hence lr_rampup and ema/ema_rampup).
    train(dict(data="toy:gmm8", outdir=str(tmp_path / "run"), arch="mlp",
               net_kwargs={"hidden": 128, "num_layers": 3}, batch=2048, duration=4.0, lr=5e-3, lr_rampup=0.04,
               ema=0.25, ema_rampup=0.25, tick=1000, snap=0, dump=0, sample_every=0, progress=False, seed=0),
          log=lambda *a: None)
    net = load_network(tmp_path / "run")
    freq, nll = _scores(gmm, sample(net, (2,), N_SAMPLES, steps=STEPS, seed=10_000))
    _, nll_data = _scores(gmm, ds.sample(20_000, torch.Generator().manual_seed(5)))
    print(f"max |freq - weight| = {float((freq - gmm.weights).abs().max()):.4f}, NLL {nll:.4f}, data {nll_data:.4f}")

    # Component frequencies: binomial SE ≤ sqrt(0.22·0.78/4000) = 0.66 pp, so 3 pp is 4.5 SE (max over 8).
    assert float((freq - gmm.weights).abs().max()) < 0.03, (freq - gmm.weights).tolist()
    # Mean NLL: the exact denoiser with this sampler matches the data to within sampling noise (SE of the
    # difference sqrt(1.11²/4000 + 1.11²/20000) = 0.019 nats). Tolerance 0.15 nats = 8 SE, and in model terms:
    # modes too wide by ≤ 7% (a 2-D Gaussian of std s(1+δ) scored under std s costs ≈ 2δ nats), or ≤ 1.5% of
    # samples off their modes by 3 std or more (≥ 4.5 nats each, ≥ 10 nats between adjacent modes).
    assert abs(nll - nll_data) < 0.15, f"NLL {nll:.3f} vs data {nll_data:.3f}"


def test_exact_denoiser_calibrates_the_metric():
    # The same sampler and metric applied to the exact mixture denoiser: the yardstick the tolerance above uses.
    ds = open_dataset("toy:gmm8")
    gmm = GaussianMixture(*ds.mixture())
    freq, nll = _scores(gmm, sample(gmm, (2,), N_SAMPLES, steps=STEPS, seed=10_000))
    _, nll_data = _scores(gmm, ds.sample(20_000, torch.Generator().manual_seed(5)))
    assert float((freq - gmm.weights).abs().max()) < 0.03
    assert abs(nll - nll_data) < 4 * math.sqrt(1.12**2 / N_SAMPLES + 1.12**2 / 20_000)  # 4 SE of sampling noise
