"""The Python API around every sampler: the model's dtype, one registry for names and attributes, option checks
by type and range, and the errors for bad models and latents."""

import copy
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from diffspace import grids, samplers
from diffspace.errors import ConfigError

from .problems_fixture import gmm

# Samplers that stop at σ_min > 0 (Li et al.'s forms A, C, D, F) are the ones with a denoise_to_zero option.
POSITIVE_END = {n for n in samplers.names() if samplers.get(n).positive_end}


class Denoiser32(nn.Module):
    """A float32 network that is itself D(x, σ): D = c_skip·x + c_out·tanh(W(c_in·x) + b) (σ_data = 1)."""

    def __init__(self, d=3):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d, d)

    def forward(self, x, sigma):
        s = sigma[:, None]
        return x / (s**2 + 1) + s / (s**2 + 1).sqrt() * torch.tanh(self.lin(x / (s**2 + 1).sqrt()))


class KDiffusionStyle(nn.Module):
    """k-diffusion-style wrapper: (x, σ) → c_skip·x + c_out·inner(c_in·x, c_noise), inner a float32 MLP."""

    def __init__(self, d=3, sigma_data=0.5):
        super().__init__()
        torch.manual_seed(1)
        self.inner = nn.Sequential(nn.Linear(d + 1, 16), nn.SiLU(), nn.Linear(16, d))
        self.sigma_data = sigma_data

    def forward(self, x, sigma):
        sd, s = self.sigma_data, sigma[:, None]
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        return c_skip * x + c_out * self.inner(torch.cat([c_in * x, s.log() / 4], dim=1))


def _run(name, model, x):
    entry = samplers.get(name)
    sig = grids.edm(8, append_zero=False) if name in POSITIVE_END else grids.edm(8)
    return entry(model, x * sig[0], sig, noise=samplers.StackedRandom(range(len(x))))


@pytest.mark.parametrize("make", [Denoiser32, KDiffusionStyle])
@pytest.mark.parametrize("name", samplers.names())
def test_float32_networks_run_through_every_sampler(make, name):
    net32 = make()
    net64 = copy.deepcopy(net32).double()
    x64 = samplers.StackedRandom(range(4)).randn([3], dtype=torch.float64)
    with pytest.raises(RuntimeError):  # what the network does when fed float64 by hand: the samplers must not
        net32(x64, torch.ones(4, dtype=torch.float64))
    reference = _run(name, net64, x64)  # the float64 path
    for x in (x64, x64.float()):  # the caller's x in either precision: the network is called in float32
        out = _run(name, net32, x)
        assert out.dtype == x.dtype and out.shape == x.shape
        # float32 rounding (relative 6e-8) of at most 16 evaluations of a smooth map: far below 1e-4.
        assert (out.double() - reference).abs().max() < 1e-4, (name, float((out.double() - reference).abs().max()))


def test_model_dtype_rule():
    from diffspace.samplers.base import model_dtype

    x64 = torch.zeros(2, 3, dtype=torch.float64)
    assert model_dtype(Denoiser32(), x64) == torch.float32  # parameters win over the caller's x
    assert model_dtype(gmm(), x64.float()) == torch.float64  # a declared dtype wins over both
    assert model_dtype(lambda x, s: x, x64.float()) == torch.float32  # otherwise the caller's x
    seen = []
    samplers.heun(lambda x, s: seen.append((x.dtype, s.dtype)) or x * 0, x64.float(), grids.edm(3))
    assert set(seen) == {(torch.float32, torch.float32)}


def test_every_sampler_is_an_attribute_of_the_package():
    names = samplers.names()
    for name in names:
        assert getattr(samplers, name) is samplers.get(name)
    assert set(names) <= set(dir(samplers))
    assert samplers.edm.name == "edm"  # the sampler, not the module of the same name
    with pytest.raises(AttributeError):
        getattr(samplers, "no_such_sampler")  # noqa: B009


def test_unknown_sampler_message_says_where_ablation_is():
    with pytest.raises(ConfigError, match="known samplers are .*euler.*samplers.ablation"):
        samplers.get("nope")


def test_summaries_are_sentences_without_references_to_unshipped_files():
    for name in samplers.names():
        entry = samplers.get(name)
        first = entry.summary.split()[0] if entry.summary else ""
        # Starts with a capital (or a name spelled with one, e.g. iPNDM), ends with a full stop.
        assert any(c.isupper() for c in first) and entry.summary.endswith("."), (name, entry.summary)
        for text in (entry.summary, entry.fn.__doc__ or ""):
            for ref in ("spec §", "spec ", "README eq", "papers.md"):
                assert ref not in text, (name, ref)


