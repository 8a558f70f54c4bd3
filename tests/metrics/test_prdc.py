"""Precision/recall/density/coverage on configurations whose values follow from the definitions."""

import numpy as np
import pytest

from diffspace.errors import DataError
from diffspace.metrics import prdc as prdc_module
from diffspace.metrics.prdc import knn_radii, prdc


def test_identical_sets():
    # Every Yⱼ = Xⱼ lies in its own ball, and each real ball holds exactly k points strictly inside (itself and
    # its k − 1 nearest neighbours; the k-th is on the boundary), so density = k·n/(k·n) = 1 exactly.
    x = np.random.default_rng(0).standard_normal((300, 8))
    out = prdc(x, x.copy(), k=5)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_disjoint_far_apart_sets():
    x = np.random.default_rng(1).standard_normal((200, 8))
    out = prdc(x, x + 1000.0, k=5)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_hand_computed_one_dimensional_example():
    # k = 1. Real 0, 1, 3, 20 have radii 1, 1, 2, 17; fake 0.5, 2.5, 10 have radii 2, 2, 7.5.
    # precision: 0.5 ∈ B(0,1), 2.5 ∈ B(3,2), 10 ∈ B(20,17) -> 1.
    # density: 0.5 is in B(0,1) and B(1,1); 2.5 in B(3,2); 10 in B(20,17) -> 4 / 3.
    # recall: 0, 1 ∈ B(0.5,2); 3 ∈ B(2.5,2); 20 ∉ B(10,7.5) -> 3/4.  coverage: every real ball holds a fake -> 1.
    real = np.array([[0.0], [1.0], [3.0], [20.0]])
    fake = np.array([[0.5], [2.5], [10.0]])
    out = prdc(real, fake, k=1)
    assert out["precision"] == 1.0 and out["recall"] == 0.75 and out["coverage"] == 1.0
    assert out["density"] == pytest.approx(4 / 3, abs=1e-12)


def test_half_overlap_and_blocking(monkeypatch):
    # Fake = the first half of the real points plus far-away copies of the second half: exactly half of the fake
    # points sit in real balls (precision 1/2); at least the first half of the real points are recalled and covered
    # (the rest may fall in the wider balls of the sparser fake set, or hold a fake point in their own ball).
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 4))
    y = np.concatenate([x[:200], x[200:] + 1e3])
    full = prdc(x, y, k=5)
    assert full["precision"] == 0.5 and full["recall"] >= 0.5 and full["coverage"] >= 0.5
    monkeypatch.setattr(prdc_module, "BLOCK", 37)  # row blocks must not change anything
    assert prdc(x, y, k=5) == full
    direct = np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, 5]  # index 0 is the point itself
    np.testing.assert_allclose(knn_radii(prdc_module.torch.as_tensor(x), 5).numpy(), direct, rtol=1e-12)


def test_bad_input():
    with pytest.raises(DataError, match="more than 5"):
        prdc(np.zeros((5, 2)), np.zeros((10, 2)))
    with pytest.raises(DataError, match="same dimension"):
        prdc(np.zeros((10, 2)), np.zeros((10, 3)))
