"""`diffspace dataset`: exit codes, output and no partial files on failure."""

import gzip
import json
import struct

import numpy as np
import PIL.Image
import pytest

from diffspace.cli import main
from diffspace.data import open_dataset


def save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(arr, mode).save(path)


def run(capsys, *args):
    code = main(["dataset", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def only(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_image_folder_center_crop(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for i, (h, w) in enumerate([(20, 30), (24, 24), (30, 20)]):
        save(src / f"sub/{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    save(src / "x.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (src / "dataset.json").write_text(json.dumps({"labels": [["sub/0.png", 1], ["sub/1.png", 0],
                                                            ["sub/2.png", 1], ["x.jpg", 2]]}))
    code, out, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip", "--resolution", "16x16",
                         "--transform", "center-crop")
    assert code == 0 and err == ""
    assert out.strip() == f"wrote 4 images (3x16x16, labels: 3 classes) to {tmp_path / 'out.zip'}"
    ds = open_dataset(tmp_path / "out.zip", use_labels=True)
    assert len(ds) == 4 and ds.resolution == 16 and ds.class_indices().tolist() == [1, 0, 1, 2]
    # The 16x16 JPEG needs no resize: it is copied pixel for pixel.
    jpg = np.asarray(PIL.Image.open(src / "x.jpg")).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.images_uint8(3, 4)[0], jpg)


def test_mixed_modes_fail_then_convert(tmp_path, capsys):
    src = tmp_path / "src"
    save(src / "a.png", np.zeros((8, 8), np.uint8))
    save(src / "b.png", np.full((8, 8, 3), 90, np.uint8))
    code, out, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "b.png is RGB but the first image is L (mixed modes)" in err
    assert only(tmp_path) == ["src"]  # no partial output, no temp file
    code, _, _ = run(capsys, "--source", src, "--dest", tmp_path / "out.zip", "--channels", "3")
    assert code == 0
    x = open_dataset(tmp_path / "out.zip").images_uint8()
    assert x.shape == (2, 3, 8, 8) and (x[0] == 0).all() and (x[1] == 90).all()


def test_bad_images_leave_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(5):
        save(src / f"{i}.png", np.zeros((8, 8), np.uint8))
    (src / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, _, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip")
    assert code == 2 and "3.png is not a readable image" in err and err.count("\n") == 1
    assert only(tmp_path) == ["src"]
    save(src / "3.png", np.zeros((9, 9), np.uint8))
    code, _, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip")
    assert code == 2 and "3.png is 9x9 but the first image is 8x8" in err
    save(src / "3.png", np.zeros((8, 8), np.uint16))  # 16-bit gray, mode I;16
    code, _, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip")
    assert code == 2 and "mode I;16" in err
    (src / "3.png").unlink()
    (src / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", i] for i in (0, 1, 2)]}))
    code, _, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip")
    assert code == 2 and "dataset.json has no label for 1 image(s), e.g. 4.png" in err
    assert only(tmp_path) == ["src"]


def test_unwritable_destination(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 4, 4, 1), np.uint8))
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "--source", tmp_path / "a.npz", "--dest", tmp_path / "file" / "out.zip")
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1
    (tmp_path / "dir.zip").mkdir()
    code, _, err = run(capsys, "--source", tmp_path / "a.npz", "--dest", tmp_path / "dir.zip")
    assert code == 2 and "is a folder" in err
    code, _, err = run(capsys, "--source", tmp_path / "a.npz", "--dest", tmp_path / "out.tar")
    assert code == 2 and "must end in .zip" in err
    assert only(tmp_path) == ["a.npz", "dir.zip", "file"]


def test_npz_idx_and_builtin_sources(tmp_path, capsys):
    x = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(7) % 3)
    code, out, _ = run(capsys, "--source", tmp_path / "a.npz", "--dest", tmp_path / "a.zip",
                       "--resolution", 32, "--transform", "pad", "--max-images", 5)
    assert code == 0 and "wrote 5 images (1x32x32, labels: 3 classes)" in out
    ds = open_dataset(tmp_path / "a.zip", use_labels=True)
    np.testing.assert_array_equal(ds.images_uint8()[:, 0, 2:30, 2:30], x[:5])
    assert ds.class_indices().tolist() == [0, 1, 2, 0, 1]
    idx = tmp_path / "idx"
    idx.mkdir()
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 7, 28, 28)
    (idx / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + x.tobytes()))
    (idx / "train-images-idx3-ubyte").write_bytes(header + x[::-1].tobytes())
    code, _, _ = run(capsys, "--source", f"{idx}:test", "--dest", tmp_path / "i.zip", "--channels", 3)
    assert code == 0
    np.testing.assert_array_equal(open_dataset(tmp_path / "i.zip").images_uint8(), np.repeat(x[:, None], 3, 1))
    code, out, _ = run(capsys, "--source", "digits", "--dest", tmp_path / "d.zip", "--resolution", 32,
                       "--transform", "resize", "--max-images", 10)
    assert code == 0 and "wrote 10 images (1x32x32, labels: 10 classes)" in out
    code, _, err = run(capsys, "--source", "toy:gmm8", "--dest", tmp_path / "t.zip")
    assert code == 2 and "not images" in err


def test_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["dataset", "--source", "digits", "--dest", str(tmp_path / "d.zip"), "--resolution", "32x16"])
    assert e.value.code == 2 and "EDM datasets are square" in capsys.readouterr().err
    code, _, err = run(capsys, "--source", "digits", "--dest", tmp_path / "d.zip", "--resolution", 32)
    assert code == 2 and "images are 8x8, not 32x32: choose a transform" in err
    code, _, err = run(capsys, "--source", "digits", "--dest", tmp_path / "d.zip", "--max-images", 0)
    assert code == 2 and "--max-images must be positive" in err
    assert only(tmp_path) == []


def test_text_file_named_png_is_named_without_buffer_repr(tmp_path, capsys):
    src = tmp_path / "src"
    save(src / "0.png", np.zeros((8, 8), np.uint8))
    (src / "1.png").write_text("just text\n")
    code, _, err = run(capsys, "--source", src, "--dest", tmp_path / "out.zip")
    assert code == 2 and "1.png is not a readable image" in err and err.count("\n") == 1
    assert "BytesIO" not in err and "0x" not in err
    code = main(["fid", "ref", "--data", str(src), "--dest", str(tmp_path / "r.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "BytesIO" not in err
    assert only(tmp_path) == ["src"]
