"""Convergence lab: its metrics against closed forms, exact moment propagation, the built-in problems, the
NFE-budget rule and the `diffspace converge` command (outputs, bad input)."""

import json
import math

import pytest
import torch

from diffspace import grids, samplers
from diffspace.cli import main
from diffspace.denoisers import GaussianMixture
from diffspace.errors import ConfigError
from diffspace.samplers import converge, problems


def test_fit_slope_recovers_power_laws():
    ns = [8, 16, 32, 64]
    assert abs(converge.fit_slope(ns, [3.0 * n**-2.5 for n in ns]) + 2.5) < 1e-12
    assert math.isnan(converge.fit_slope([8], [1.0]))


def test_gaussian_distances_closed_forms():
    # 1-D: H² = 1 − sqrt(2s1s2/(s1² + s2²))·exp(−(m1 − m2)²/(4(s1² + s2²))), KL = log(s2/s1) + (s1² + Δm²)/(2s2²) − ½.
    m1, s1, m2, s2 = 0.3, 0.8, -0.1, 1.1
    out = converge.gaussian_distances([m1], [[s1**2]], [m2], [[s2**2]])
    h2 = 1 - math.sqrt(2 * s1 * s2 / (s1**2 + s2**2)) * math.exp(-((m1 - m2) ** 2) / (4 * (s1**2 + s2**2)))
    kl = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert abs(out["hellinger"] - math.sqrt(h2)) < 1e-12 and abs(out["kl"] - kl) < 1e-12
    # Close Gaussians: H ≈ sqrt(KL/4) (both ∝ the perturbation), computed without cancellation.
    C = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    out = converge.gaussian_distances(torch.zeros(2), C * (1 + 1e-7), torch.zeros(2), C)
    assert abs(out["hellinger"] / math.sqrt(out["kl"] / 4) - 1) < 1e-5 and out["hellinger"] > 0
    assert converge.gaussian_distances(torch.zeros(2), C, torch.zeros(2), C)["hellinger"] == 0.0


def test_sliced_w2_is_w2_in_one_dimension():
    # In 1-D every projection is ±identity, so SW2 = W2 = sqrt(Δm² + Δs²) between Gaussians; n = 40000 samples:
    # the empirical quantile error is a few 1e-3 here.
    g = torch.Generator().manual_seed(0)
    a = 0.2 + 1.0 * torch.randn(40000, 1, generator=g, dtype=torch.float64)
    b = -0.3 + 1.5 * torch.randn(40000, 1, generator=g, dtype=torch.float64)
    assert abs(converge.sliced_w2(a, b) - math.sqrt(0.5**2 + 0.5**2)) < 0.02


def test_gaussian_moment_propagation_matches_hand_recursion():
    """Ancestral DDPM on N(m, v) in 1-D: z' − m = a(z − m) + s·ξ with a = (v + rσ²)/(v + σ²), r = σ'²/σ²,
    s = σ'·sqrt(1 − r), so mean and variance follow a scalar recursion."""
    m, v = 0.4, 0.2
    p = problems.Problem("g1", GaussianMixture([1.0], [[m]], [[v]]), (1,))
    sig = grids.edm(7, append_zero=False)
    mean, var = m + 2.0, 9.0  # any starting law
    for s, s1 in zip(sig[:-1].tolist(), sig[1:].tolist()):
        r = s1**2 / s**2
        a = (v + r * s**2) / (v + s**2)
        mean, var = m + a * (mean - m), a * a * var + s1**2 * (1 - r)
    out_m, out_c = converge.propagate_gaussian(samplers.get("ddpm"), p, sig, {}, [m + 2.0], torch.tensor([[9.0]]))
    assert abs(float(out_m) - mean) < 1e-12 and abs(float(out_c) - var) < 1e-12
    # A deterministic sampler has no noise term: the exact ODE maps N(m, v + σ0²) to N(m, v + σ_N²) and Heun
    # approximates it to second order.
    out_m, out_c = converge.propagate_gaussian(samplers.get("heun"), p, grids.edm(200, append_zero=False), {},
                                               [m], torch.tensor([[v + 80.0**2]]))
    assert abs(float(out_m) - m) < 1e-12 and abs(float(out_c) / (v + 0.002**2) - 1) < 1e-3


