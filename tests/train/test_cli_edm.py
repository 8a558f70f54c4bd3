"""`diffspace train`: EDM's flags (-n/--dry-run, --desc, --subdir/--nosubdir, --transfer, --bench), the CPU
settings (--threads, OpenMP wait policy, the full-size warning), what a run folder records (config.json, log.txt),
the preview schedule and the wall-clock deadline."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from diffspace.cli import main
from diffspace.io import checkpoint as ckpt

BASE = ["train", "--data", "toy:gmm8", "--arch", "mlp", "--cbase", "16", "--net-kwargs", '{"num_layers": 1}',
        "--batch", "32", "--lr-rampup", "0.0001", "--tick", "0.5", "--snap", "1", "--dump", "1",
        "--sample-every", "0", "--no-progress"]


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_prints_options_and_size_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "new"
    assert main([*BASE, "--duration", "0.001", "--outdir", str(out), "-n"]) == 0
    printed = capsys.readouterr().out
    options = json.loads(printed[printed.index("{"):printed.index("\n}") + 2])
    assert options["arch"] == "mlp" and options["batch"] == 32 and options["net_kwargs"]["hidden"] == 16
    from diffspace.design.precond import build_precond
    from diffspace.nets import build_network

    mlp = build_network("mlp", img_resolution=None, img_channels=2, hidden=16, num_layers=1)
    n = sum(p.numel() for p in build_precond("edm", mlp, sigma_data=1.0).parameters())
    assert f"{n:,} parameters" in printed and "would be created" in printed
    assert not out.exists()
    # On an existing run: nothing changes either, and the resume it would do is named.
    run = tmp_path / "run"
    assert main([*BASE, "--duration", "0.00064", "--outdir", str(run)]) == 0
    before = _tree(run)
    capsys.readouterr()
    assert main([*BASE, "--duration", "0.00128", "--outdir", str(run), "--resume", "latest", "--dry-run"]) == 0
    assert f"resume {ckpt.list_checkpoints(run)[0]}" in capsys.readouterr().out
    assert _tree(run) == before


def test_subdir_desc_config_and_log(tmp_path, capsys):
    args = [*BASE, "--duration", "0.00032", "--outdir", str(tmp_path), "--subdir", "--desc", "try1"]
    assert main(args) == 0 and main(args) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00000-toy-gmm8-uncond-mlp-edm-gpus1-batch32-fp32-try1",
                     "00001-toy-gmm8-uncond-mlp-edm-gpus1-batch32-fp32-try1"]
    run = tmp_path / names[1]
    config = json.loads((run / "config.json").read_text())
    from diffspace import __version__

    assert config["diffspace"] == __version__ and config["python"] == ".".join(map(str, sys.version_info[:3]))
    assert config["train"]["outdir"] == str(run) and config["train"]["desc"] == "try1"
    assert isinstance(config["command"], list) and config["threads"] == torch.get_num_threads()
    log = (run / "log.txt").read_text()
    printed = capsys.readouterr().out
    assert "Training MLP" in log and "tick 0" in log and "Done: 10 steps" in log
    assert all(line in printed for line in log.splitlines())  # the log holds what was printed
    # Resuming a numbered run names its folder; --subdir with --resume is refused.
    assert main(["train", "--resume", str(run), "--duration", "0.00064", "--no-progress"]) == 0
    assert main([*args, "--resume", "latest"]) == 2
    assert "--subdir starts a new numbered run folder" in capsys.readouterr().err
    assert main([*BASE, "--outdir", str(tmp_path), "--subdir", "--nosubdir"]) == 2
    assert "exclusive" in capsys.readouterr().err


def _state_net(run) -> dict:
    tensors, _, _ = ckpt.load_training_state(ckpt.list_checkpoints(run)[0])
    return {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}


def test_transfer_from_a_diffspace_run(tmp_path, capsys):
    src = tmp_path / "src"
    assert main([*BASE, "--duration", "0.00064", "--outdir", str(src), "--seed", "3"]) == 0
    ema = ckpt.load_network(ckpt.list_checkpoints(src, "network-snapshot")[0]).state_dict()
    # One step at lr 1e-30: Adam moves each weight by about 1e-30, below float32 resolution for weights of
    # normal size, so the trained network must equal the transferred EMA (atol covers exact zeros).
    dst = tmp_path / "dst"
    assert main([*BASE, "--duration", "0.000032", "--outdir", str(dst), "--transfer", str(src), "--lr", "1e-30",
                 "--seed", "4"]) == 0
    assert "Transferred" in capsys.readouterr().out
    got = _state_net(dst)
    assert got.keys() == ema.keys()
    assert all(torch.allclose(got[k], ema[k], rtol=0, atol=1e-20) for k in got)
    assert json.loads((dst / "config.json").read_text())["train"]["ema_rampup"] is None  # as EDM does
    # Another architecture: one line naming the tensor.
    assert main([*BASE, "--duration", "0.000032", "--outdir", str(tmp_path / "x"), "--transfer", str(src),
                 "--cbase", "24"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has shape" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_transfer_from_an_edm_pickle(tmp_path, capsys, monkeypatch):
    import types

    from tests.nets.test_edm_pickle import _reconstruct_persistent_obj, edm_snapshot

    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)

    from diffspace.nets import build_network

    kwargs = {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}
    torch.manual_seed(11)
    net = build_network("ddpmpp-small", img_resolution=8, img_channels=1, dropout=0.0, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    pkl = tmp_path / "network-snapshot-000100.pkl"
    pkl.write_bytes(edm_snapshot("EDMPrecond", net, 1, sigma_data=0.5))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--arch", "ddpmpp-small", "--net-kwargs", json.dumps(kwargs),
                 "--dropout", "0", "--augment", "0", "--batch", "8", "--duration", "0.000008", "--lr", "1e-30",
                 "--transfer", str(pkl), "--outdir", str(run), "--no-progress", "--sample-every", "0"]) == 0
    got = _state_net(run)
    want = {f"model.{k}": v for k, v in net.state_dict().items()}
    assert set(want) <= set(got)
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-20) for k in want)


def test_cpu_warning_names_the_measured_speed(tmp_path, capsys, monkeypatch):
    from diffspace.train import setup
    from diffspace.train.config import TrainConfig

    cfg = TrainConfig(data="cifar10", outdir="x", arch="ddpmpp", duration=200)
    text = setup.cpu_warning(cfg, torch.device("cpu"), 10.0, 200_000_000)
    assert "10.0 images/s" in text and f"{2e8 / 10 / 86400:,.1f} days" in text and "ddpmpp-small" in text
    assert setup.cpu_warning(cfg, torch.device("cuda"), 10.0, 2e8) is None
    assert setup.cpu_warning(TrainConfig(data="c", outdir="x", arch="ddpmpp-small"), torch.device("cpu"), 1, 1) is None
    # Wired into the loop: printed once, after the first step.
    monkeypatch.setattr(setup, "FULL_SIZE_ARCHS", ("mlp",))
    assert main([*BASE, "--duration", "0.00032", "--outdir", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.count("images/s on this CPU") == 1


def test_preview_not_at_tick_zero_and_cheap_by_default(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    args = [a for a in BASE if a not in ("--sample-every", "0")]
    # 80 steps, a tick per kimg: ticks end at 32 (tick 0), 1056, 2080 and 2560 images (the end).
    assert main([*args, "--tick", "1", "--duration", "0.00256", "--outdir", str(run)]) == 0
    names = sorted(p.name for p in run.glob("samples-*.png"))
    assert names == ["samples-000001.png", "samples-000002.png"]  # none of the untrained network at tick 0
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["grid"] is None and config["grid_steps"] == 10


def test_deadline_stops_training(tmp_path):
    from diffspace.train import TrainConfig, train

    cfg = TrainConfig(data="toy:gmm8", outdir=str(tmp_path / "a"), arch="mlp", net_kwargs={"hidden": 16},
                      batch=32, duration=0.16, lr_rampup=0.0001, tick=1, snap=0, dump=0, sample_every=0,
                      progress=False)  # 5000 steps
    summary = train(cfg, deadline=time.time() - 1, log=lambda s: None)  # already passed: one step
    assert summary["step"] == 1 and summary["stopped_at_deadline"]
    assert summary["snapshot"] and summary["state"]  # the end of a run: snapshot and state written
    start = time.time()
    summary = train(TrainConfig(**{**cfg.to_dict(), "outdir": str(tmp_path / "b")}), deadline=start + 1.0,
                    log=lambda s: None)
    assert summary["stopped_at_deadline"] and 1 < summary["step"] < 5000


def test_threads_and_openmp_wait_policy(tmp_path, monkeypatch, capsys):
    # Building the CLI parser must not import torch: the wait policy only counts if set before torch loads.
    code = "import sys; from diffspace.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip() == "False"
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads = torch.get_num_threads()
    try:
        assert main([*BASE, "--duration", "0.00032", "--outdir", str(tmp_path / "r"), "--threads", "1", "-n"]) == 0
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert main([*BASE, "--outdir", str(tmp_path / "r"), "--threads", "0"]) == 2
    assert "--threads=0 is invalid" in capsys.readouterr().err
