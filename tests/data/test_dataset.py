"""Dataset protocol, resolution transforms and built-in image sets."""

import numpy as np
import PIL.Image
import pytest
import torch

from diffspace.data import ArrayImageDataset, open_dataset, to_float, transform_images
from diffspace.data.dataset import lanczos_matrix, resize_lanczos
from diffspace.errors import DataError


def batch(n=4, c=1, h=28, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def test_to_float_range():
    x = to_float(np.array([0, 1, 127, 128, 255], dtype=np.uint8))
    assert x.dtype == torch.float32
    # x/127.5 - 1: the end points are exact, 127 and 128 sit 1/255 either side of 0.
    torch.testing.assert_close(x, torch.tensor([-1, 1 / 127.5 - 1, -1 / 255, 1 / 255, 1]), atol=1e-7, rtol=0)


def test_pad_28_to_32():
    x = batch()
    y = transform_images(x, 32, "pad", "x")
    assert y.shape == (4, 1, 32, 32)
    np.testing.assert_array_equal(y[:, :, 2:30, 2:30], x)  # 2-pixel border on every side
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (y[:, :, border] == 0).all()
    assert (to_float(y)[:, :, border] == -1).all()  # black = -1 after scaling
    with pytest.raises(DataError, match="cannot pad 28x28 images to 16x16"):
        transform_images(x, 16, "pad", "x")


def test_resize_matches_pillow_lanczos():
    x = batch(n=40, seed=1)
    rgb = batch(n=10, c=3, h=20, w=30, seed=2)
    for imgs, size in ((x, 32), (x, 14), (rgb, 32)):
        ours = transform_images(imgs, size, "resize", "x")
        ref = np.stack([np.asarray(PIL.Image.fromarray(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0))
                                   .resize((size, size), PIL.Image.Resampling.LANCZOS)) for im in imgs])
        ref = ref[:, None] if imgs.shape[1] == 1 else ref.transpose(0, 3, 1, 2)
        diff = np.abs(ours.astype(int) - ref)
        # Pillow rounds fixed-point (22-bit) weights; float32 weights can land on the other side of .5.
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    # Lanczos weights are normalised: constant images stay constant.
    flat = np.full((2, 1, 28, 28), 200, np.uint8)
    assert (resize_lanczos(flat, 32, 32) == 200).all()
    np.testing.assert_allclose(lanczos_matrix(28, 32).sum(1), 1, rtol=1e-12)


def test_center_crop_and_none():
    x = batch(n=2, h=10, w=14)
    y = transform_images(x, 10, "center-crop", "x")
    np.testing.assert_array_equal(y, x[:, :, :, 2:12])
    assert transform_images(x, 5, "center-crop", "x").shape == (2, 1, 5, 5)
    with pytest.raises(DataError, match="not square"):
        transform_images(x, None, "none", "x")
    with pytest.raises(DataError, match="images are 14x10, not 8x8: choose a transform"):
        transform_images(x, 8, "none", "x")
    with pytest.raises(DataError, match="unknown transform 'blur'"):
        transform_images(x, 8, "blur", "x")


def test_protocol_max_size_and_xflip():
    x = batch(n=10, c=3, h=6, w=6, seed=3)
    labels = np.arange(10) % 4
    ds = ArrayImageDataset("t", x, labels, use_labels=True, max_size=6, xflip=True)
    assert len(ds) == 12 and ds.label_dim == 4 and ds.has_labels
    keep = np.sort(np.random.RandomState(0).permutation(10)[:6])  # EDM's seeded subset
    imgs = ds.images_uint8()
    np.testing.assert_array_equal(imgs[:6], x[keep])
    np.testing.assert_array_equal(imgs[6:], x[keep][..., ::-1])
    np.testing.assert_array_equal(ds.class_indices(), np.tile(labels[keep], 2))
    img, lab = ds[7]
    np.testing.assert_array_equal(img, x[keep[1]][..., ::-1])
    assert lab.tolist() == np.eye(4)[labels[keep[1]]].tolist()
    assert ds[-1][0].shape == (3, 6, 6)
    with pytest.raises(IndexError):
        ds[12]
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    first = next(iter(loader))
    assert first[0].shape == (5, 3, 6, 6) and first[0].dtype == torch.uint8 and first[1].shape == (5, 4)
    plain = ArrayImageDataset("t", x, labels)  # labels ignored without use_labels (EDM)
    assert plain.label_dim == 0 and plain[0][1].shape == (0,)
    with pytest.raises(DataError, match="no class labels"):
        plain.class_indices()


def test_digits():
    ds = open_dataset("digits", use_labels=True)
    assert (len(ds), ds.num_channels, ds.resolution, ds.label_dim) == (1797, 1, 8, 10)
    x = ds.images_uint8()
    from sklearn.datasets import load_digits

    d = load_digits()
    np.testing.assert_array_equal(x[:, 0], np.rint(d.images * 255 / 16))  # 0..16 -> 0..255
    assert x.max() == 255 and x.min() == 0
    assert open_dataset("digits", resolution=32, transform="resize").resolution == 32


def test_open_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no-such: no such file or folder, and not a built-in dataset"):
        open_dataset("no-such")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: unknown dataset format"):
        open_dataset(tmp_path / "notes.txt")
    np.savez(tmp_path / "a.npz", images=batch(n=2, h=4, w=4))
    with pytest.raises(DataError, match="a.npz has no 'test' split"):
        open_dataset(f"{tmp_path / 'a.npz'}:test")
    with pytest.raises(DataError, match="has no test split"):
        open_dataset("digits:test")
