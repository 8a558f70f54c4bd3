"""Data order and per-step randomness: functions of (seed, step, position) only."""

import numpy as np
import torch

from diffspace.train.augment import AugmentPipe, AugmentPoints2D
from diffspace.train.loss import EDMLoss
from diffspace.train.stream import DataOrder, StepRandomness, derive_seed, rank_slices


def test_epochs_are_permutations_and_concatenate():
    order = DataOrder(10, seed=3)
    idx = order.indices(0, 35)
    for e in range(3):
        assert sorted(idx[10 * e:10 * (e + 1)].tolist()) == list(range(10))
    assert not np.array_equal(idx[:10], idx[10:20])  # a new permutation per epoch (10! possibilities)
    # Any window equals the same window of the full sequence (resume in the middle of an epoch).
    assert np.array_equal(DataOrder(10, seed=3).indices(7, 23), idx[7:23])
    assert not np.array_equal(DataOrder(10, seed=4).indices(0, 10), idx[:10])


def test_rank_slices_partition_the_global_batch():
    for world in (1, 2, 4):
        for bg in (2, 4, 8):
            rows = [r for rank in range(world) for lo, hi in rank_slices(16, world, rank, min(bg, 16 // world))
                    for r in range(lo, hi)]
            assert rows == list(range(16))


def test_derive_seed_separates_purposes():
    seeds = {derive_seed(0, p, s) for p in range(6) for s in range(100)}
    assert len(seeds) == 600
    assert derive_seed(5, 1, 2) == derive_seed(5, 1, 2)


def test_slices_do_not_depend_on_split_points():
    loss = EDMLoss()
    full = StepRandomness(0, 17, 8, (2,), loss, AugmentPoints2D(1.0))
    x = torch.randn(8, 2)
    whole, whole_labels = full.augment(x, 0, 8)
    for lo, hi in ((0, 4), (4, 8), (2, 6)):
        part = StepRandomness(0, 17, 8, (2,), loss, AugmentPoints2D(1.0))
        assert torch.equal(part.sigma[lo:hi], full.sigma[lo:hi]) and torch.equal(part.noise, full.noise)
        xa, la = part.augment(x[lo:hi], lo, hi)
        assert torch.equal(xa, whole[lo:hi]) and torch.equal(la, whole_labels[lo:hi])
    assert whole_labels[:, 0].sum() > 0  # some points were flipped (P(no flip of 8) = 1/256 with p = 1)


def test_image_pipeline_slice_matches_full_batch():
    pipe = AugmentPipe(0.5)
    x = torch.randn(6, 3, 8, 8)
    full = StepRandomness(1, 3, 6, (3, 8, 8), EDMLoss(), pipe)
    whole, labels = full.augment(x, 0, 6)
    part, part_labels = full.augment(x[2:5], 2, 5)
    torch.testing.assert_close(part, whole[2:5], rtol=0, atol=1e-6)  # resampling in smaller batches: rounding
    assert torch.equal(part_labels, labels[2:5])
