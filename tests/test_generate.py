"""`diffspace generate` and diffspace.generate: per-seed images that do not depend on batch size, process count or
thread count; EDM's conversion, grids and NFE; clean one-line errors that leave no files behind."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffspace import generate as G
from diffspace.cli import main
from diffspace.design.precond import EDMPrecond, VEPrecond
from diffspace.errors import ConfigError
from diffspace.io.checkpoint import save_network
from diffspace.nets import build_network


def _unet(res=8, channels=1, label_dim=0, width=8, precond=EDMPrecond, seed=0):
    """A small SongUNet with random O(1) weights (the trained-from-scratch init outputs ≈ 0 everywhere, which would
    make every image the same grey and the comparisons below trivially true)."""
    torch.manual_seed(seed)
    net = build_network("ddpmpp-small", img_resolution=res, img_channels=channels, label_dim=label_dim,
                        model_channels=width, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
    p = precond(net, label_dim=label_dim)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for q in p.parameters():
            q.copy_(0.2 * torch.randn(q.shape, generator=g))
    return p.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "network-snapshot-000000.safetensors"
    save_network(path, _unet(res=8, channels=1, label_dim=3))
    return path


def _cli(*argv, env=None, torchrun=0, cwd=None):
    """Run the CLI in a fresh process (so it uses its own default thread count, not the tests' one)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    env.pop("OMP_NUM_THREADS", None)
    head = [sys.executable, "-m"]
    if torchrun:
        head += ["torch.distributed.run", f"--nproc_per_node={torchrun}", "--standalone", "-m"]
    return subprocess.run([*head, "diffspace", "generate", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# ---------------------------------------------------------------------------------------------------------------
# The acceptance check: seeds 0-15 with batch 16, batch 5 and 2 torchrun processes give the same PNG bytes.

def test_png_bytes_identical_across_batch_sizes_and_processes(ckpt, tmp_path):
    common = ["--network", ckpt, "--seeds", "0-15", "--no-progress"]
    runs = {"b16": _cli(*common, "--outdir", tmp_path / "b16", "--batch", 16, "--npz", tmp_path / "b16.npz"),
            "b5": _cli(*common, "--outdir", tmp_path / "b5", "--batch", 5),
            "ddp2": _cli(*common, "--outdir", tmp_path / "ddp2", "--batch", 16, torchrun=2)}
    for name, r in runs.items():
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
    assert "NFE 35" in runs["b16"].stdout and "2 process(es)" in runs["ddp2"].stdout
    ref = _pngs(tmp_path / "b16")
    assert sorted(ref) == [f"{s:06d}.png" for s in range(16)]
    assert _pngs(tmp_path / "b5") == ref
    assert _pngs(tmp_path / "ddp2") == ref
    # The images are not trivially equal: they differ from seed to seed and use the uint8 range.
    images = np.load(tmp_path / "b16.npz")["images"]
    assert len({im.tobytes() for im in images}) == 16 and images.std() > 20
    assert not list(tmp_path.rglob(".generate-*")), "temporary folders left behind"


def test_float_samples_bitwise_batch_invariant():
    """Stronger than PNG bytes: the float64 samples themselves are the same bits for any batch split."""
    net = _unet(res=16, channels=3, width=16, seed=3)
    seeds = list(range(12))

    def run(batch, threads):
        torch.set_num_threads(threads)
        try:
            return torch.cat([G.sample(net, seeds[s:s + batch], sampler="dpmpp_2m", steps=6,
                                       model=G.MicroBatched(net, 4))[0] for s in range(0, len(seeds), batch)])
        finally:
            torch.set_num_threads(1)

    ref = run(12, 1)
    assert torch.equal(run(5, 1), ref) and torch.equal(run(1, 1), ref)
    # Chunks on two worker threads (one intra-op thread each) give the sequential result.
    with G._intra_op_threads(1):
        par = G.generate(net, seeds, sampler="dpmpp_2m", steps=6, batch=7, micro_batch=4, workers=2)
    assert np.array_equal(par.images, G.to_uint8(ref))


def test_micro_batched_pads_and_forwards_attributes():
    calls = []

    class Net:
        sigma_min, sigma_max, label_dim = 0.5, 9.0, 0

        def __call__(self, x, sigma, class_labels=None):
            calls.append((x.shape[0], class_labels.shape[0]))
            return x * sigma.reshape(-1, 1) + class_labels[:, :1]

    mb = G.MicroBatched(Net(), 4)
    x, sigma, labels = torch.arange(6.0).reshape(6, 1), torch.arange(1.0, 7.0), torch.ones(6, 2)
    out = mb(x, sigma, class_labels=labels)
    assert calls == [(4, 4), (4, 4)]  # 6 samples: one full chunk + one padded to 4
    assert torch.equal(out, x * sigma.reshape(-1, 1) + 1)
    assert mb.sigma_min == 0.5 and mb.sigma_max == 9.0


# ---------------------------------------------------------------------------------------------------------------
# Conversion, grids, NFE, labels.

def test_edm_uint8_conversion():
    # (x·127.5 + 128) clipped to [0, 255] and truncated: −1 → 0.5 → 0, 0 → 128, 1 → 255.5 → 255, −2 → 0, 0.9 → 242.75
    x = torch.tensor([-1.0, 0.0, 1.0, -2.0, 0.9], dtype=torch.float64).reshape(1, 1, 1, 5)
    assert G.to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 0, 242]


def test_noise_levels_edm_defaults_and_clamping():
    sig = G.noise_levels(EDMPrecond(torch.nn.Identity()), 18)
    # spec §1.2: the EDM 18-step grid 80, 57.586, 40.786, …, 0.0075, 0.002, then 0
    assert len(sig) == 19 and sig[-1] == 0
    # (quoted to 5 significant digits, i.e. ±0.0005, and 0.0075 to ±0.00005)
    assert sig[[0, 1, 2, 17]].tolist() == pytest.approx([80, 57.586, 40.786, 0.002], abs=5e-4)
    assert sig[16].item() == pytest.approx(0.0075, abs=5e-5)
    # A VE network (σ ∈ [0.02, 100]) clamps σ_min to 0.02 (spec §1.9 item 2); σ_max 80 stays.
    ve = G.noise_levels(VEPrecond(torch.nn.Identity()), 18)
    assert ve[-2].item() == pytest.approx(0.02) and ve[0].item() == pytest.approx(80)
    with pytest.raises(ConfigError, match="unknown grid type"):
        G.noise_levels(EDMPrecond(torch.nn.Identity()), 18, "karras")


def test_nfe_and_samplers():
    net = _unet(seed=5)
    assert G.generate(net, [0, 1], steps=18).nfe == 35  # Heun: 2N − 1
    assert G.generate(net, [0, 1], sampler="dpmpp_2m", steps=10).nfe == 10
    assert G.generate(net, [0], sampler="euler", steps=7).nfe == 7
    # Li et al.'s form A stops at σ_min > 0 and finishes with one D call: N levels → N − 1 steps + 1 = N NFE.
    assert G.generate(net, [0], sampler="ddim_type", steps=8).nfe == 8
    # EDM's Table-1 sampler (VP schedule and scaling, Euler): one NFE per step.
    out = G.generate(net, [0], sampler="ablation", grid="vp", steps=9,
                     options={"solver": "euler", "schedule": "vp", "scaling": "vp"})
    assert out.nfe == 9 and out.images.shape == (1, 8, 8, 1)
    with pytest.raises(ConfigError, match="bogus"):
        G.generate(net, [0], sampler="dpmpp_2m", options={"bogus": 1})


def test_class_labels_per_seed_and_override():
    net = _unet(label_dim=3, seed=7)
    a = G.generate(net, range(10), batch=10)
    b = G.generate(net, range(10), batch=3)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    assert set(a.labels.tolist()) <= {0, 1, 2} and len(set(a.labels.tolist())) > 1  # random per seed
    c = G.generate(net, range(4), class_idx=2)
    assert c.labels.tolist() == [2, 2, 2, 2]


def test_shard_covers_every_seed_once():
    seeds = list(range(11))
    parts = [G.shard(seeds, r, 3) for r in range(3)]
    assert sorted(s for p in parts for s in p) == seeds


# ---------------------------------------------------------------------------------------------------------------
# CLI outputs and errors (in-process: faster).

def test_cli_subdirs_npz_grid(ckpt, tmp_path, capsys):
    code = main(["generate", "--network", str(ckpt), "--outdir", str(tmp_path / "o"), "--seeds", "998-1001",
                 "--subdirs", "--npz", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"),
                 "--sampler", "dpmpp_2m", "--steps", "5", "--class", "1", "--no-progress"])
    assert code == 0
    assert "NFE 5" in capsys.readouterr().out
    assert sorted(_pngs(tmp_path / "o")) == ["000000/000998.png", "000000/000999.png", "001000/001000.png",
                                             "001000/001001.png"]
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (4, 8, 8, 1) and z["images"].dtype == np.uint8
    assert z["seeds"].tolist() == [998, 999, 1000, 1001] and z["labels"].tolist() == [1, 1, 1, 1]
    import PIL.Image

    assert PIL.Image.open(tmp_path / "g.png").size == (16, 16)  # 2×2 tiles of 8×8


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "5-2"], "seeds '5-2' is not a list of ranges"),
    (["--seeds", "a-b"], "seeds 'a-b' is not a list of ranges"),
    (["--class", "3"], "--class 3 is out of range"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--sampler", "dpmpp_2m", "--S_churn", "5"], "does not take option(s) S_churn"),
    (["--opt", "oops"], "is not key=value"),
    (["--grid-type", "karras"], "unknown grid type"),
])
def test_cli_bad_input_one_line_no_files(ckpt, tmp_path, capsys, argv, message):
    out = tmp_path / "new" / "out"
    code = main(["generate", "--network", str(ckpt), "--outdir", str(out), "--npz", str(tmp_path / "x.npz"),
                 *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_checkpoint_and_unwritable_outdir(ckpt, tmp_path, capsys):
    assert main(["generate", "--network", str(tmp_path / "none.safetensors"), "--outdir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "o").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["generate", "--network", str(ckpt), "--outdir", str(blocker / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in err and len(err.splitlines()) == 1
    assert main(["generate", "--network", str(ckpt), "--seeds", "0-3"]) == 2
    assert "nothing to write" in capsys.readouterr().err


def test_cli_failure_during_generation_leaves_nothing(tmp_path, capsys):
    net = _unet(seed=9)
    with torch.no_grad():
        net.model.enc["8x8_conv"].weight.fill_(float("nan"))  # the denoiser returns NaN at the first step
    path = tmp_path / "nan.safetensors"
    save_network(path, net)
    out = tmp_path / "deep" / "out"
    code = main(["generate", "--network", str(path), "--outdir", str(out), "--grid", str(tmp_path / "g.png"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "NaN" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors"]


# ---------------------------------------------------------------------------------------------------------------
# EDM's Table-1 flags: --solver/--disc/--schedule/--scaling select samplers.ablation, as EDM's generate.py does.

def _ablation_reference(net, seeds, **options):
    """uint8 images of samplers.ablation called directly, in EDM's per-seed order (latents, then the sampler's noise),
    on one batch of exactly the micro-batch size (the network sees the same batch shapes as in the CLI)."""
    from diffspace.samplers import StackedRandom, ablation

    rnd = StackedRandom(seeds, "cpu")
    latents = rnd.randn((1, 8, 8), dtype=torch.float32)
    with torch.no_grad():
        x = ablation(net, latents, noise=rnd, **options)
    return G.to_uint8(x)


@pytest.mark.parametrize("flags,options", [
    (["--solver", "euler", "--disc", "vp", "--schedule", "vp", "--scaling", "vp"],
     dict(solver="euler", discretization="vp", schedule="vp", scaling="vp")),
    (["--disc", "ve", "--schedule", "ve", "--S_churn", "30"],  # Heun, VE time steps and schedule, with churn
     dict(solver="heun", discretization="ve", schedule="ve", scaling="none", S_churn=30.0)),
])
def test_table1_flags_equal_samplers_ablation(tmp_path, capsys, flags, options):
    net = _unet(res=8, channels=1, seed=3)
    path = tmp_path / "net.safetensors"
    save_network(path, net)
    seeds = [5, 6, 7, 8]
    code = main(["generate", "--network", str(path), "--npz", str(tmp_path / "s.npz"), "--seeds", "5-8", "--steps",
                 "6", "--batch", "4", "--micro-batch", "4", "--threads", "1", "--no-progress", *flags])
    assert code == 0, capsys.readouterr().err
    assert "sampler ablation" in capsys.readouterr().out
    got = np.load(tmp_path / "s.npz")["images"]
    want = _ablation_reference(net, seeds, num_steps=6, **options)
    np.testing.assert_array_equal(got, want)
    assert len({im.tobytes() for im in got}) == 4 and got.std() > 20  # not a trivially constant result


def test_table1_flags_conflicts(ckpt, tmp_path, capsys):
    base = ["generate", "--network", str(ckpt), "--npz", str(tmp_path / "s.npz")]
    assert main([*base, "--solver", "euler", "--sampler", "dpmpp_2m"]) == 2
    err = capsys.readouterr().err
    assert "--solver euler select EDM's Table-1 sampler, not --sampler dpmpp_2m" in err
    assert main([*base, "--disc", "vp", "--grid-type", "ve"]) == 2
    assert "--grid-type ve and --disc vp disagree" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
