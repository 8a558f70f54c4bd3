"""`diffspace generate`: images from a checkpoint, one per seed, as EDM's `generate.py` writes them.

    diffspace generate --network runs/fmnist --outdir out --seeds 0-63 --batch 64
    diffspace generate --network net.safetensors --seeds 0-999 --sampler dpmpp_2m --steps 10 --npz samples.npz
    diffspace generate --network net.safetensors --outdir out --sampler edm --S_churn 40 --S_min 0.05 --S_max 50
    diffspace generate --network net.safetensors --outdir out --solver euler --disc vp --schedule vp --scaling vp
    torchrun --standalone --nproc_per_node=2 -m diffspace generate --network net.safetensors --outdir out

As in EDM's generate.py, any of --solver, --disc, --schedule, --scaling selects EDM's Table-1 sampler
(`samplers.ablation`) with those choices. An existing --npz or --grid file is replaced only with --force.

A seed gives the same image whatever --batch, the number of processes and the number of threads (the network
runs on fixed micro-batches of --micro-batch samples). Files appear only once everything is generated: they are
written into a hidden temporary folder and moved into place at the end; nothing is left behind on an error, Ctrl-C
or SIGTERM, and the next run removes the temporary folder of a run killed by SIGKILL.
"""

from __future__ import annotations

import argparse

SOLVERS, DISCS, SCHEDULES, SCALINGS = ("euler", "heun"), ("vp", "ve", "iddpm", "edm"), ("vp", "ve", "linear"), \
    ("vp", "none")
