"""`diffspace train`: option handling, resume from the command line, one-line errors for bad input."""

import json

import pytest
import torch

from diffspace.cli import main
from diffspace.io import checkpoint as ckpt

BASE = ["train", "--data", "toy:gmm8", "--arch", "mlp", "--cbase", "16", "--net-kwargs", '{"num_layers": 1}',
        "--batch", "32", "--lr-rampup", "0.0001", "--tick", "0.5", "--snap", "1", "--dump", "1",
        "--sample-every", "0", "--no-progress"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def test_train_then_extend_with_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--duration", "0.00064", "--outdir", str(run), "--seed", "5"]) == 0  # 20 steps
    first = ckpt.list_checkpoints(run)[0]
    # Continue the run: options not given again come from the saved configuration (arch, batch, seed, ...).
    assert main(["train", "--resume", str(run), "--duration", "0.00128", "--no-progress"]) == 0
    _, state, config = ckpt.load_training_state(ckpt.list_checkpoints(run)[0])
    assert state["step"] == 40 and config["train"]["seed"] == 5 and config["train"]["arch"] == "mlp"
    assert config["network"]["network"]["kwargs"]["hidden"] == 16
    assert "Resuming from" in capsys.readouterr().out
    assert first.exists()  # earlier states are kept
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["tick"] for s in stats] == list(range(len(stats)))


@pytest.mark.parametrize("extra,message", [
    (["--arch", "resnet"], "unknown network 'resnet'"),
    (["--batch", "0"], "--batch=0 is invalid"),
    (["--fp16", "--device", "cpu"], "--fp16 needs a CUDA GPU"),
    (["--fp16", "--bf16"], "exclusive"),
    (["--batch-gpu", "5"], "--batch-gpu=5 does not divide"),
    (["--augment", "1.5"], "--augment=1.5 is invalid"),
    (["--precond", "ve", "--lr", "-1"], "--lr=-1.0 is invalid"),
])
def test_bad_options_give_one_line_errors(tmp_path, capsys, extra, message):
    args = [*BASE, "--duration", "0.0001", "--outdir", str(tmp_path / "x")]
    args[args.index("--arch"):args.index("--arch") + 2] = [] if "--arch" in extra else ["--arch", "mlp"]
    assert main([*args, *extra]) == 2
    assert message in _err(capsys)
    assert not ckpt.list_checkpoints(tmp_path / "x") if (tmp_path / "x").exists() else True


def test_bad_paths(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*BASE, "--duration", "0.0001", "--outdir", str(blocker / "run")]) == 2
    assert "not writable" in _err(capsys)
    assert main([*BASE, "--duration", "0.0001", "--outdir", str(tmp_path / "a"), "--resume",
                 str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in _err(capsys)
    assert main(["train", "--outdir", str(tmp_path / "b")]) == 2
    assert "--data is missing" in _err(capsys)
    assert main([*BASE[:2], str(tmp_path / "missing.zip"), *BASE[3:], "--outdir", str(tmp_path / "c")]) == 2
    assert "missing.zip" in _err(capsys)


def test_resume_conflict_and_existing_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--duration", "0.00032", "--outdir", str(run)]) == 0
    capsys.readouterr()
    assert main([*BASE, "--duration", "0.00064", "--outdir", str(run)]) == 2
    assert "already holds a training run" in _err(capsys)
    assert main([*BASE, "--duration", "0.00064", "--outdir", str(run), "--resume", "latest", "--lr", "0.5"]) == 2
    assert "differs from the resumed run" in _err(capsys)


def test_nan_loss_is_a_clean_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--duration", "0.0064", "--outdir", str(run), "--lr", "1e35"]) == 2
    err = _err(capsys)
    assert "loss is nan" in err.lower() or "loss is inf" in err.lower()
    for p in ckpt.list_checkpoints(run) + ckpt.list_checkpoints(run, "network-snapshot"):
        tensors, _ = ckpt.read_tensors(p)  # every file left behind is complete and finite
        assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_loss_apart_from_preconditioning_and_ema_rampup(tmp_path):
    """--precond edm --loss vp: EDM's c_skip/c_out/c_in/c_noise trained with the VP noise distribution and
    weight (EDM Table 2, config D); --ema-rampup none turns the EMA ramp-up off."""
    run = tmp_path / "d"
    assert main([*BASE, "--duration", "0.00032", "--outdir", str(run), "--precond", "edm", "--loss", "vp",
                 "--ema-rampup", "none"]) == 0
    _, _, config = ckpt.load_training_state(ckpt.list_checkpoints(run)[0])
    assert config["train"]["precond"] == "edm" and config["train"]["loss"] == "vp"
    assert config["loss"].startswith("VPLoss(") and config["train"]["ema_rampup"] is None
    assert config["network"]["precond"]["class"] == "EDMPrecond"
    default = tmp_path / "e"
    assert main([*BASE, "--duration", "0.00032", "--outdir", str(default), "--ema-rampup", "0.1"]) == 0
    _, _, config = ckpt.load_training_state(ckpt.list_checkpoints(default)[0])
    assert config["loss"].startswith("EDMLoss(") and config["train"]["loss"] is None
    assert config["train"]["ema_rampup"] == 0.1


def test_bad_ema_rampup(tmp_path, capsys):
    assert main([*BASE, "--duration", "0.0001", "--outdir", str(tmp_path / "x"), "--ema-rampup", "0"]) == 2
    assert "--ema-rampup=0.0 is invalid" in _err(capsys)
