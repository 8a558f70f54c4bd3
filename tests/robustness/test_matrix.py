"""The bad-input matrix: every command × every class of bad input, in-process through `diffspace.cli.main`.

Each row must end with a non-zero exit, one line on stderr that names the value (and says what to do), no
traceback, and the folder exactly as it was: no new file or folder (hidden ones included), nothing changed
(SHA-256 before and after). Argument errors caught by argparse print the sub-command's usage first; for those the
last line is the one that must name the value. Kills and concurrent writers are in test_kills.py (subprocesses);
training's rows are in test_train_faults.py.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffspace.io.checkpoint import save_network

from .faults import check_refusal, disk_full_after, fail_writes_in, feature_net, png_folder, run_main, tiny_unet, tree

PWNED = "PWNED"  # what a malicious pickle tries to create (the folder comparison catches it)


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _flip(data: bytes, at: float = 0.6) -> bytes:
    b = bytearray(data)
    b[int(len(b) * at)] ^= 0xFF
    return bytes(b)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The good inputs, made once: a checkpoint, a PNG folder, an EDM zip, a feature network, a reference."""
    from diffspace.cli import main
    from diffspace.data.formats import write_edm_zip

    root = tmp_path_factory.mktemp("originals")
    save_network(root / "net.safetensors", tiny_unet())
    imgs = png_folder(root / "imgs", n=6)
    write_edm_zip(root / "data.zip", np.stack([np.asarray(__import__("PIL.Image").Image.open(p))[None]
                                               for p in sorted(imgs.glob("*.png"))]), labels=[0, 1, 2, 0, 1, 2])
    feature_net(root / "feat.safetensors")
    assert main(["fid", "ref", "--data", str(imgs), "--dest", str(root / "ref.npz"), "--features",
                 str(root / "feat.safetensors"), "--quiet"]) == 0
    return root


