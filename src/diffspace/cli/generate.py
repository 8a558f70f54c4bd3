"""`diffspace generate`: images from a checkpoint, one per seed, as EDM's `generate.py` writes them.

    diffspace generate --network runs/fmnist --outdir out --seeds 0-63 --batch 64
    diffspace generate --network net.safetensors --seeds 0-999 --sampler dpmpp_2m --steps 10 --npz samples.npz
    diffspace generate --network net.safetensors --outdir out --sampler edm --S_churn 40 --S_min 0.05 --S_max 50
    torchrun --standalone --nproc_per_node=2 -m diffspace generate --network net.safetensors --outdir out

A seed gives the same image whatever --batch, the number of processes and the number of threads (the network
runs on fixed micro-batches of --micro-batch samples). Files appear only once everything is generated: they are
written into a temporary folder and moved into place at the end; nothing is left behind on an error.
"""

from __future__ import annotations

import argparse

_S_FLAGS = (("S_churn", "stochasticity strength (edm sampler; default 0 = deterministic)"),
            ("S_min", "lowest sigma with churn (edm: S_tmin; default 0)"),
            ("S_max", "highest sigma with churn (edm: S_tmax; default inf)"),
            ("S_noise", "noise inflation (default 1)"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to generate")
    g.add_argument("--network", metavar="CKPT", help="network snapshot, training state or run folder (required)")
    g.add_argument("--which", choices=("ema", "net"), default="ema", help="weights of a training state (default ema)")
    g.add_argument("--seeds", default="0-63", metavar="LIST", help="seeds, e.g. 0-63 or 1,2,5-7 (default 0-63)")
    g.add_argument("--class", dest="class_idx", type=int, default=None, metavar="N",
                   help="class of every image (conditional networks; default: a random class per seed)")
    g.add_argument("--batch", type=int, default=64, help="images per batch and process (default 64)")

    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", default="edm", help="sampler name (default edm = Heun, Algorithm 2); "
                                                    "`--sampler list` prints them all")
    g.add_argument("--steps", type=int, default=18, help="number of noise levels (default 18: NFE 35 with Heun)")
    g.add_argument("--grid-type", "--disc", dest="grid_type", default="edm",
                   help="noise levels: edm | vp | ve | iddpm | exponential | li (default edm)")
    g.add_argument("--sigma_min", "--sigma-min", dest="sigma_min", type=float, default=None,
                   help="lowest noise level (default 0.002 for edm; clamped to the network's)")
    g.add_argument("--sigma_max", "--sigma-max", dest="sigma_max", type=float, default=None,
                   help="highest noise level (default 80 for edm; clamped to the network's)")
    g.add_argument("--rho", type=float, default=7.0, help="exponent of the edm grid (default 7)")
    for name, text in _S_FLAGS:
        g.add_argument(f"--{name}", dest=name, type=float, default=None, help=text)
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, repeatable (e.g. --opt afs=true, --opt solver=euler)")
    g.add_argument("--jump-at", type=int, default=None, metavar="K",
                   help="ODE-Jump: stop at step K (1..steps) and output that step's denoised estimate D(x; sigma); "
                        "Euler then costs K NFE instead of steps")

    g = p.add_argument_group("output")
    g.add_argument("--outdir", default=None, metavar="DIR", help="folder for one PNG per seed ({seed:06d}.png)")
    g.add_argument("--subdirs", action="store_true", help="PNGs in sub-folders of 1000 seeds (000000/, 001000/, …)")
    g.add_argument("--grid", default=None, metavar="FILE.png", help="also write all images tiled into one PNG")
    g.add_argument("--npz", default=None, metavar="FILE", help="also write uint8 `images` [N,H,W,C], `seeds` "
                                                                "(and `labels`) into one .npz")

    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    g.add_argument("--micro-batch", type=int, default=None, metavar="N",
                   help="samples per network call; images depend on it (default 8 on CPU, 64 on GPU)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: torch's; torchrun gives each process 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def sampler_options(args: argparse.Namespace) -> dict:
    """--opt pairs plus the EDM S_* flags under the sampler's own names."""
    from diffspace.generate import parse_options

    options = parse_options(args.opt)
    rename = {"S_min": "S_tmin", "S_max": "S_tmax"} if args.sampler != "ablation" else {}
    for name, _ in _S_FLAGS:
        value = getattr(args, name)
        if value is not None:
            options[rename.get(name, name)] = value
    return options


def _pick_device(name: str):
    import torch

    from diffspace.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def _list_samplers() -> int:
    from diffspace import samplers

    for name in samplers.names():
        entry = samplers.get(name)
        opts = ", ".join(o for o in entry.options if o != "noise") or "-"
        print(f"{name:16s} {entry.summary}  [options: {opts}]")
    print(f"{'ablation':16s} EDM's Table-1 sampler (any schedule/scaling)  [options: solver, schedule, scaling, "
          "epsilon_s, C_1, C_2, M, alpha, S_churn, S_min, S_max, S_noise]")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sampler == "list":
        return _list_samplers()
    import signal
    import sys
    import time

    import torch

    from diffspace import generate as G
    from diffspace.errors import ConfigError
    from diffspace.samplers import parse_seeds
    from diffspace.train import distributed as dist

    # Everything that can be checked is checked before any file is touched.
    if not args.network:
        raise ConfigError("--network is missing: pass a checkpoint file or run folder")
    seeds = parse_seeds(args.seeds)
    options = sampler_options(args)
    if not (args.outdir or args.npz or args.grid):
        raise ConfigError("nothing to write: pass --outdir DIR (PNGs), --npz FILE or --grid FILE.png")
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch} must be >= 1")
    if args.micro_batch is not None and args.micro_batch < 1:
        raise ConfigError(f"--micro-batch {args.micro_batch} must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    device = dist.init(_pick_device(args.device))
    rank, world = dist.rank(), dist.world_size()
    if world > 1:  # torchrun stops the other ranks with SIGTERM when one fails: clean up on the way out
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    net, info = G.load(args.network, which=args.which, device=device)
    shape = G.image_shape(net, info)
    if len(shape) != 3:
        raise ConfigError(f"{args.network} generates vectors of shape {list(shape)}, not images")
    G.check_class(net, args.class_idx)
    G.check_sampler(net, args.sampler, options, steps=args.steps, grid=args.grid_type, sigma_min=args.sigma_min,
                    sigma_max=args.sigma_max, rho=args.rho, jump_at=args.jump_at)

    out = Outputs(args.outdir, args.npz, args.grid, args.subdirs)
    try:
        out.open(rank)
        t0 = time.time()
        mine = G.shard(seeds, rank, world)
        result = None
        if mine:
            result = G.generate(net, mine, sampler=args.sampler, options=options, steps=args.steps,
                                grid=args.grid_type, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                                rho=args.rho, batch=args.batch, class_idx=args.class_idx, shape=shape, device=device,
                                micro_batch=args.micro_batch, progress=rank == 0 and not args.no_progress,
                                on_batch=out.write_pngs, jump_at=args.jump_at)
            out.write_part(rank, result)
        nfe = dist.broadcast_object(result.nfe if result is not None else 0)
        dist.barrier()
        if rank == 0:
            written = out.finish(world)
            secs = time.time() - t0
            dist.print0(f"{len(seeds)} images, sampler {args.sampler}, {args.steps} steps, NFE {nfe} per image, "
                        f"{world} process(es), {secs:.1f} s; wrote {', '.join(written)}")
        dist.barrier()
    except BaseException:
        out.abort()
        raise
    finally:
        dist.shutdown()
    return 0


def to_pil(img):
    """uint8 [H, W, C] (C = 1 or 3) -> PIL image ('L' or 'RGB'), as EDM saves them."""
    import PIL.Image

    return PIL.Image.fromarray(img[:, :, 0], "L") if img.shape[2] == 1 else PIL.Image.fromarray(img, "RGB")


class Outputs:
    """Writes into a temporary folder (shared by all ranks), then moves the results into place on rank 0."""

    def __init__(self, outdir, npz, grid, subdirs: bool):
        from pathlib import Path

        self.outdir = Path(outdir) if outdir else None
        self.npz = Path(npz) if npz else None
        self.grid = Path(grid) if grid else None
        self.subdirs = subdirs
        self.created: list = []
        self.stage = None

    def _mkdir(self, folder) -> None:
        from diffspace.io.checkpoint import ensure_writable_dir

        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        ensure_writable_dir(folder)
        self.created += missing

    def open(self, rank: int) -> None:
        import tempfile
        from pathlib import Path

        from diffspace.errors import ConfigError
        from diffspace.train import distributed as dist

        stage_in = None
        if rank == 0:
            for f in (self.npz, self.grid):
                if f is not None and f.is_dir():
                    raise ConfigError(f"{f} is a folder: give a file name")
            for folder in [self.outdir] + [f.parent for f in (self.npz, self.grid) if f is not None]:
                if folder is not None:
                    self._mkdir(folder)
            stage_in = self.outdir or (self.npz or self.grid).parent
            self.stage = Path(tempfile.mkdtemp(prefix=".generate-", dir=stage_in))
        self.stage = Path(dist.broadcast_object(str(self.stage) if self.stage else None))

    def _png_path(self, root, seed: int):
        return (root / f"{seed - seed % 1000:06d}" if self.subdirs else root) / f"{seed:06d}.png"

    def write_pngs(self, part) -> None:
        if self.outdir is None:
            return
        for seed, img in zip(part.seeds, part.images):
            path = self._png_path(self.stage, seed)
            path.parent.mkdir(exist_ok=True)
            to_pil(img).save(path)

    def write_part(self, rank: int, result) -> None:
        if self.npz is None and self.grid is None:
            return
        import numpy as np

        arrays = {"images": result.images, "seeds": np.asarray(result.seeds, dtype=np.int64)}
        if result.labels is not None:
            arrays["labels"] = result.labels.astype(np.int64)
        np.savez(self.stage / f"part-{rank:04d}.npz", **arrays)

    def finish(self, world: int) -> list[str]:
        """Rank 0: assemble npz/grid, move the PNGs into place, remove the temporary folder."""
        import os
        import shutil

        import numpy as np

        from diffspace.io.checkpoint import atomic_write

        written = []
        if self.npz is not None or self.grid is not None:
            parts = []
            for r in range(world):
                f = self.stage / f"part-{r:04d}.npz"
                if f.exists():
                    with np.load(f) as z:
                        parts.append({k: z[k] for k in z.files})
            seeds = np.concatenate([p["seeds"] for p in parts])
            order = np.argsort(seeds, kind="stable")
            images = np.concatenate([p["images"] for p in parts])[order]
            arrays = {"images": images, "seeds": seeds[order]}
            if all("labels" in p for p in parts):
                arrays["labels"] = np.concatenate([p["labels"] for p in parts])[order]
            if self.npz is not None:
                def save_npz(tmp):
                    with open(tmp, "wb") as fh:
                        np.savez(fh, **arrays)

                atomic_write(self.npz, save_npz)
                written.append(str(self.npz))
            if self.grid is not None:
                from diffspace.generate import tile

                img = to_pil(tile(images))
                atomic_write(self.grid, lambda tmp: img.save(tmp, format="PNG"))
                written.append(str(self.grid))
        if self.outdir is not None:
            count = 0
            for src in sorted(self.stage.rglob("*.png")):
                dst = self.outdir / src.relative_to(self.stage)
                dst.parent.mkdir(exist_ok=True)
                os.replace(src, dst)
                count += 1
            written.insert(0, f"{count} PNGs to {self.outdir}")
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage = None
        return written

    def abort(self) -> None:
        """Remove the temporary folder and the folders this run created (if they are empty)."""
        import shutil

        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        for folder in self.created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
