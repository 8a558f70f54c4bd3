"""ODE-Jump: stopping at step k returns D(x_{k-1}; σ_{k-1}) of the unchanged run, costs k NFE with Euler (saves
N − k), equals the full run at k = N, and works through diffspace.generate and `diffspace generate --jump-at`."""

import numpy as np
import pytest
import torch

from diffspace import generate as G
from diffspace import samplers
from diffspace.denoisers import GaussianMixture
from diffspace.design import grids
from diffspace.errors import ConfigError
from diffspace.geometry import check_jump, jump_outputs, ode_jump, record


def _mixture(shape=(4,)):
    g = torch.Generator().manual_seed(0)
    d = int(np.prod(shape))
    means = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), means, torch.full((3, d), 0.05, dtype=torch.float64))


def test_euler_jump_saves_n_minus_k_and_k_equal_n_is_the_full_run():
    model, sigmas = _mixture(), grids.edm(12)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    traj = record("euler", model, x, sigmas)
    N = 12
    for k in range(1, N + 1):
        j = ode_jump("euler", model, x, sigmas, k)
        assert (j.nfe, j.nfe_full, j.nfe_saved) == (k, N, N - k)
        torch.testing.assert_close(j.x, traj.denoised[k - 1], rtol=0, atol=0)
    assert torch.equal(ode_jump("euler", model, x, sigmas, N).x, traj.final)  # the last Euler step lands on D
    outputs, nfe = jump_outputs(traj)
    assert nfe.tolist() == list(range(1, N + 1)) and outputs is traj.denoised


def test_heun_jump_costs_two_per_full_step_plus_one():
    model, sigmas = _mixture(), grids.edm(8)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    traj = record("heun", model, x, sigmas)
    for k in (1, 4, 8):
        j = ode_jump("heun", model, x, sigmas, k)
        assert j.nfe == 2 * (k - 1) + 1 and j.nfe_saved == 2 * 8 - 1 - j.nfe
        assert j.nfe == int(traj.nfe_at[k - 1])
        torch.testing.assert_close(j.x, traj.denoised[k - 1], rtol=0, atol=0)


def test_jump_step_outside_the_run_is_refused():
    sigmas = grids.edm(5)
    for k in (0, 6, -1, 2.5, True):
        with pytest.raises(ConfigError, match="outside the run"):
            check_jump(k, sigmas)


def test_generate_sample_with_jump_at_matches_the_recorded_run():
    model = _mixture((1, 4, 4))
    seeds = [3, 4, 5]
    stats: dict = {}
    out, _ = G.sample(model, seeds, sampler="euler", steps=10, shape=(1, 4, 4), jump_at=6, stats=stats)
    sigmas = G.noise_levels(model, 10)
    latents = samplers.StackedRandom(seeds).randn((1, 4, 4), dtype=torch.float32).to(torch.float64)
    traj = record("euler", model, latents * sigmas[0], sigmas)
    torch.testing.assert_close(out, traj.denoised[5], rtol=0, atol=0)
    assert stats["nfe"] == 6
    with pytest.raises(ConfigError, match="outside the run"):
        G.check_sampler(model, "euler", steps=10, jump_at=11)
    with pytest.raises(ConfigError, match="ablation"):
        G.check_sampler(model, "ablation", steps=10, jump_at=3)


def test_cli_generate_jump_at(tmp_path):
    from diffspace.cli import main
    from diffspace.io.checkpoint import save_network
    from tests.test_generate import _unet

    ckpt = tmp_path / "network-snapshot-000000.safetensors"
    save_network(ckpt, _unet(res=8, channels=1))
    net, _ = G.load(ckpt)
    assert main(["generate", "--network", str(ckpt), "--seeds", "0-3", "--sampler", "euler", "--steps", "8",
                 "--jump-at", "5", "--npz", str(tmp_path / "jump.npz"), "--no-progress"]) == 0
    with np.load(tmp_path / "jump.npz") as z:
        images = z["images"]
    expected = G.generate(net, range(4), sampler="euler", steps=8, jump_at=5)
    assert np.array_equal(images, expected.images) and expected.nfe == 5
    full = G.generate(net, range(4), sampler="euler", steps=8)
    assert not np.array_equal(images, full.images)
    assert main(["generate", "--network", str(ckpt), "--seeds", "0-3", "--steps", "8", "--jump-at", "9",
                 "--npz", str(tmp_path / "bad.npz")]) == 2
    assert not (tmp_path / "bad.npz").exists()
