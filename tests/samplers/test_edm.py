"""EDM samplers: identities of spec §5 item 4, convergence orders, Table-1 combinations, seeds, bad input."""

import math

import pytest
import torch

from diffspace import grids, samplers
from diffspace.denoisers import GaussianMixture
from diffspace.errors import ConfigError, NumericalError
from diffspace.samplers.reference import solve

from .problems_fixture import gmm, slope


def test_one_euler_step_to_zero_returns_denoiser_exactly():
    D = gmm()
    x = torch.randn(8, 2, dtype=torch.float64) * 3
    for sampler in (samplers.euler, samplers.heun, samplers.edm):
        out = sampler(D, x, torch.tensor([3.0, 0.0], dtype=torch.float64))
        assert torch.equal(out, D(x, 3.0))


def test_churn_cap_and_noise_before_denoiser():
    D = gmm()
    seen = []
    sig = grids.edm(5)
    x = torch.randn(4, 2, dtype=torch.float64) * sig[0]
    samplers.edm(D, x, sig, S_churn=1e6, callback=seen.append, noise=samplers.StackedRandom(range(4)))
    for info in seen:
        # γ capped at √2 − 1 ⇒ t̂ ≤ √2·t (up to one rounding of the product).
        assert info["sigma_hat"] <= math.sqrt(2) * info["sigma"] * (1 + 1e-15)
        assert abs(info["sigma_hat"] / info["sigma"] - math.sqrt(2)) < 1e-12
        # The denoiser saw the churned x̂ at σ̂ (its output equals D(x̂; σ̂) for the reported x).
        assert torch.equal(info["denoised"], D(info["x"], info["sigma_hat"]))
    # S_tmin/S_tmax are inclusive and use the pre-churn σ.
    seen.clear()
    samplers.edm(D, x, sig, S_churn=10, S_tmin=float(sig[2]), S_tmax=float(sig[1]), callback=seen.append)
    churned = [i["sigma_hat"] > i["sigma"] for i in seen]
    assert churned == [False, True, True, False, False]


@pytest.mark.parametrize("name", ["euler", "heun", "edm"])
@pytest.mark.parametrize("n", [1, 5, 18])
def test_nfe_formulas_match_counted_calls(name, n):
    D = gmm()
    calls = []

    def counted(x, sigma):
        calls.append(1)
        return D(x, sigma)

    for sig in (grids.edm(n), grids.edm(n + 1, append_zero=False)):
        calls.clear()
        stats = {}
        s = samplers.get(name)
        s(counted, torch.zeros(2, 2, dtype=torch.float64), sig, stats=stats)
        assert len(calls) == stats["nfe"] == s.nfe(sig)
    if name != "euler":
        assert samplers.get(name).nfe(grids.edm(n)) == 2 * n - 1  # EDM: NFE = 2N − 1