@pytest.fixture
def world(tmp_path, originals):
    """A fresh copy of the inputs plus every bad variant, in tmp_path/in; outputs go to tmp_path/out (absent)."""
    src = tmp_path / "in"
    shutil.copytree(originals, src)
    net, zip_, ref = (src / "net.safetensors").read_bytes(), (src / "data.zip").read_bytes(), (src / "ref.npz")
    (src / "empty").mkdir()
    for name, data in (("empty.safetensors", b""), ("trunc.safetensors", net[: len(net) // 2]),
                       ("flipped.safetensors", _flip(net)), ("text.safetensors", b"not a checkpoint\n"),
                       ("trunc.zip", zip_[: len(zip_) // 2]), ("flipped.zip", _flip(zip_, 0.3)),
                       ("empty.npz", b""), ("text.npz", b"mu,sigma\n1,2\n"),
                       ("trunc.npz", ref.read_bytes()[: ref.stat().st_size // 2]),
                       ("flipped.npz", _flip(ref.read_bytes(), 0.5))):
        (src / name).write_bytes(data)
    evil = pickle.dumps(_Evil(str(tmp_path / PWNED)))
    (src / "evil.pkl").write_bytes(evil)
    (src / "mnist.pkl").write_bytes(evil)
    texts = src / "textimgs"
    texts.mkdir()
    for i in range(3):
        (texts / f"{i}.png").write_text("this is text, not a PNG\n")
    mixed = png_folder(src / "mixed", n=3)
    png_folder(src / "big", n=1, size=9)
    shutil.copy(src / "big" / "000000.png", mixed / "zz.png")
    np.savez(src / "flat.npz", images=np.zeros((4, 64), np.uint8))
    np.savez(src / "nan.npz", images=np.full((4, 8, 8, 1), np.nan, np.float32))
    np.savez(src / "nanref.npz", mu=np.full(8, np.nan), sigma=np.eye(8), features=np.zeros((6, 8), np.float32),
             extractor="x", extractor_sha256="y")
    np.savez(src / "shaperef.npz", mu=np.zeros((2, 8)), sigma=np.eye(8))
    np.save(src / "obj.npy", np.array([_Evil(str(tmp_path / PWNED))], dtype=object), allow_pickle=True)
    os.replace(src / "obj.npy", src / "evil.npz")  # an .npy of pickled objects posing as a reference
    nan_net = tiny_unet(seed=5)
    import torch

    with torch.no_grad():
        next(nan_net.parameters()).fill_(float("nan"))
    save_network(src / "nan.safetensors", nan_net)
    (src / "ro").mkdir()
    return tmp_path


I, O = "{in}", "{out}"
FEAT = ["--features", f"{I}/feat.safetensors"]
GEN = ["generate", "--seeds", "0-1", "--steps", "2", "--no-progress"]


def _row(id_, argv, *needles, fault=None, usage=False, marks=()):
    return pytest.param(argv, needles, fault, usage, id=id_, marks=marks)


ROWS = [
    # dataset ------------------------------------------------------------------------------------------------
    _row("dataset-missing", ["dataset", "--source", f"{I}/nope", "--dest", f"{O}/d.zip"], "nope", "no such file"),
    _row("dataset-empty", ["dataset", "--source", f"{I}/empty", "--dest", f"{O}/d.zip"], "no image files"),
    _row("dataset-truncated", ["dataset", "--source", f"{I}/trunc.zip", "--dest", f"{O}/d.zip"], "trunc.zip"),
    _row("dataset-flipped", ["dataset", "--source", f"{I}/flipped.zip", "--dest", f"{O}/d.zip"], "flipped.zip"),
    _row("dataset-wrong-type", ["dataset", "--source", f"{I}/textimgs", "--dest", f"{O}/d.zip"], "0.png",
         "not a readable image"),
    _row("dataset-wrong-shape", ["dataset", "--source", f"{I}/flat.npz", "--dest", f"{O}/d.zip"], "flat.npz",
         "[N, H, W, C]"),
    _row("dataset-mixed-sizes", ["dataset", "--source", f"{I}/mixed", "--dest", f"{O}/d.zip"], "zz.png is 9x9"),
    _row("dataset-nan", ["dataset", "--source", f"{I}/nan.npz", "--dest", f"{O}/d.zip"], "nan.npz", "uint8"),
    _row("dataset-readonly", ["dataset", "--source", f"{I}/imgs", "--dest", f"{I}/ro/d.zip"], "ro", "--dest",
         fault="readonly"),
    _row("dataset-disk-full", ["dataset", "--source", f"{I}/imgs", "--dest", f"{O}/d.zip"], "No space left",
         fault="full"),
    _row("dataset-existing", ["dataset", "--source", f"{I}/imgs", "--dest", f"{I}/data.zip"], "already exists",
         "--force"),
    _row("dataset-pickle", ["dataset", "--source", f"{I}/evil.pkl", "--dest", f"{O}/d.zip"], "refused to unpickle"),
    _row("dataset-pickle-folder", ["dataset", "--source", f"{I}/mnist.pkl", "--dest", f"{O}/d.zip"], "refused"),
    _row("dataset-max-images", ["dataset", "--source", f"{I}/imgs", "--dest", f"{O}/d.zip", "--max-images", "0"],
         "--max-images"),
    _row("dataset-not-zip", ["dataset", "--source", f"{I}/imgs", "--dest", f"{O}/d.tar"], "d.tar", ".zip"),
    _row("dataset-resolution", ["dataset", "--source", f"{I}/imgs", "--dest", f"{O}/d.zip", "--resolution", "8x4"],
         "8x4", usage=True),
    # generate -----------------------------------------------------------------------------------------------
    _row("generate-missing", [*GEN, "--network", f"{I}/nope.safetensors", "--outdir", O], "nope.safetensors",
         "does not exist"),
    _row("generate-empty", [*GEN, "--network", f"{I}/empty.safetensors", "--outdir", O], "empty.safetensors"),
    _row("generate-truncated", [*GEN, "--network", f"{I}/trunc.safetensors", "--outdir", O], "trunc.safetensors"),
    _row("generate-flipped", [*GEN, "--network", f"{I}/flipped.safetensors", "--outdir", O], "flipped.safetensors",
         "sha256"),
    _row("generate-wrong-type", [*GEN, "--network", f"{I}/text.safetensors", "--outdir", O], "text.safetensors"),
    _row("generate-wrong-shape", [*GEN, "--network", f"{I}/feat.safetensors", "--outdir", O], "feat.safetensors",
         "not written by diffspace"),
    _row("generate-nan", [*GEN, "--network", f"{I}/nan.safetensors", "--outdir", O], "NaN"),
    _row("generate-readonly", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", f"{I}/ro/o"], "ro",
         fault="readonly"),
    _row("generate-disk-full", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O], "No space left",
         fault="full"),
    _row("generate-existing-npz", [*GEN, "--network", f"{I}/net.safetensors", "--npz", f"{I}/ref.npz"],
         "ref.npz", "already exists", "--force"),
    _row("generate-pickle", [*GEN, "--network", f"{I}/evil.pkl", "--outdir", O], "evil.pkl"),
    _row("generate-seeds", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O, "--seeds", "5-2"], "5-2"),
    _row("generate-steps", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O, "--steps", "0"], "--steps 0"),
    _row("generate-batch", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O, "--batch", "0"], "--batch 0"),
    _row("generate-class", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O, "--class", "1"], "--class 1"),
    _row("generate-option", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O, "--opt", "S_churn"],
         "S_churn", "key=value"),
    _row("generate-nothing", [*GEN, "--network", f"{I}/net.safetensors"], "--outdir"),
    _row("generate-solver", [*GEN, "--network", f"{I}/net.safetensors", "--outdir", O, "--solver", "rk4"], "rk4",
         usage=True),
    # fid ref ------------------------------------------------------------------------------------------------
    _row("ref-missing", ["fid", "ref", "--data", f"{I}/nope", "--dest", f"{O}/r.npz", *FEAT], "nope"),
    _row("ref-empty", ["fid", "ref", "--data", f"{I}/empty", "--dest", f"{O}/r.npz", *FEAT], "no image files"),
    _row("ref-truncated", ["fid", "ref", "--data", f"{I}/trunc.zip", "--dest", f"{O}/r.npz", *FEAT], "trunc.zip"),
    _row("ref-flipped", ["fid", "ref", "--data", f"{I}/flipped.zip", "--dest", f"{O}/r.npz", *FEAT], "flipped.zip"),
    _row("ref-wrong-type", ["fid", "ref", "--data", f"{I}/textimgs", "--dest", f"{O}/r.npz", *FEAT], "0.png"),
    _row("ref-wrong-shape", ["fid", "ref", "--data", f"{I}/mixed", "--dest", f"{O}/r.npz", *FEAT], "zz.png is 9x9"),
    _row("ref-nan", ["fid", "ref", "--data", f"{I}/nan.npz", "--dest", f"{O}/r.npz", *FEAT], "uint8"),
    _row("ref-readonly", ["fid", "ref", "--data", f"{I}/imgs", "--dest", f"{I}/ro/r.npz", *FEAT], "--dest",
         fault="readonly"),
    _row("ref-disk-full", ["fid", "ref", "--data", f"{I}/imgs", "--dest", f"{O}/r.npz", *FEAT, "--quiet"],
         "No space left", fault="full"),
    _row("ref-existing", ["fid", "ref", "--data", f"{I}/imgs", "--dest", f"{I}/ref.npz", *FEAT], "already exists"),
    _row("ref-pickle-features", ["fid", "ref", "--data", f"{I}/imgs", "--dest", f"{O}/r.npz", "--features",
                                 f"{I}/evil.pkl"], "evil.pkl"),
    _row("ref-num", ["fid", "ref", "--data", f"{I}/imgs", "--dest", f"{O}/r.npz", *FEAT, "--num", "50"], "--num 50"),
    # fid calc -----------------------------------------------------------------------------------------------
    _row("calc-missing", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/nope.npz", *FEAT], "nope.npz"),
    _row("calc-empty", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/empty.npz", *FEAT], "empty.npz"),
    _row("calc-truncated", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/trunc.npz", *FEAT], "trunc.npz",
         "fid ref"),
    _row("calc-flipped", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/flipped.npz", *FEAT],
         "flipped.npz"),
    _row("calc-wrong-type", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/text.npz", *FEAT], "text.npz"),
    _row("calc-wrong-shape", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/shaperef.npz", *FEAT],
         "shaperef.npz"),
    _row("calc-nan", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/nanref.npz", *FEAT], "NaN"),
    _row("calc-empty-images", ["fid", "calc", "--images", f"{I}/empty", "--ref", f"{I}/ref.npz", *FEAT],
         "no image files"),
    _row("calc-readonly-json", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/ref.npz", *FEAT, "--json",
                                f"{I}/ro/m.json"], "--json", fault="readonly"),
    _row("calc-disk-full", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/ref.npz", *FEAT, "--json",
                            f"{O}/m.json", "--quiet", "--k", "2", "--kid-subset-size", "3"], "No space left",
         fault="full"),
    _row("calc-existing-json", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/ref.npz", *FEAT, "--json",
                                f"{I}/ref.npz"], "already exists"),
    _row("calc-pickle", ["fid", "calc", "--images", f"{I}/imgs", "--ref", f"{I}/evil.npz", *FEAT], "evil.npz"),
    # features train -----------------------------------------------------------------------------------------
    _row("features-missing", ["features", "train", "--data", f"{I}/nope", "--out", f"{O}/f.safetensors"], "nope"),
    _row("features-unlabelled", ["features", "train", "--data", f"{I}/imgs", "--out", f"{O}/f.safetensors"],
         "no class labels"),
    _row("features-existing", ["features", "train", "--data", f"{I}/data.zip", "--out", f"{I}/feat.safetensors"],
         "already exists"),
    _row("features-readonly", ["features", "train", "--data", f"{I}/data.zip", "--out", f"{I}/ro/f.safetensors"],
         "--out", fault="readonly"),
    _row("features-epochs", ["features", "train", "--data", f"{I}/data.zip", "--out", f"{O}/f.safetensors",
                             "--epochs", "0"], "--epochs"),
    _row("features-pickle", ["features", "train", "--data", f"{I}/evil.pkl", "--out", f"{O}/f.safetensors"],
         "refused"),
    # converge and demo: argument errors (their runs write into --outdir only after these checks) -----------
    _row("converge-problem", ["converge", "--problem", "nope", "--outdir", O, "--no-plot"], "nope"),
    _row("converge-steps", ["converge", "--problem", "gaussian", "--steps", "0,4", "--outdir", O, "--no-plot"],
         "0,4"),
    _row("converge-sampler", ["converge", "--samplers", "nope", "--outdir", O, "--no-plot"], "nope"),
    _row("converge-option", ["converge", "--option", "S_churn=abc", "--samplers", "edm", "--outdir", O,
                             "--no-plot"], "S_churn"),
    _row("demo-minutes", ["demo", "--minutes", "0", "--outdir", O], "--minutes 0"),
    _row("demo-images", ["demo", "--images", "1", "--outdir", O], "--images 1"),
    _row("demo-sampler", ["demo", "--fast-sampler", "nope", "--outdir", O], "nope"),
    _row("demo-data", ["demo", "--data", "cifar10", "--outdir", O], "cifar10", usage=True),
]


@pytest.mark.parametrize("argv,needles,fault,usage", ROWS)
def test_bad_input(world, capsys, monkeypatch, argv, needles, fault, usage):
    root = world
    argv = [a.replace(I, str(root / "in")).replace(O, str(root / "out")) for a in argv]
    before = tree(root)
    if fault == "readonly":
        fail_writes_in(monkeypatch, root / "in" / "ro")
    elif fault == "full":
        disk_full_after(monkeypatch, 200)
    try:
        code, err = run_main(capsys, argv)
    finally:
        monkeypatch.undo()
        (root / "in" / "ro").chmod(0o755)
    if usage:  # argparse: usage lines, then the error naming the value
        lines = err.strip().splitlines()
        assert code == 2 and lines[0].startswith("usage: diffspace " + argv[0]), err
        err = lines[-1]
    check_refusal(code, err, before, root, *needles)
    assert not (root / PWNED).exists()


def test_matrix_covers_every_command_and_class():
    """The matrix keeps its breadth: every command, every bad-input class with a row."""
    ids = [p.id for p in ROWS]
    for command in ("dataset", "generate", "ref", "calc", "features", "converge", "demo"):
        assert any(i.startswith(command + "-") for i in ids), command
    for cls in ("missing", "empty", "truncated", "flipped", "wrong-type", "wrong-shape", "nan", "readonly",
                "disk-full", "existing", "pickle"):
        have = {i.split("-", 1)[0] for i in ids if i.split("-", 1)[1].startswith(cls)}
        assert {"dataset", "generate", "ref"} <= have, (cls, have)
    assert Path(__file__).with_name("test_kills.py").is_file()  # kills and concurrent writers


@pytest.mark.parametrize("command,required", [
    ("generate", []), ("dataset", ["--source", "x", "--dest", "y.zip"]), ("fid ref", ["--data", "x", "--dest", "y"]),
    ("fid calc", ["--images", "x", "--ref", "y"]), ("features train", ["--data", "x", "--out", "y"]),
    ("converge", []), ("demo", []), ("train", []),
])
def test_unknown_flag_prints_the_subcommand_usage(tmp_path, capsys, command, required):
    before = tree(tmp_path)
    code, err = run_main(capsys, [*command.split(), *required, "--bogus-flag", "1"])
    lines = err.strip().splitlines()
    assert code == 2
    assert lines[0].startswith(f"usage: diffspace {command} "), err
    assert lines[-1] == f"diffspace {command}: error: unrecognized arguments: --bogus-flag 1", err
    assert tree(tmp_path) == before