@pytest.mark.parametrize("name,options,named", [
    ("dpmpp_2m", {"afs": "no"}, "afs='no'"),
    ("dpmpp_2m", {"afs": 1}, "afs=1"),
    ("edm", {"S_churn": "abc"}, "S_churn='abc'"),
    ("euler_ancestral", {"eta": "abc"}, "eta='abc'"),
    ("edm", {"S_tmin": [1, 2]}, r"S_tmin=\[1, 2\]"),
    ("edm", {"S_noise": math.nan}, "S_noise=nan"),
    ("edm", {"S_churn": math.nan}, "S_churn=nan"),
    ("edm", {"S_churn": -1.0}, "S_churn=-1.0"),
    ("heun", {"alpha": 0.0}, "alpha=0.0"),
    ("heun", {"alpha": math.inf}, "alpha=inf"),
    ("ipndm", {"max_order": 2.5}, "max_order=2.5"),
    ("euler", {"dtype": torch.int64}, "dtype=torch.int64"),
])
def test_options_are_checked_by_type_and_range(name, options, named):
    x = torch.zeros(2, 2, dtype=torch.float64)
    calls = []

    def model(x, sigma):
        calls.append(1)
        return x

    with pytest.raises(ConfigError, match=f"option {named}"):
        samplers.get(name)(model, x, grids.edm(4), **options)
    assert not calls  # refused before any work


def test_check_options_refuses_bad_values_before_any_work():
    # What `diffspace generate` calls before it creates any folder.
    with pytest.raises(ConfigError, match="option S_noise=nan is NaN"):
        samplers.get("edm").check_options({"S_noise": math.nan})
    assert samplers.get("edm").check_options({"S_churn": 40}) == {"S_churn": 40.0}


def test_good_options_pass_and_infinite_defaults_stay_allowed():
    D, x = gmm(), torch.ones(2, 2, dtype=torch.float64)
    sig = grids.edm(4)
    a = samplers.edm(D, x * 80, sig, S_churn=40, S_tmax=math.inf, noise=samplers.StackedRandom(range(2)))
    b = samplers.edm(D, x * 80, sig, S_churn=40.0, S_tmax=float("inf"), noise=samplers.StackedRandom(range(2)))
    assert torch.equal(a, b)
    assert samplers.get("dpmpp_2m").nfe(sig, afs=True) == 3


def test_parse_options_uses_the_samplers_types():
    assert samplers.parse_options("dpmpp_2m", ["afs=true"]) == {"afs": True}
    assert samplers.parse_options("dpmpp_2m", ["afs=0"]) == {"afs": False}
    assert samplers.parse_options("edm", ["S_churn=40", "S_tmax=inf"]) == {"S_churn": 40.0, "S_tmax": math.inf}
    assert samplers.parse_options("ipndm", ["max_order=3"]) == {"max_order": 3}
    assert samplers.parse_options("ablation", ["solver=euler", "alpha=0.5"]) == {"solver": "euler", "alpha": 0.5}
    for name, item, message in [("dpmpp_2m", "afs=maybe", "afs='maybe' must be true or false"),
                                ("edm", "S_churn=abc", "S_churn='abc' must be a number"),
                                ("edm", "S_noise=nan", "S_noise=nan is NaN"),
                                ("ipndm", "max_order=x", "max_order='x' must be an integer"),
                                ("heun", "S_churn=1", "does not take option S_churn"),
                                ("edm", "oops", "is not key=value")]:
        with pytest.raises(ConfigError, match=message):
            samplers.parse_options(name, [item])


def test_ablation_checks_options_like_the_registry():
    D = gmm()
    latents = torch.zeros(2, 2, dtype=torch.float64)
    for options, named in [({"S_noise": math.nan}, "S_noise=nan"), ({"S_churn": "abc"}, "S_churn='abc'"),
                           ({"num_steps": 2.5}, "num_steps=2.5"), ({"epsilon_s": 2.0}, "epsilon_s=2.0")]:
        with pytest.raises(ConfigError, match=f"'ablation' option {named}"):
            samplers.ablation(D, latents, **options)


@pytest.mark.parametrize("call", [
    lambda model, x: samplers.heun(model, x * 80, grids.edm(4)),
    lambda model, x: samplers.ablation(model, x, num_steps=4),
])
def test_bad_models_and_latents_are_config_errors(call):
    x = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"returned shape \(1, 2\) for input \(3, 2\)"):
        call(lambda x, s: x[:1], x)  # would broadcast silently
    with pytest.raises(ConfigError, match="returned a list, not a tensor"):
        call(lambda x, s: x.tolist(), x)
    with pytest.raises(ConfigError, match="returned dtype torch.int64"):
        call(lambda x, s: x.long(), x)
    for bad in (torch.ones(3, 2, dtype=torch.int64), torch.ones(3, 2, dtype=torch.bool)):
        with pytest.raises(ConfigError, match="latents must be floating point"):
            call(lambda x, s: x, bad)


def test_converge_finds_a_module_in_the_current_folder(tmp_path):
    (tmp_path / "my_denoiser.py").write_text(textwrap.dedent("""
        from diffspace.denoisers import Gaussian
        D = Gaussian([0.0, 1.0], 0.5)
    """))
    # As a console script runs it: neither '' nor the current folder on sys.path.
    code = ("import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; "
            "from diffspace.samplers import problems; print(problems.get('my_denoiser:D').shape)")
    env = {**os.environ, "PYTHONPATH": os.path.abspath("src")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "(2,)", out.stderr[-500:]