def _errors(D, shape, ns, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * 80
    ref = solve(D, x0, 80.0, 0.002, rtol=1e-11, atol=1e-11)
    out = {"euler": [], "heun": []}
    for n in ns:
        sig = grids.edm(n, append_zero=False)  # stop at σ_min: no final jump (spec §5 item 1)
        for name in out:
            diff = samplers.get(name)(D, x0, sig) - ref
            out[name].append(float(diff.flatten(1).norm(dim=1).mean()))
    return out


NS = [16, 32, 64, 128, 256]


@pytest.mark.parametrize("shape", [(2,), (3, 8, 8)])
def test_convergence_orders_on_exact_gmm(shape):
    D = gmm(shape, K=3)
    errs = _errors(D, shape, NS, batch=8 if len(shape) == 1 else 4)
    # Spec §5 item 1: slopes −1 (Euler) and −2 (Heun) in N over N ∈ [16, 256]; acceptance tolerance ±0.15.
    assert abs(slope(NS, errs["euler"]) + 1) < 0.15, errs
    assert abs(slope(NS, errs["heun"]) + 2) < 0.15, errs
    assert all(h < e for h, e in zip(errs["heun"], errs["euler"]))


U = grids.iddpm_table()
SIG_MAX, SIG_MIN = float(U[8]), float(U[999])  # exact iDDPM levels, so every discretisation shares both ends


def test_table1_combinations_converge_to_same_endpoint():
    D = gmm()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ref = solve(D, latents * SIG_MAX, SIG_MAX, SIG_MIN, rtol=1e-12, atol=1e-12)
    target = D(ref, SIG_MIN)  # the final Euler step to σ=0 lands on D(x(σ_min); σ_min) in σ(t)=t, s=1 space
    for disc in ("vp", "ve", "iddpm", "edm"):
        for schedule in ("vp", "ve", "linear"):
            for scaling in ("vp", "none"):
                errs = []
                for n in (64, 512):
                    last = {}

                    def keep(info, last=last):
                        last.update(info)

                    samplers.ablation(D, latents, num_steps=n, sigma_min=SIG_MIN, sigma_max=SIG_MAX,
                                      discretization=disc, schedule=schedule, scaling=scaling, callback=keep)
                    assert abs(float(last["sigma_hat"]) - SIG_MIN) < 1e-12 * SIG_MAX
                    errs.append(float((last["denoised"] - target).norm(dim=1).max()))
                label = (disc, schedule, scaling, errs)
                # Heun is 2nd order: 8× more steps (64 → 512) must shrink the error by more than 16× (64×
                # asymptotically) unless it is at the reference's floor. The slowest combinations (iDDPM levels
                # in VE or VP time without scaling) are at 2.3 and 1.0 after 64 steps and 0.034 and 0.011 after
                # 512, on data of scale ~2; the EDM choices are at 6e-5.
                assert errs[1] < 0.05 and (errs[1] < errs[0] / 16 or errs[1] < 1e-8), label


def test_fast_path_agrees_with_generic_table1_sampler():
    D = gmm((3, 8, 8))
    rng = samplers.StackedRandom(range(5))
    latents = rng.randn([3, 8, 8], dtype=torch.float64)
    sig = grids.edm(18)
    fast = samplers.heun(D, latents * sig[0], sig)
    generic = samplers.ablation(D, latents, num_steps=18)
    assert (fast - generic).abs().max() < 1e-10
    # With churn, both draw the same per-seed noise at the same steps.
    opts = dict(S_churn=30, S_noise=1.007, S_tmin=0.05, S_tmax=50)
    fast = samplers.edm(D, latents * sig[0], sig, noise=samplers.StackedRandom(range(5)), **opts)
    generic = samplers.ablation(D, latents, num_steps=18, noise=samplers.StackedRandom(range(5)), S_churn=30,
                                S_noise=1.007, S_min=0.05, S_max=50)
    assert (fast - generic).abs().max() < 1e-10


def test_seeds_give_bit_identical_samples_for_any_batch_size():
    D = gmm((3, 8, 8), K=4)
    sig = grids.edm(10)

    def run(seeds):
        rng = samplers.StackedRandom(seeds)
        x = rng.randn([3, 8, 8], dtype=torch.float64) * sig[0]
        return samplers.edm(D, x, sig, noise=rng, S_churn=40)

    full = run(range(64))
    for batch in (1, 7):
        parts = torch.cat([run(range(i, min(i + batch, 64))) for i in range(0, 64, batch)])
        assert torch.equal(parts, full)


def test_heun_alpha_family_single_steps():
    # 1-D Gaussian N(m, v): D(z; σ) = m + v/(v + σ²)(z − m). One step of EDM's α-family from σ to σ' (not 0):
    # x' = x + h((1 − 1/(2α))d + d_α/(2α)), d_α the slope at (σ + αh, x + αh·d); α = ½ is the midpoint rule.
    m, v, z, s, s1 = 0.7, 0.3, 3.0, 2.0, 0.5
    D = GaussianMixture([1.0], [[m]], [[v]])

    def slope(z, s):
        return (z - (m + v / (v + s * s) * (z - m))) / s

    h = s1 - s
    for alpha in (0.5, 0.75):
        zm, sm = z + alpha * h * slope(z, s), s + alpha * h
        want = z + h * ((1 - 1 / (2 * alpha)) * slope(z, s) + slope(zm, sm) / (2 * alpha))
        got = float(samplers.heun(D, torch.tensor([[z]], dtype=torch.float64), torch.tensor([s, s1]), alpha=alpha))
        assert abs(got - want) < 1e-14, alpha
    # Midpoint and Heun differ at second order in h: both are O(h³) per step, so their difference is not 0.
    heun1 = float(samplers.heun(D, torch.tensor([[z]], dtype=torch.float64), torch.tensor([s, s1])))
    assert abs(heun1 - got) > 1e-4


def test_vp_discretisation_default_sigma_min_follows_epsilon_s():
    # EDM: σ_min = σ_VP(ε_s) with β_d = 19.9, β_min = 0.1, i.e. sqrt(exp(½β_d ε_s² + β_min ε_s) − 1).
    D = gmm()
    for eps in (1e-3, 1e-2):
        seen = []
        samplers.ablation(D, torch.zeros(1, 2, dtype=torch.float64), num_steps=5, discretization="vp",
                          epsilon_s=eps, solver="euler", callback=seen.append)
        want = math.sqrt(math.exp(0.5 * 19.9 * eps**2 + 0.1 * eps) - 1)
        assert abs(float(seen[-1]["sigma"]) - want) < 1e-12 * want, (eps, float(seen[-1]["sigma"]), want)


def test_float32_state_on_request():
    D = gmm()
    x = torch.randn(3, 2, dtype=torch.float64) * 80
    sig = grids.edm(12)
    seen = []
    out32 = samplers.heun(D, x, sig, dtype=torch.float32, callback=lambda i: seen.append(i["x"].dtype))
    assert set(seen) == {torch.float32} and out32.dtype == torch.float64
    assert (out32 - samplers.heun(D, x, sig)).abs().max() < 1e-3  # float32 rounding over 35 evaluations


def test_nan_from_denoiser_names_step_and_sigma():
    D = gmm()

    def broken(x, sigma):
        out = D(x, sigma)
        return out * float("nan") if float(sigma[0]) < 1 else out

    with pytest.raises(NumericalError, match=r"step \d+ \(sigma=0\.\d+"):
        samplers.heun(broken, torch.zeros(2, 2, dtype=torch.float64), grids.edm(10))


def test_bad_input_errors():
    D = gmm()
    with pytest.raises(ConfigError, match=r"expects \[batch, 2\]"):
        samplers.euler(D, torch.zeros(2, 3), grids.edm(4))
    with pytest.raises(ConfigError, match="strictly decreasing"):
        samplers.euler(D, torch.zeros(2, 2), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ConfigError, match="does not take option.*S_churn"):
        samplers.get("heun")(D, torch.zeros(2, 2), grids.edm(4), S_churn=1.0)
    with pytest.raises(ConfigError, match="unknown sampler 'nope'.*euler"):
        samplers.get("nope")


def test_callback_payload_and_names():
    D = GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    infos = []
    samplers.heun(D, torch.ones(1, 2), grids.edm(3), callback=infos.append)
    assert [i["i"] for i in infos] == [0, 1, 2]
    assert set(infos[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert {"euler", "heun", "edm"} <= set(samplers.names())


@pytest.mark.parametrize("name,options,sig", [
    ("dpmpp_2m", {"afs": True}, grids.edm(8)),
    ("ipndm", {"afs": True, "max_order": 3}, grids.edm(8)),
    ("ddim_type", {"denoise_to_zero": True}, grids.edm(8, append_zero=False)),
])
def test_nfe_formula_takes_options_that_change_the_count(name, options, sig):
    D = gmm()
    stats = {}
    samplers.get(name)(D, torch.ones(2, 2, dtype=torch.float64) * sig[0], sig, stats=stats, **options)
    assert stats["nfe"] == samplers.get(name).nfe(sig, **options) != samplers.get(name).nfe(sig)