def test_builtin_problems_are_deterministic_and_exact():
    a, b, c = problems.get("gmm2", seed=0), problems.get("gmm2", seed=0), problems.get("gmm2", seed=1)
    assert torch.equal(a.denoiser.means, b.denoiser.means) and not torch.equal(a.denoiser.means, c.denoiser.means)
    assert problems.get("gmm3x32x32").shape == (3, 32, 32) and problems.get("gmm64").dim == 64
    assert problems.get("gaussian").is_gaussian and not a.is_gaussian
    # The lab's batched mixture is the same function as diffspace.denoisers.GaussianMixture.
    for name in ("gmm2", "gmm64", "gmm3x32x32"):
        p = problems.get(name)
        Dp = p.denoiser
        covs = Dp.eigvals if Dp.eigvecs is None else Dp.eigvecs @ torch.diag_embed(Dp.eigvals) @ Dp.eigvecs.mT
        ref = GaussianMixture(Dp.weights, Dp.means.reshape(Dp.K, *p.shape), covs)
        y = p.sample(20, 0.0, torch.Generator().manual_seed(0))
        for s in (0.002, 0.3, 80.0):
            x = y + s * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            assert (Dp(x, s) - ref(x, s)).abs().max() < 1e-10 * (1 + x.abs().max())
    with pytest.raises(ConfigError, match="unknown problem 'gmm3'.*gmm2"):
        problems.get("gmm3")


def test_measure_rows_nfe_and_budgets():
    p = problems.get("gmm2")
    r = converge.measure(p, ["heun", "ddpm", "accel_ode2"], steps=[3, 6], batch=4, samples=512)
    assert [(x.sampler, x.kind, x.steps) for x in r.rows] == [
        ("heun", "pathwise", 3), ("heun", "pathwise", 6), ("ddpm", "sw2", 3), ("ddpm", "sw2", 6),
        ("accel_ode2", "pathwise", 3), ("accel_ode2", "pathwise", 6)]
    assert [x.nfe for x in r.rows] == [6, 12, 3, 6, 5, 11]  # Heun 2N without a final 0; form F 2N − 1
    assert r.floor > 0 and all(abs(x.sigma_end - 0.002) < 1e-15 for x in r.rows)
    # NFE budgets: the most steps that fit. On grids ending at 0, Heun and DPM-Solver-2 cost 2N − 1.
    r = converge.measure(p, ["heun", "dpm_2", "euler"], nfe=[5, 6], batch=2, to_zero=True)
    assert [(x.sampler, x.target_nfe, x.steps, x.nfe) for x in r.rows] == [
        ("heun", 5, 3, 5), ("heun", 6, 3, 5), ("dpm_2", 5, 3, 5), ("dpm_2", 6, 3, 5),
        ("euler", 5, 5, 5), ("euler", 6, 6, 6)]
    assert all(x.sigma_end == 0.0 for x in r.rows)
    # With --to-zero, forms needing σ_min > 0 finish with denoise_to_zero (one extra call) instead.
    r = converge.measure(p, ["ddim_type"], nfe=[5], batch=2, to_zero=True)
    assert (r.rows[0].steps, r.rows[0].nfe, r.rows[0].sigma_end) == (4, 5, 0.0)
    with pytest.raises(ConfigError, match="no selected sampler takes option 'eta'"):
        converge.measure(p, ["heun"], steps=[2], options={"eta": 0.5})
    with pytest.raises(ConfigError, match="either steps or nfe"):
        converge.measure(p, ["heun"], steps=[2], nfe=[2])


def test_cli_writes_table_csv_json_png(tmp_path, capsys):
    out = tmp_path / "lab"
    rc = main(["converge", "--samplers", "euler,heun,ddpm_type", "--steps", "4,8", "--batch", "4",
               "--samples", "256", "--outdir", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "heun" in text and "slope" in text and "command: diffspace converge --problem gmm2" in text
    data = json.loads((out / "converge.json").read_text())
    assert set(data["slopes"]) == {"euler", "heun", "ddpm_type"} and data["command"].startswith("diffspace converge")
    assert len((out / "converge.csv").read_text().strip().splitlines()) == 1 + 3 * 2
    assert (out / "converge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "slope" in (out / "converge.md").read_text()
    assert not list(out.glob(".*.tmp"))


def test_cli_user_denoiser(tmp_path, monkeypatch, capsys):
    (tmp_path / "mydenoiser.py").write_text(
        "import torch\nfrom diffspace.denoisers import Gaussian\n"
        "def make():\n    return Gaussian(torch.zeros(3, dtype=torch.float64), 0.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["converge", "--problem", "mydenoiser:make", "--samplers", "euler", "--steps", "4,8",
               "--batch", "2", "--outdir", str(tmp_path / "o"), "--no-plot", "--quiet"])
    assert rc == 0 and "mydenoiser:make" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--samplers", "euler,nope"], "unknown sampler 'nope': known samplers are"),
    (["--samplers", "euler", "--option", "eta=1"], "no selected sampler takes option 'eta'"),
    (["--steps", "8,x"], "--steps '8,x' must be comma-separated positive integers"),
    (["--problem", "nope"], "unknown problem 'nope'"),
    (["--grid", "cosine", "--samplers", "euler"], "unknown grid 'cosine'"),
])
def test_cli_bad_input_fails_cleanly(tmp_path, capsys, argv, message):
    out = tmp_path / "lab"
    assert main(["converge", *argv, "--outdir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line, no traceback
    assert not out.exists()  # nothing written
