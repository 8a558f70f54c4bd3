"""AMED: the mean-direction step equals DPM-Solver-2 at r = ½, c = 1; fitted per-step r beats r = ½ at equal NFE
on an exact 2-D mixture; the plugins keep their base rule's NFE and reduce to it in the limit r -> 1."""

import math

import pytest
import torch

from diffspace import samplers
from diffspace.design import grids
from diffspace.errors import ConfigError
from diffspace.samplers import problems
from diffspace.tune.amed import fit_amed
from diffspace.tune.gits import _latents

PLUGINS = ("amed", "amed_euler", "amed_ipndm", "amed_dpmpp_2m")


@pytest.fixture(scope="module")
def gmm2():
    P = problems.get("gmm2")
    lat = _latents(P.shape, range(1000, 1256))  # held out: fitting uses seeds 0..63
    # iPNDM with 800 steps: converged to ~1e-10 on this problem (order 4), far below the errors compared here.
    ref = samplers.get("ipndm")(P.denoiser, lat * 80, grids.edm(801, 0.002, 80.0, append_zero=False))
    return P, lat, ref


def err(P, lat, ref, name, sig, **opts):
    out = samplers.get(name)(P.denoiser, lat * sig[0], sig, **opts)
    return float((out - ref).flatten(1).norm(dim=1).mean())


@pytest.mark.parametrize("final_zero", [False, True])
def test_amed_half_is_dpm_solver_2(gmm2, final_zero):
    P, lat, _ = gmm2
    sig = grids.edm(6, 0.002, 80.0, append_zero=final_zero)
    a = samplers.get("amed")(P.denoiser, lat * 80, sig, r=0.5, c=1.0)
    b = samplers.get("dpm_2")(P.denoiser, lat * 80, sig)
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 1e-12 * max(scale, 1.0)
    assert samplers.get("amed").nfe(sig) == samplers.get("dpm_2").nfe(sig)


@pytest.mark.parametrize("steps", [3, 5])
def test_fitted_r_beats_dpm_solver_2_at_equal_nfe(gmm2, steps):
    P, lat, ref = gmm2
    sig = grids.edm(steps + 1, 0.002, 80.0, append_zero=False)
    fit = fit_amed(P.denoiser, sig, shape=P.shape, sampler="amed", warmup=64)
    assert len(fit["r"]) == steps and all(0 < r < 1 for r in fit["r"])
    assert all(abs(c - 1) <= 0.05 + 1e-12 for c in fit["c"])
    fitted = err(P, lat, ref, "amed", sig, r=fit["r"], c=fit["c"])
    dpm2 = err(P, lat, ref, "dpm_2", sig)
    stats = {}
    samplers.get("amed")(P.denoiser, lat * 80, sig, r=fit["r"], c=fit["c"], stats=stats)
    assert stats["nfe"] == samplers.get("dpm_2").nfe(sig) == 2 * steps
    assert fitted < 0.5 * dpm2  # measured: 0.39 vs 2.80 (3 steps), 0.16 vs 0.65 (5 steps)


@pytest.mark.parametrize("name", PLUGINS[1:])
def test_plugins_fitted_beat_their_midpoint_and_count_nfe(gmm2, name):
    P, lat, ref = gmm2
    sig = grids.edm(4, 0.002, 80.0, append_zero=False)
    fit = fit_amed(P.denoiser, sig, shape=P.shape, sampler=name, warmup=64)
    assert err(P, lat, ref, name, sig, r=fit["r"], c=fit["c"]) < err(P, lat, ref, name, sig)
    for s, afs in ((sig, False), (grids.edm(4, 0.002, 80.0), False), (sig, True)):
        stats = {}
        samplers.get(name)(P.denoiser, lat[:4] * s[0], s, afs=afs, stats=stats)
        assert stats["nfe"] == samplers.get(name).nfe(s, afs=afs) == 2 * (len(s) - 1) - int(s[-1] == 0) - afs


def test_plugin_with_r_near_one_is_its_base_sampler_on_the_doubled_grid(gmm2):
    # With c = 1 the plugin is the base sampler on the grid with σ_m inserted in every step.
    P, lat, _ = gmm2
    sig = grids.edm(5, 0.002, 80.0, append_zero=False)
    r = 0.3
    mids = sig[1:] ** r * sig[:-1] ** (1 - r)
    doubled = torch.stack([sig[:-1], mids], 1).flatten()
    doubled = torch.cat([doubled, sig[-1:]])
    for name, base in (("amed_euler", "euler"), ("amed_ipndm", "ipndm"), ("amed_dpmpp_2m", "dpmpp_2m")):
        a = samplers.get(name)(P.denoiser, lat * 80, sig, r=r)
        b = samplers.get(base)(P.denoiser, lat * 80, doubled)
        assert float((a - b).abs().max()) < 1e-10, name


def test_bad_amed_options(gmm2):
    P, lat, _ = gmm2
    sig = grids.edm(4, 0.002, 80.0, append_zero=False)
    with pytest.raises(ConfigError, match="one per step"):
        samplers.get("amed")(P.denoiser, lat * 80, sig, r=[0.5, 0.5])
    with pytest.raises(ConfigError, match="must lie in"):
        samplers.get("amed")(P.denoiser, lat * 80, sig, r=1.5)
    with pytest.raises(ConfigError, match="sigma_min > 0"):
        fit_amed(P.denoiser, grids.edm(4), shape=P.shape)
    assert math.isfinite(err(P, lat, lat, "amed", sig, c=[1.0, 1.01, 0.99]))
