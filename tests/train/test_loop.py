"""The training loop in-process: outputs, exact resume, accumulation, precision variants, faults."""

import json

import numpy as np
import pytest
import torch

from diffspace.errors import CheckpointError, ConfigError, NumericalError
from diffspace.io import checkpoint as ckpt
from diffspace.io import load_network
from diffspace.train.loop import train

TINY = dict(data="toy:gmm8", arch="mlp", net_kwargs={"hidden": 32, "num_layers": 2}, batch=64, lr=2e-3,
            lr_rampup=0.0005, ema=0.001, tick=1.0, snap=2, dump=2, sample_every=0, progress=False)


def _run(tmp_path, name, **kw):
    cfg = dict(TINY, outdir=str(tmp_path / name), **kw)
    resume = cfg.pop("resume", None)
    return train(cfg, resume=resume, log=lambda *a: None)


def _weights(path, which="net"):
    tensors, _, _ = ckpt.load_training_state(path)
    return {k: v for k, v in tensors.items() if k.startswith(("net.", "ema.", "optim."))}


def test_run_folder_contents(tmp_path):
    out = _run(tmp_path, "a", duration=0.0032, sample_every=2, grid=100, grid_steps=4)  # 50 steps
    run = tmp_path / "a"
    assert out["step"] == 50 and out["cur_nimg"] == 3200
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["network"]["class"] == "MLP" and config["train"]["batch"] == 64
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["tick"] for s in stats] == list(range(len(stats))) and stats[-1]["kimg"] == 3.2
    assert all(np.isfinite(s["loss"]) and s["images_per_s"] > 0 for s in stats)
    assert stats[0]["lr"] == 0.0  # EDM: lr·min(cur_nimg/rampup, 1) with cur_nimg = 0 at the first step
    assert (run / "network-snapshot-000003.safetensors").exists()
    assert (run / "training-state-000003.safetensors").exists()
    assert list(run.glob("samples-*.png"))
    net = load_network(run)
    x = net(torch.randn(4, 2), torch.ones(4))
    assert x.shape == (4, 2) and torch.isfinite(x).all()


def test_resume_is_bit_identical(tmp_path):
    full = _run(tmp_path, "full", duration=0.0064)  # 100 steps
    # 49 steps (ends on a tick boundary: ticks end after steps 1, 17, 33, 49, ...), then on to 100.
    _run(tmp_path, "part", duration=49 * 64 / 1e6)
    part = _run(tmp_path, "part", duration=0.0064, resume="latest")
    assert part["step"] == full["step"] == 100
    a, b = _weights(full["state"]), _weights(part["state"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = [json.loads(x) for x in (tmp_path / "full" / "stats.jsonl").read_text().splitlines()]
    sb = [json.loads(x) for x in (tmp_path / "part" / "stats.jsonl").read_text().splitlines()]
    assert [(s["tick"], s["loss"]) for s in sa] == [(s["tick"], s["loss"]) for s in sb]


def test_gradient_accumulation_matches_one_round(tmp_path):
    one = _run(tmp_path, "one", duration=0.00128)  # 20 steps
    four = _run(tmp_path, "four", duration=0.00128, batch_gpu=16)
    a, b = _weights(one["state"]), _weights(four["state"])
    # Same examples, σ and noise; only the float summation order of the gradient differs (~1e-7 relative),
    # which Adam turns into weight differences of a few ulps of lr per step.
    for k in a:
        if k.startswith("net."):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu(tmp_path):
    out = _run(tmp_path, "bf16", duration=0.00128, precision="bf16")
    ref = _run(tmp_path, "fp32", duration=0.00128)
    assert out["loss"] == pytest.approx(ref["loss"], rel=0.05)  # bf16 has 8 mantissa bits: ~0.4% per op
    net = load_network(tmp_path / "bf16")
    assert next(net.parameters()).dtype == torch.float32


def test_small_unet_channels_last_and_augment(tmp_path):
    from diffspace.data import ArrayImageDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 3, 16, 16), dtype=np.uint8)
    ds = ArrayImageDataset("rand", images, np.arange(16) % 2, use_labels=True)
    out = train(dict(data="rand", outdir=str(tmp_path / "img"), arch="ddpmpp-small", cond=True,
                     net_kwargs={"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                                 "attn_resolutions": [8]},
                     batch=4, duration=8e-6, augment=0.5, channels_last=True, tick=1, snap=1, dump=1,
                     sample_every=1, grid=4, grid_steps=2, progress=False), dataset=ds, log=lambda *a: None)
    assert out["step"] == 2
    net = load_network(tmp_path / "img")
    assert net.model.init_kwargs["augment_dim"] == 9 and net.label_dim == 2
    assert (tmp_path / "img" / "samples-000000.png").exists()


def test_nan_loss_stops_and_keeps_good_state(tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(NumericalError, match="loss is"):
        _run(tmp_path, "nan", duration=0.0128, lr=1e35)
    for p in ckpt.list_checkpoints(run):  # whatever was written before is complete and finite
        tensors, _, _ = ckpt.load_training_state(p)
        assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("net."))


def test_faults_and_conflicts(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="not writable"):
        train(dict(TINY, outdir=str(blocker / "run"), duration=0.001), log=lambda *a: None)
    _run(tmp_path, "r", duration=0.00064)
    with pytest.raises(ConfigError, match="already holds a training run"):
        _run(tmp_path, "r", duration=0.00128)
    with pytest.raises(ConfigError, match="differs from the resumed run"):
        _run(tmp_path, "r", duration=0.00128, lr=1e-4, resume="latest")
    with pytest.raises(ConfigError, match="batch-gpu"):
        _run(tmp_path, "b", duration=0.001, batch_gpu=48)
    with pytest.raises(ConfigError, match="fp16"):
        _run(tmp_path, "c", duration=0.001, precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match="precond"):
        _run(tmp_path, "d", duration=0.001, precond="iddpm")


def test_loader_workers_give_the_same_run(tmp_path):
    from diffspace.data import ArrayImageDataset

    images = np.random.default_rng(1).integers(0, 256, size=(24, 1, 8, 8), dtype=np.uint8)
    ds = ArrayImageDataset("rand", images)
    kw = dict(data="rand", arch="mlp", net_kwargs={"hidden": 16, "num_layers": 1}, batch=8, duration=8e-5,
              lr_rampup=1e-5, tick=1, snap=0, dump=0, sample_every=0, progress=False)
    a = train(dict(kw, outdir=str(tmp_path / "w0")), dataset=ds, log=lambda *a: None)
    b = train(dict(kw, outdir=str(tmp_path / "w2"), workers=2), dataset=ds, log=lambda *a: None)
    wa, wb = _weights(a["state"]), _weights(b["state"])
    assert a["step"] == 10 and all(torch.equal(wa[k], wb[k]) for k in wa)  # 10 steps = 3+ epochs of 24 images


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = _run(tmp_path, "eager", duration=0.00064)
    compiled = _run(tmp_path, "compiled", duration=0.00064, compile=True)
    a, b = _weights(eager["state"]), _weights(compiled["state"])
    for k in a:  # fused kernels round differently; 10 Adam steps of lr ≤ 2e-3
        if k.startswith("net."):
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
