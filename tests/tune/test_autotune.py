"""autotune / `diffspace tune` / schedule files / `generate --schedule`."""

import json
import math

import numpy as np
import pytest
import torch

from diffspace import samplers, tune
from diffspace.cli import main
from diffspace.design import grids
from diffspace.design.precond import EDMPrecond
from diffspace.errors import ConfigError, DataError, NumericalError
from diffspace.io.checkpoint import save_network
from diffspace.nets import build_network
from diffspace.samplers import problems
from diffspace.samplers.reference import solve
from diffspace.tune.gits import _latents

FAST = dict(warmup=12, heldout=12, teacher_steps=21, rhos=(3.0, 7.0))


@pytest.fixture(scope="module")
def gmm64_tuned():
    P = problems.get("gmm64")
    result = tune.search(P.denoiser, [3, 5], shape=P.shape, **FAST)
    return P, result


@pytest.mark.slow
def test_autotune_never_worse_than_default_on_heldout_seeds(gmm64_tuned):
    P, result = gmm64_tuned
    # Re-measure independently: held-out seeds 12..23, a tighter Dormand–Prince reference than the tuner's teacher.
    lat = _latents(P.shape, range(12, 24))
    ref = solve(P.denoiser, lat * 80, 80.0, 0.002, rtol=1e-9, atol=1e-9)

    def err(sampler, sig, **opts):
        out = samplers.get(sampler)(P.denoiser, lat * sig[0], sig, **opts)
        return float(((out - ref).flatten(1).norm(dim=1) / math.sqrt(P.dim)).mean())

    for n, plan in result.plans.items():
        assert float(plan.sigmas[0]) == pytest.approx(80.0) and float(plan.sigmas[-1]) == pytest.approx(0.002)
        stats = {}
        out = plan(P.denoiser, lat * plan.sigmas[0], stats=stats)
        assert stats["nfe"] == plan.nfe <= n
        tuned = float(((out - ref).flatten(1).norm(dim=1) / math.sqrt(P.dim)).mean())
        default = err("dpmpp_2m", grids.edm(n + 1, 0.002, 80.0, append_zero=False))
        assert tuned <= default * (1 + 1e-6), (n, plan.label, tuned, default)
        assert plan.errors["heldout"] == pytest.approx(tuned, rel=1e-3)  # the teacher (rtol 1e-6) is accurate


def test_autotune_returns_plan_or_dict():
    P = problems.get("gmm2")
    plan = tune.autotune(P.denoiser, 2, shape=P.shape, samplers=["euler", "dpmpp_2m"], gits=False, amed=False,
                         warmup=4, heldout=4, rhos=(7.0,))
    assert isinstance(plan, tune.Plan) and plan.nfe <= 2
    plans = tune.autotune(P.denoiser, [2, 3], shape=P.shape, samplers=["euler"], gits=False, amed=False, warmup=4,
                          heldout=4, rhos=(7.0,))
    assert sorted(plans) == [2, 3]


def test_sampler_specs_carry_fixed_options_into_the_plan():
    assert tune.tuning.parse_spec("dpm_3m[lower_order_final=false; compat=true]") == (
        "dpm_3m", {"lower_order_final": False, "compat": True})
    assert tune.tuning.parse_spec("ipndm_v[max_order=3]") == ("ipndm_v", {"max_order": 3})
    assert tune.tuning.split_specs("euler, unipc[variant=bh1;predict_x0=false],dpm_2m") == [
        "euler", "unipc[variant=bh1;predict_x0=false]", "dpm_2m"]
    P = problems.get("gmm2")
    # Only the variant and the default compete: the plan is one of them, with the variant's option kept.
    result = tune.search(P.denoiser, 6, shape=P.shape, samplers=["dpm_3m[lower_order_final=false]"], gits=False,
                         amed=False, afs=False, warmup=4, heldout=4, rhos=(7.0,))
    labels = {r.sampler for r in result.rows}
    assert labels == {"dpm_3m[lower_order_final=false]", "dpmpp_2m"}
    plan = result.plans[6]
    if plan.sampler == "dpm_3m":
        assert plan.options == {"lower_order_final": False} and plan.label.startswith("dpm_3m[")
        sig = plan.sigmas
        lat = _latents(P.shape, range(4, 8)) * sig[0]
        ref = samplers.get("dpm_3m")(P.denoiser, lat, sig, lower_order_final=False)
        assert torch.equal(plan(P.denoiser, lat), ref)
    for bad, msg in (("dpm_3m[lower_order_final]", "not key=value"), ("dpm_3m[nope=1]", "nope"),
                     ("dpm 3m", "not NAME"), ("ipndm[afs=true]", "leave afs out")):
        with pytest.raises(ConfigError, match=msg):
            tune.search(P.denoiser, 6, shape=P.shape, samplers=[bad], gits=False, amed=False, warmup=2, heldout=2)


def test_autotune_bad_input():
    P = problems.get("gmm2")
    with pytest.raises(ConfigError, match="below the minimum NFE"):
        tune.autotune(P.denoiser, 1, shape=P.shape, samplers=["heun"], warmup=2, heldout=2)
    with pytest.raises(ConfigError, match="shorter than the student"):
        tune.autotune(P.denoiser, 8, shape=P.shape, teacher_steps=5, warmup=2, heldout=2)
    with pytest.raises(ConfigError, match="stochastic"):
        tune.autotune(P.denoiser, 4, shape=P.shape, samplers=["euler_ancestral"], warmup=2, heldout=2)

    def nan_model(x, sigma):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NumericalError, match="NaN"):
        tune.autotune(nan_model, 4, shape=P.shape, warmup=2, heldout=2)


