"""The training configuration (EDM's `train.py` options) and its checks."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from diffspace.errors import ConfigError

__all__ = ["TrainConfig", "IDENTITY_FIELDS", "PRECISIONS", "TRAIN_PRECONDS"]

PRECISIONS = ("fp32", "bf16", "fp16")
TRAIN_PRECONDS = ("vp", "ve", "edm")

# Options that define what is trained: a resumed run must keep them.
IDENTITY_FIELDS = ("data", "cond", "arch", "precond", "loss", "batch", "lr", "lr_rampup", "ema", "ema_rampup",
                   "dropout", "augment", "augment_label", "augment_kwargs", "xflip", "seed", "resolution",
                   "transform", "max_size", "sigma_data", "net_kwargs", "loss_kwargs")


@dataclass
class TrainConfig:
    """Options of one training run; names follow EDM's `train.py` (`--batch`, `--batch-gpu`, `--duration` …).

    Durations and EMA half-lives are in millions of images (Mimg), tick lengths in thousands (kimg).
    """

    data: str                                   # Dataset path or built-in name (e.g. 'toy:gmm8', 'cifar10').
    outdir: str                                 # Run folder (created; holds config, stats, checkpoints).
    arch: str = "ddpmpp"                        # Network preset: ddpmpp|ncsnpp|adm|ddpmpp-small|ncsnpp-small|mlp.
    precond: str = "edm"                        # Preconditioning and loss: vp|ve|edm.
    loss: str | None = None                     # Training loss vp|ve|edm when it differs (None = the precond's).
    cond: bool = False                          # Class-conditional (needs labels).
    batch: int = 512                            # Global batch size.
    batch_gpu: int | None = None                # Examples per process per accumulation round (None = all).
    duration: float = 200.0                     # Training length in Mimg.
    lr: float = 10e-4                           # Adam learning rate.
    lr_rampup: float = 10.0                     # Linear LR warm-up length in Mimg.
    ema: float = 0.5                            # EMA half-life in Mimg.
    ema_rampup: float | None = 0.05             # EMA ramp-up ratio (None = off).
    dropout: float | None = None                # Dropout (None = the preset's: 0.13 for ddpmpp/ncsnpp).
    augment: float | None = None                # Augmentation probability p (None = 0.12 images, 0 points).
    augment_label: bool = True                  # Feed the augmentation labels to the network (non-leaking).
    augment_kwargs: dict = field(default_factory=dict)  # Extra AugmentPipe/AugmentPoints2D arguments.
    xflip: bool = False                         # Dataset x-flips (doubles an image dataset).
    seed: int = 0                               # Seed of everything random.
    resolution: int | None = None               # Image resolution (None = the dataset's).
    transform: str = "none"                     # Resolution transform of the dataset: none|pad|resize|center-crop.
    max_size: int | None = None                 # Use a seeded subset of the dataset.
    sigma_data: float | None = None             # EDM σ_data (None = 0.5 for images, measured std for points).
    net_kwargs: dict = field(default_factory=dict)   # Overrides of the network preset (e.g. hidden=128).
    loss_kwargs: dict = field(default_factory=dict)  # Overrides of the loss (e.g. P_mean=-1.0).
    precision: str = "fp32"                     # fp32 | bf16 (autocast) | fp16 (autocast + loss scaling, GPU).
    compile: bool = False                       # torch.compile the network for training.
    channels_last: bool = False                 # channels_last memory format (image networks).
    tick: float = 50.0                          # kimg per tick (progress line, stats.jsonl).
    snap: int = 50                              # Network snapshot every this many ticks (0 = only at the end).
    dump: int = 500                             # Training state every this many ticks (0 = only at the end).
    sample_every: int | None = None             # Preview grid every this many ticks (None = with snapshots, 0 = off).
    grid: int | None = None                     # Preview samples (None = 16 images or 1000 points).
    grid_steps: int = 10                        # Heun steps of the preview (NFE 2·steps − 1).
    workers: int = 0                            # DataLoader worker processes.
    device: str = "auto"                        # auto | cpu | cuda | cuda:N.
    progress: bool = True                       # tqdm progress bar (else one line per tick).
    threads: int | None = None                  # CPU threads of torch (None = torch's default: all cores).
    bench: bool = False                         # cuDNN autotuning (EDM's --bench; off: exact resume).
    transfer: str | None = None                 # Initial weights: a diffspace checkpoint/run folder or EDM .pkl.
    desc: str | None = None                     # Text appended to the run description (EDM's --desc).
    subdir: bool = False                        # Put the run in a numbered subfolder outdir/NNNNN-<desc>.

    def check(self) -> None:
        """Raise ConfigError naming the first invalid option."""
        def bad(name, value, want):
            raise ConfigError(f"--{name.replace('_', '-')}={value} is invalid: {want}")

        if self.precond not in TRAIN_PRECONDS:
            bad("precond", self.precond, f"choose one of {', '.join(TRAIN_PRECONDS)} (iDDPM has no training loss)")
        if self.loss is not None and self.loss not in TRAIN_PRECONDS:
            bad("loss", self.loss, f"choose one of {', '.join(TRAIN_PRECONDS)} (default: the --precond's)")
        if self.ema_rampup is not None and not (math.isfinite(self.ema_rampup) and self.ema_rampup > 0):
            bad("ema_rampup", self.ema_rampup, "use a finite number > 0, or 'none' to disable the ramp-up")
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        if int(self.batch) != self.batch or self.batch < 1:
            bad("batch", self.batch, "use a positive integer")
        if self.batch_gpu is not None and (int(self.batch_gpu) != self.batch_gpu or self.batch_gpu < 1):
            bad("batch_gpu", self.batch_gpu, "use a positive integer")
        for name in ("duration", "lr", "tick"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, v, "use a finite number > 0")
        for name in ("lr_rampup", "ema"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, v, "use a finite number >= 0")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            bad("dropout", self.dropout, "use a value in [0, 1)")
        if self.augment is not None and not 0 <= self.augment <= 1:
            bad("augment", self.augment, "use a probability in [0, 1]")
        for name in ("snap", "dump", "workers", "grid_steps"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                bad(name, v, "use an integer >= 0")
        if self.sample_every is not None and (int(self.sample_every) != self.sample_every or self.sample_every < 0):
            bad("sample_every", self.sample_every, "use an integer >= 0")
        if self.grid is not None and (int(self.grid) != self.grid or self.grid < 0):
            bad("grid", self.grid, "use an integer >= 0")
        if self.threads is not None and (int(self.threads) != self.threads or self.threads < 1):
            bad("threads", self.threads, "use an integer >= 1")
        if self.desc is not None and not re.fullmatch(r"[A-Za-z0-9_.+=-]+", str(self.desc)):
            bad("desc", repr(self.desc), "use letters, digits and _ . + = - only (it becomes part of a folder name)")
        if self.sigma_data is not None and not self.sigma_data > 0:
            bad("sigma_data", self.sigma_data, "use a positive number")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training option {unknown[0]!r}: choose from {', '.join(sorted(names))}")
        return cls(**d)
