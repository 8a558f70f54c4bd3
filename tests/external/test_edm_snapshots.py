"""EDM snapshots in `diffspace convert` and `diffspace generate --network X.pkl`: nothing from the file is executed,
weights come through bit for bit, images equal those of the original network, bad files give one-line errors."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from diffspace.cli import main
from diffspace.design.precond import EDMPrecond, VPPrecond
from diffspace.io.checkpoint import load_network, read_tensors, save_network
from diffspace.nets import build_network

from .edm_writer import edm_snapshot_bytes, write_edm_snapshot

# What EDM's torch_utils.persistence does on load: execute the module source stored in the pickle.
EDM_PERSISTENCE = '''
import types
def _reconstruct_persistent_obj(meta):
    module = types.ModuleType("_imported_module")
    exec(compile(meta["module_src"], "<edm module_src>", "exec"), module.__dict__)
    return meta
'''


def _unet(label_dim=3, precond=EDMPrecond, seed=0, **kwargs):
    """Small SongUNet with random O(1) weights (its zero-initialised output layer would make every image grey)."""
    torch.manual_seed(seed)
    net = build_network("ddpmpp-small", img_resolution=8, img_channels=1, label_dim=label_dim, model_channels=8,
                        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], **kwargs)
    p = precond(net, label_dim=label_dim)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for q in p.parameters():
            q.copy_(0.2 * torch.randn(q.shape, generator=g))
    return p.eval()


@pytest.fixture
def edm_env(tmp_path, monkeypatch):
    """EDM's torch_utils.persistence (which executes module_src, as EDM's does) and dnnlib.util importable."""
    root = tmp_path / "edm_code"
    for pkg, mod, text in (("torch_utils", "persistence", EDM_PERSISTENCE),
                           ("dnnlib", "util", "class EasyDict(dict):\n    pass\n")):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / f"{mod}.py").write_text(text)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        sys.modules.pop(name, None)


def _run(*argv):
    return main([str(a) for a in argv])


def test_trap_is_armed_and_convert_generate_never_execute_it(edm_env, tmp_path):
    marker = tmp_path / "EXECUTED"
    net = _unet()
    snap = write_edm_snapshot(tmp_path / "network-snapshot-000100.pkl", net, marker)
    # The trap works: EDM's own way of loading (plain pickle + its persistence module) writes the marker.
    with open(snap, "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    out = tmp_path / "converted.safetensors"
    assert _run("convert", snap, out) == 0
    assert _run("generate", "--network", snap, "--seeds", "0-3", "--steps", "4", "--npz", tmp_path / "a.npz",
                "--no-progress") == 0
    assert not marker.exists(), "the EDM module source was executed"
    # Converted weights equal the originals bit for bit; the metadata keeps EDM's training options.
    tensors, meta = read_tensors(out)
    original = net.state_dict()
    assert sorted(tensors) == sorted(original)
    assert all(torch.equal(tensors[k], original[k]) for k in original)
    import json

    info = json.loads(meta["info"])
    assert info["data"] == {"shape": [1, 8, 8], "label_dim": 3}
    assert info["edm"]["precond"] == "EDMPrecond"
    assert info["edm"]["network_kwargs"]["model_type"] == "SongUNet"
    assert info["edm"]["dataset_kwargs"]["path"] == "datasets/toy.zip"
    assert info["edm"]["loss_fn"] == {"class": "EDMLoss", "state": {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}}


@pytest.mark.parametrize("precond", [EDMPrecond, VPPrecond])
def test_round_trip_through_edm_format_gives_identical_images(tmp_path, precond):
    net = _unet(precond=precond, seed=3)
    snap = write_edm_snapshot(tmp_path / "net.pkl", net, tmp_path / "EXECUTED")
    save_network(tmp_path / "net.safetensors", net)
    common = ["--seeds", "0-5", "--steps", "6", "--sampler", "dpmpp_2m", "--no-progress", "--batch", "4"]
    assert main(["generate", "--network", str(snap), "--npz", str(tmp_path / "pkl.npz"), *common]) == 0
    assert main(["generate", "--network", str(tmp_path / "net.safetensors"), "--npz", str(tmp_path / "st.npz"),
                 *common]) == 0
    assert main(["convert", str(snap), str(tmp_path / "conv.safetensors")]) == 0
    assert main(["generate", "--network", str(tmp_path / "conv.safetensors"), "--npz", str(tmp_path / "cv.npz"),
                 *common]) == 0
    a, b, c = (np.load(tmp_path / f"{n}.npz") for n in ("pkl", "st", "cv"))
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert np.array_equal(a["images"], c["images"])
    assert len({im.tobytes() for im in a["images"]}) == 6 and a["images"].std() > 10  # not trivially equal
    assert not (tmp_path / "EXECUTED").exists()
    # The converted checkpoint rebuilds the same denoiser.
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 7.0])
    labels = torch.eye(3)[[0, 2]]
    with torch.no_grad():
        assert torch.equal(load_network(tmp_path / "conv.safetensors")(x, sigma, labels), net(x, sigma, labels))


def test_convert_refuses_to_overwrite_without_force(tmp_path, capsys):
    snap = write_edm_snapshot(tmp_path / "net.pkl", _unet(), tmp_path / "EXECUTED")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    assert main(["convert", str(snap), str(out)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["convert", str(snap), str(out), "--force"]) == 0
    assert read_tensors(out)[1]["format"] == "diffspace.network/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pkl", "out.safetensors"]  # no temporary files


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"diffspace {argv[0]}: error:"), err
    for n in needles:
        assert n in err, err
    return err


def test_bad_snapshots_give_one_line_errors_and_no_output(tmp_path, capsys):
    marker = tmp_path / "EXECUTED"
    data = edm_snapshot_bytes(_unet(), marker)
    out = tmp_path / "out.safetensors"
    cases = {
        "evil.pkl": pickle.dumps(os.system),  # a global an EDM snapshot never names
        "truncated.pkl": data[: len(data) // 2],
        "unknown.pkl": edm_snapshot_bytes(_unet(), marker, class_name="XYZPrecond"),
        # Tensors that do not fit the recorded constructor arguments (model_channels 8 recorded as 16).
        "shapes.pkl": edm_snapshot_bytes(_unet(), marker, model_channels=16),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    _one_line_error(capsys, ["convert", str(tmp_path / "evil.pkl"), str(out)], "system")
    _one_line_error(capsys, ["convert", str(tmp_path / "truncated.pkl"), str(out)], "not a readable EDM pickle")
    _one_line_error(capsys, ["convert", str(tmp_path / "unknown.pkl"), str(out)], "XYZPrecond")
    _one_line_error(capsys, ["convert", str(tmp_path / "shapes.pkl"), str(out)], "do not match")
    _one_line_error(capsys, ["generate", "--network", str(tmp_path / "shapes.pkl"), "--npz", str(tmp_path / "x.npz")],
                    "do not match")
    _one_line_error(capsys, ["generate", "--network", str(tmp_path / "truncated.pkl"), "--npz",
                             str(tmp_path / "x.npz")], "not a readable EDM pickle")
    _one_line_error(capsys, ["generate", "--network", str(tmp_path / "unknown.pkl"), "--npz",
                             str(tmp_path / "x.npz")], "XYZPrecond")
    _one_line_error(capsys, ["generate", "--network", str(tmp_path / "shapes.pkl"), "--which", "net", "--npz",
                             str(tmp_path / "x.npz")])
    assert not out.exists() and not (tmp_path / "x.npz").exists() and not marker.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
