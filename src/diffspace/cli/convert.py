"""`diffspace convert`: an NVlabs/edm snapshot (.pkl) as a diffspace checkpoint (.safetensors + JSON metadata).

    diffspace convert edm-cifar10-32x32-cond-vp.pkl cifar10-cond-vp.safetensors
    diffspace generate --network cifar10-cond-vp.safetensors --outdir out --seeds 0-63

The pickle is read by a restricted unpickler: no code stored in it is ever executed (EDM's own loader runs the
module source the file carries). The network is rebuilt from diffspace's classes with the same arguments and the
weights are copied bit for bit; the checkpoint's metadata keeps the training options the snapshot records (data
shape, label dimension, preconditioner and its arguments, dataset options, loss, augmentation). The output is
written atomically and an existing file is replaced only with --force. EDM snapshots also work directly:
`diffspace generate --network snapshot.pkl`.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshot", metavar="SNAPSHOT.pkl", help="NVlabs/edm network snapshot (network-snapshot-*.pkl, "
                                                            "edm-*.pkl)")
    p.add_argument("out", metavar="OUT.safetensors", help="diffspace checkpoint to write")
    p.add_argument("--key", default="ema", help="entry of the snapshot holding the network (default ema)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffspace.errors import CheckpointError, ConfigError
    from diffspace.io import check_output_file
    from diffspace.io.checkpoint import read_tensors, save_network
    from diffspace.io.edm_pickle import load_edm_snapshot

    src, out = Path(args.snapshot), Path(args.out)
    if src.is_dir():
        raise ConfigError(f"{src} is a folder: convert reads EDM snapshots (.pkl); diffusers folders are used "
                          "directly with --network DIR")
    if not src.is_file():
        raise CheckpointError(f"EDM snapshot {src} does not exist")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {out.parent} does not exist: create it first")
    check_output_file(out, force=args.force, option="OUT")
    try:
        net, info = load_edm_snapshot(src, key=args.key)
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from None
    info = dict(info, source={"format": "NVlabs/edm snapshot", "file": src.name})
    save_network(out, net, info=info)
    tensors, _ = read_tensors(out)  # verifies the digest of what was written
    edm = info["edm"]
    print(f"{src} -> {out}: {edm['precond']} around {type(net.model).__name__}, data {info['data']['shape']}, "
          f"label_dim {info['data']['label_dim']}, {len(tensors)} tensors, "
          f"{sum(t.numel() for t in tensors.values()):,} values")
    return 0