@pytest.mark.slow
def test_cli_tune_writes_schedule_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "s.json"
    argv = ["tune", "--problem", "gmm2", "--nfe", "3,4", "--out", str(out), "--warmup", "8", "--heldout", "8",
            "--teacher-steps", "21", "--rhos", "7", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "NFE    3" not in text
    doc = json.loads(out.read_text())
    assert doc["format"] == "diffspace-schedule" and [p["nfe"] for p in doc["plans"]] == [3, 4]
    assert doc["model"]["digest"] == tune.model_digest(problems.get("gmm2").denoiser)
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert all({"sampler", "family", "warmup_error"} <= set(c) for c in doc["candidates"])
    before = out.read_bytes()
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    plan = tune.load_schedule(out, 4, model=problems.get("gmm2").denoiser)
    assert plan.nfe <= 4 and plan.sigmas.dtype == torch.float64


def test_cli_tune_bad_input_leaves_no_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.json"
    common = ["--out", str(out), "--no-progress", "--warmup", "2", "--heldout", "2"]
    assert main(["tune", "--problem", "gmm2", "--nfe", "0", *common]) == 2
    assert main(["tune", "--problem", "gmm2", "--nfe", "1", "--samplers", "heun", *common]) == 2
    assert "below the minimum NFE" in capsys.readouterr().err
    assert main(["tune", "--problem", "gmm2", "--nfe", "9", "--teacher-steps", "5", *common]) == 2
    err = capsys.readouterr().err
    assert "shorter than the student" in err and len(err.strip().splitlines()) == 1

    from diffspace.tune import tuning as A

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "search", interrupted)
    assert main(["tune", "--problem", "gmm2", "--nfe", "3", *common]) == 130
    assert not out.exists() and not list(tmp_path.iterdir())


def _write(path, **changes):
    doc = {"format": "diffspace-schedule", "version": 1, "model": {"digest": "abc"},
           "plans": [{"nfe": 3, "sampler": "euler", "options": {}, "sigmas": [80.0, 1.0, 0.1, 0.002]}]}
    doc["plans"][0].update(changes)
    path.write_text(json.dumps(doc))
    return path


def test_schedule_file_checks(tmp_path):
    P = problems.get("gmm2")
    good = _write(tmp_path / "g.json")
    with pytest.raises(ConfigError, match="another model"):
        tune.load_schedule(good, 3, model=P.denoiser)
    assert tune.load_schedule(good, 3, model=P.denoiser, force=True).sampler == "euler"
    with pytest.raises(ConfigError, match="no plan for NFE 4"):
        tune.load_schedule(good, 4)
    with pytest.raises(DataError, match="not strictly decreasing"):
        tune.load_schedule(_write(tmp_path / "a.json", sigmas=[80.0, 1.0, 1.0, 0.002]), 3)
    with pytest.raises(DataError, match="unknown sampler 'nope'"):
        tune.load_schedule(_write(tmp_path / "b.json", sampler="nope"), 3)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        tune.load_schedule(tmp_path / "c.json")


def _unet(seed=0):
    torch.manual_seed(seed)
    net = build_network("ddpmpp-small", img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2],
                        num_blocks=1, attn_resolutions=[])
    p = EDMPrecond(net, img_resolution=8, img_channels=1)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for q in p.parameters():
            q.copy_(0.2 * torch.randn(q.shape, generator=g))
    return p.eval()


@pytest.mark.slow
def test_generate_with_schedule_reproduces_the_plan_bit_for_bit(tmp_path, capsys):
    from diffspace import generate as G

    ckpt = tmp_path / "network-snapshot-000000.safetensors"
    save_network(ckpt, _unet())
    sched = tmp_path / "s.json"
    assert main(["tune", "--network", str(ckpt), "--nfe", "4", "--out", str(sched), "--warmup", "4",
                 "--heldout", "4", "--teacher-steps", "11", "--rhos", "7", "--samplers", "euler,ipndm,amed",
                 "--no-plot", "--no-progress"]) == 0
    net, _ = G.load(ckpt)
    plan = tune.load_schedule(sched, 4, model=net)
    seeds = list(range(7))
    for batch in (7, 3):
        npz = tmp_path / f"b{batch}.npz"
        assert main(["generate", "--network", str(ckpt), "--schedule", str(sched), "--nfe", "4", "--seeds", "0-6",
                     "--batch", str(batch), "--npz", str(npz), "--no-progress"]) == 0
    a, b = (np.load(tmp_path / f"b{k}.npz")["images"] for k in (7, 3))
    assert np.array_equal(a, b)
    # The plan called directly, on generate's latents and network evaluation (micro-batches of 8, one thread).
    model = G.MicroBatched(net, 8)
    lat = samplers.StackedRandom(seeds).randn((1, 8, 8), dtype=torch.float32)
    with G._intra_op_threads(1):
        x = plan(model, lat.to(torch.float64) * plan.sigmas[0], disable=True)
    assert np.array_equal(G.to_uint8(x), a)
    capsys.readouterr()
    # A schedule for another model is refused (one line), and accepted with --force.
    other = tmp_path / "other.safetensors"
    save_network(other, _unet(seed=5))
    assert main(["generate", "--network", str(other), "--schedule", str(sched), "--nfe", "4", "--seeds", "0",
                 "--npz", str(tmp_path / "o.npz"), "--no-progress"]) == 2
    assert "another model" in capsys.readouterr().err and not (tmp_path / "o.npz").exists()
    assert main(["generate", "--network", str(other), "--schedule", str(sched), "--nfe", "4", "--seeds", "0",
                 "--npz", str(tmp_path / "o.npz"), "--no-progress", "--force"]) == 0
    assert main(["generate", "--network", str(ckpt), "--nfe", "4", "--seeds", "0", "--npz",
                 str(tmp_path / "p.npz")]) == 2