_S_FLAGS = (("S_churn", "stochasticity strength (edm sampler; default 0 = deterministic)"),
            ("S_min", "lowest sigma with churn (edm: S_tmin; default 0)"),
            ("S_max", "highest sigma with churn (edm: S_tmax; default inf)"),
            ("S_noise", "noise inflation (default 1)"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to generate")
    g.add_argument("--network", metavar="CKPT", help="network snapshot, training state or run folder, EDM snapshot "
                                                     "(.pkl) or diffusers folder (required)")
    g.add_argument("--which", choices=("ema", "net"), default="ema", help="weights of a training state (default ema)")
    g.add_argument("--seeds", default="0-63", metavar="LIST", help="seeds, e.g. 0-63 or 1,2,5-7 (default 0-63)")
    g.add_argument("--class", dest="class_idx", type=int, default=None, metavar="N",
                   help="class of every image (conditional networks; default: a random class per seed)")
    g.add_argument("--batch", type=int, default=64, help="images per batch and process (default 64)")
    g.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="guidance weight: D_ref + W·(D − D_ref), 1 = none; classifier-free with the null label, or "
                        "autoguidance with --guidance-net (2 network evaluations per NFE)")
    g.add_argument("--guidance-net", dest="guidance_net", default=None, metavar="CKPT",
                   help="weaker network of the same shape and labels guiding the main one (autoguidance)")

    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", default=None, help="sampler name (default edm = Heun, Algorithm 2); "
                                                   "`--sampler list` prints them all")
    g.add_argument("--steps", type=int, default=18, help="number of noise levels (default 18: NFE 35 with Heun)")
    g.add_argument("--grid-type", dest="grid_type", default=None,
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
    g.add_argument("--nfe", type=int, default=None,
                   help="with --schedule FILE.json from `diffspace tune`: the budget whose plan (sampler, options, "
                        "noise levels) to use")

    g = p.add_argument_group("EDM's Table-1 sampler (any of these selects it, as in EDM's generate.py)")
    g.add_argument("--solver", choices=SOLVERS, default=None, help="ODE solver: euler | heun (default heun)")
    g.add_argument("--disc", choices=DISCS, default=None,
                   help="time steps: vp | ve | iddpm | edm (default edm); with --sampler NAME: its grid type")
    g.add_argument("--schedule", default=None, metavar="vp|ve|linear|FILE.json",
                   help="noise schedule sigma(t): vp | ve | linear (default linear); or a schedule file written by "
                        "`diffspace tune`, used with --nfe")
    g.add_argument("--scaling", choices=SCALINGS, default=None, help="signal scaling s(t): vp | none (default none)")

    g = p.add_argument_group("output")
    g.add_argument("--outdir", default=None, metavar="DIR", help="folder for one PNG per seed ({seed:06d}.png)")
    g.add_argument("--subdirs", action="store_true", help="PNGs in sub-folders of 1000 seeds (000000/, 001000/, …)")
    g.add_argument("--grid", default=None, metavar="FILE.png", help="also write all images tiled into one PNG")
    g.add_argument("--npz", default=None, metavar="FILE", help="also write uint8 `images` [N,H,W,C], `seeds` "
                                                                "(and `labels`) into one .npz")
    g.add_argument("--force", action="store_true", help="replace an existing --npz/--grid file (default: refuse; "
                                                        "PNGs of the same seeds in --outdir are always replaced); "
                                                        "use a --schedule file tuned for another model")

    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    g.add_argument("--micro-batch", type=int, default=None, metavar="N",
                   help="samples per network call; images depend on it (default 8 on CPU, 64 on GPU)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: torch's; torchrun gives each process 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def split_schedule(args: argparse.Namespace) -> None:
    """--schedule is EDM's σ(t) (vp, ve, linear) or a tuned schedule file: the file goes to args.schedule_file."""
    if not hasattr(args, "schedule_file"):
        args.schedule_file = None
        if args.schedule is not None and args.schedule not in SCHEDULES:
            from pathlib import Path

            from diffspace.errors import ConfigError

            if not Path(args.schedule).is_file():
                raise ConfigError(f"--schedule {args.schedule}: choose vp, ve or linear, or give an existing schedule "
                                  "file written by diffspace tune")
            args.schedule_file, args.schedule = args.schedule, None


def resolve_sampler(args: argparse.Namespace) -> tuple[str, str]:
    """(sampler, grid type) of the command line. As in EDM's generate.py, --solver/--disc/--schedule/--scaling
    select the Table-1 sampler ('ablation'); with an explicit --sampler NAME, --disc only names its grid."""
    from diffspace.errors import ConfigError

    split_schedule(args)
    table1 = [f"--{k} {getattr(args, k)}" for k in ("solver", "schedule", "scaling") if getattr(args, k) is not None]
    if args.grid_type is not None and args.disc is not None and args.grid_type != args.disc:
        raise ConfigError(f"--grid-type {args.grid_type} and --disc {args.disc} disagree: give one of them")
    grid = args.disc or args.grid_type or "edm"
    sampler = args.sampler
    if table1 and sampler not in (None, "ablation"):
        raise ConfigError(f"{' '.join(table1)} select EDM's Table-1 sampler, not --sampler {sampler}: drop "
                          f"--sampler (or pass --sampler ablation)")
    if sampler is None:
        sampler = "ablation" if table1 or args.disc is not None else "edm"
    return sampler, grid


def sampler_options(args: argparse.Namespace, sampler: str | None = None) -> dict:
    """--opt pairs, the EDM S_* flags under the sampler's own names and the Table-1 flags (solver, schedule,
    scaling) for the 'ablation' sampler."""
    from diffspace.samplers import parse_options

    sampler = sampler or args.sampler or "edm"
    options = parse_options(sampler, args.opt)  # typed and checked with the sampler's own options
    rename = {"S_min": "S_tmin", "S_max": "S_tmax"} if sampler != "ablation" else {}
    for name, _ in _S_FLAGS:
        value = getattr(args, name)
        if value is not None:
            options[rename.get(name, name)] = value
    if sampler == "ablation":
        for name in ("solver", "schedule", "scaling"):
            if getattr(args, name, None) is not None:
                options[name] = getattr(args, name)
    return options


def unique_seeds(text: str) -> list[int]:
    """--seeds as a list in the given order, each seed once (a repeated seed would give the same image twice and
    one PNG); says so on stderr when the list repeats seeds."""
    import sys

    from diffspace.samplers import parse_seeds

    seeds = parse_seeds(text)
    unique = list(dict.fromkeys(seeds))
    if len(unique) < len(seeds):
        again = sorted({s for s in seeds if seeds.count(s) > 1})
        print(f"note: --seeds {text} repeats seed(s) {', '.join(map(str, again[:5]))}"
              f"{', …' if len(again) > 5 else ''}: generating {len(unique)} images, one per seed", file=sys.stderr)
    return unique


def _scheduled(args: argparse.Namespace, net, options: dict):
    """(sampler, options, sigmas, steps) of the --schedule plan for --nfe; the model's digest must match."""
    from diffspace.errors import ConfigError
    from diffspace.tune.schedule import load_schedule

    if not args.schedule_file:
        raise ConfigError("--nfe picks a plan of a schedule file: pass --schedule FILE.json (from diffspace tune) too")
    if options:
        raise ConfigError("--schedule sets the sampler and its options: drop --opt and the S_* flags")
    if args.jump_at is not None:
        raise ConfigError("--schedule sets the whole run: drop --jump-at")
    plan = load_schedule(args.schedule_file, args.nfe, model=net, force=args.force)
    return plan.sampler, plan.options, plan.sigmas, len(plan.sigmas) - 1


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


def _check_outputs(args: argparse.Namespace) -> None:
    """Output paths, before anything is read or created: something to write, --npz/--grid not existing files
    (unless --force), every destination folder writable."""
    from diffspace.errors import ConfigError
    from diffspace.io.files import check_output_file, writable_parent

    if not (args.outdir or args.npz or args.grid):
        raise ConfigError("nothing to write: pass --outdir DIR (PNGs), --npz FILE or --grid FILE.png")
    for option, path in (("--npz", args.npz), ("--grid", args.grid)):
        if path is not None:
            check_output_file(path, force=args.force, option=option)
    if args.outdir is not None:
        from pathlib import Path

        if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
            raise ConfigError(f"--outdir {args.outdir} is a file, not a folder: choose another --outdir")
        writable_parent(args.outdir, f"--outdir {args.outdir}")


def _check_arguments(args: argparse.Namespace):
    """Everything the command line alone decides, checked before any file is read or created:
    (seeds, sampler, grid type, sampler options)."""
    from diffspace.errors import ConfigError

    if not args.network:
        raise ConfigError("--network is missing: pass a checkpoint file or run folder")
    seeds = unique_seeds(args.seeds)
    sampler, grid = resolve_sampler(args)
    options = sampler_options(args, sampler)
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch} must be >= 1")
    if args.micro_batch is not None and args.micro_batch < 1:
        raise ConfigError(f"--micro-batch {args.micro_batch} must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    _check_outputs(args)
    return seeds, sampler, grid, options


def _warn(message: str) -> None:
    import sys

    print(f"diffspace generate: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.sampler == "list":
        return _list_samplers()
    import time

    import torch

    from diffspace import generate as G
    from diffspace.errors import ConfigError
    from diffspace.train import distributed as dist

    seeds, sampler, grid, options = _check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = dist.init(_pick_device(args.device))
    rank, world = dist.rank(), dist.world_size()
    net, info = G.load(args.network, which=args.which, device=device, on_skip=_warn if rank == 0 else None)
    from diffspace.external.load import guided

    net = guided(net, args.guidance, args.guidance_net, device=device)
    shape = G.image_shape(net, info)
    if len(shape) != 3:
        raise ConfigError(f"{args.network} generates vectors of shape {list(shape)}, not images")
    G.check_class(net, args.class_idx)
    sigmas = None
    if args.schedule_file or args.nfe is not None:
        sampler, options, sigmas, args.steps = _scheduled(args, net, options)
    else:
        G.check_sampler(net, sampler, options, steps=args.steps, grid=grid, sigma_min=args.sigma_min,
                        sigma_max=args.sigma_max, rho=args.rho, jump_at=args.jump_at)

    out = Outputs(args.outdir, args.npz, args.grid, args.subdirs)
    try:
        out.open(rank)
        t0 = time.time()
        mine = G.shard(seeds, rank, world)
        result = None
        if mine:
            result = G.generate(net, mine, sampler=sampler, options=options, steps=args.steps,
                                grid=grid, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                                rho=args.rho, sigmas=sigmas, batch=args.batch, class_idx=args.class_idx, shape=shape,
                                device=device, micro_batch=args.micro_batch,
                                progress=rank == 0 and not args.no_progress, on_batch=out.write_pngs,
                                jump_at=args.jump_at)
            out.write_part(rank, result)
        nfe = dist.broadcast_object(result.nfe if result is not None else 0)
        dist.barrier()
        if rank == 0:
            written = out.finish(world)
            secs = time.time() - t0
            if args.guidance is not None:
                nfe = f"{nfe} ({nfe * net.nfe_factor} network evaluations with guidance)"
            dist.print0(f"{len(seeds)} images, sampler {sampler}, {args.steps} steps, NFE {nfe} per image, "
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


STAGE_PREFIX = ".generate-"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def remove_stale_stages(folder, min_age: float = 60.0) -> list:
    """Remove the temporary `.generate-*` folders that dead runs left in `folder` (a run killed by SIGKILL cannot
    clean up): those whose owner process, on this host, no longer exists, and those without an owner file older
    than `min_age` seconds (left by older versions). Folders of live runs and of other hosts are kept; image
    readers skip them anyway (hidden entries). Returns the removed folders."""
    import json
    import shutil
    import socket
    import time
    from pathlib import Path

    removed = []
    for stage in sorted(Path(folder).glob(f"{STAGE_PREFIX}*")):
        if not stage.is_dir():
            continue
        try:
            owner = json.loads((stage / "owner.json").read_text())
            dead = owner.get("host") == socket.gethostname() and not _alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            try:
                dead = time.time() - stage.stat().st_mtime > min_age
            except OSError:
                continue
        if dead:
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


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
        self.created += missing
        ensure_writable_dir(folder)

    def open(self, rank: int) -> None:
        import json
        import os
        import socket
        import tempfile
        from pathlib import Path

        from diffspace.errors import ConfigError
        from diffspace.train import distributed as dist

        if rank == 0:
            for f in (self.npz, self.grid):
                if f is not None and f.is_dir():
                    raise ConfigError(f"{f} is a folder: give a file name")
            for folder in [self.outdir] + [f.parent for f in (self.npz, self.grid) if f is not None]:
                if folder is not None:
                    self._mkdir(folder)
            stage_in = self.outdir or (self.npz or self.grid).parent
            removed = remove_stale_stages(stage_in)
            if removed:
                _warn(f"removed {len(removed)} temporary folder(s) of killed runs ({removed[0].name}, …) in {stage_in}")
            with self._writing(stage_in):
                self.stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=stage_in))
                (self.stage / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        self.stage = Path(dist.broadcast_object(str(self.stage) if self.stage else None))

    @staticmethod
    def _writing(where):
        """OSError while writing (disk full, permissions) -> one-line CheckpointError naming the folder."""
        import contextlib

        from diffspace.errors import CheckpointError

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except OSError as e:
                raise CheckpointError(f"cannot write the images to {where} ({e.strerror or e}): free some space or "
                                      "choose another destination; nothing was written") from None

        return guard()

    def _png_path(self, root, seed: int):
        return (root / f"{seed - seed % 1000:06d}" if self.subdirs else root) / f"{seed:06d}.png"

    def write_pngs(self, part) -> None:
        if self.outdir is None:
            return
        with self._writing(self.outdir):
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
        with self._writing(self.stage.parent):
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
            with self._writing(self.outdir):
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
