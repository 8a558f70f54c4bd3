"""`diffspace features train`: train a small classifier on a labelled dataset and save it as a feature network
for `diffspace fid ref/calc --features PATH` (small-data FID, e.g. MNIST-like data)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("train", help="train a classifier feature network on a labelled dataset",
                       description="Train a small CNN classifier (cross-entropy on the labels); its penultimate "
                                   "layer gives the features.")
    p.add_argument("--data", required=True, metavar="NAME|PATH", help="labelled dataset: fashion-mnist, mnist, "
                   "digits, an EDM zip with dataset.json, ...")
    p.add_argument("--out", required=True, metavar="PATH", help="output .safetensors file")
    p.add_argument("--test", default=None, metavar="NAME|PATH",
                   help="test set for the accuracy (default: NAME:test when it exists, else 10%% held out)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-decayed (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling (default 0)")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv layers (default 32)")
    p.add_argument("--feature-dim", type=int, default=128, help="feature dimension (default 128)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: a GPU when present)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")


def _load(spec: str):
    """uint8 images [n, C, H, W] and integer class labels [n] of a labelled dataset."""
    import numpy as np

    from diffspace.data import open_dataset
    from diffspace.errors import DataError

    ds = open_dataset(spec, use_labels=True)
    if not ds.has_labels:
        raise DataError(f"dataset {spec!r} has no class labels; a feature network is trained on labelled data")
    images = np.asarray(ds.images_uint8(0, len(ds)))
    if hasattr(ds, "class_indices"):
        labels = np.asarray(ds.class_indices())
    else:
        labels = np.stack([np.asarray(ds[i][1]) for i in range(len(ds))]).argmax(1)
    return images, labels, int(ds.label_dim)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from diffspace.errors import ConfigError, DataError
    from diffspace.metrics.features import select_device
    from diffspace.metrics.smallfeat import accuracy, save_feature_net, train_feature_net

    if args.epochs < 1 or args.batch < 1 or args.lr <= 0 or args.width < 1 or args.feature_dim < 1:
        raise ConfigError("--epochs, --batch, --width, --feature-dim must be >= 1 and --lr > 0")
    from diffspace.io.files import check_output_file

    check_output_file(args.out, force=args.force, option="--out")
    device = select_device(args.device)
    images, labels, num_classes = _load(args.data)
    test_spec = args.test or (f"{args.data}:test" if ":" not in args.data else None)
    test = None
    if test_spec is not None:
        try:
            test = _load(test_spec)[:2]
        except DataError:
            if args.test:  # asked for explicitly: report it
                raise
    if test is None:  # hold out a seeded 10%
        perm = np.random.RandomState(args.seed).permutation(len(images))
        cut = len(images) // 10
        test = images[perm[:cut]], labels[perm[:cut]]
        images, labels = images[perm[cut:]], labels[perm[cut:]]
        test_spec = f"10% of {args.data} held out"
    if test[0].shape[1:] != images.shape[1:]:
        raise DataError(f"test images {test[0].shape[1:]} and training images {images.shape[1:]} differ in shape")
    t0 = time.time()
    net = train_feature_net(images, labels, num_classes, epochs=args.epochs, batch=args.batch, lr=args.lr,
                            seed=args.seed, width=args.width, feature_dim=args.feature_dim, device=device,
                            log=lambda s: print(s, file=sys.stderr))
    acc = accuracy(net, test[0], test[1], device=device)
    save_feature_net(net, args.out, dataset=args.data, test=test_spec, test_accuracy=acc, epochs=args.epochs,
                     seed=args.seed, num_train=len(images))
    print(f"test accuracy {acc:.4f} ({test_spec}); trained on {len(images)} images in {time.time() - t0:.1f} s; "
          f"saved {args.out}")
    return 0
