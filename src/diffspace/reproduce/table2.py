"""EDM's Table 2 (training improvements, configurations A–F) in miniature: six `diffspace train` runs at an equal
budget of training images on Fashion-MNIST padded to 32×32, each sampled with EDM's deterministic Heun sampler
(18 steps, ρ = 7, NFE 35) and scored with small-data FID and KID against held-out test images."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffspace.reproduce.core import REPORTED, FeatureMissing, Outcome, claim

SRC = "Karras et al. 2022 (EDM)"
THREADS = 2                  # CPU threads of training and sampling (stated in the measurement)
KIMG = 10.0                  # training images per configuration, thousands (full run: 27 CPU minutes)
IMAGES = 500                 # generated images per configuration scored by FID/KID
REFERENCE = 2000             # held-out test images in the FID/KID reference
FEATURE_IMAGES = 12_000      # training images of the feature network (1 epoch, as the demo)
BOOTSTRAP = 20               # bootstrap resamples of the generated features for the FID sampling noise
NET = '{"num_blocks": 1, "attn_resolutions": []}'
LR = 2e-3                    # the demo's learning rate at batch 32 (config B on); A uses EDM's ratio 2e-4/10e-4
DATA = ["--data", "fashion-mnist", "--resolution", "32", "--transform", "pad"]


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    args: tuple[str, ...]  # what this configuration sets (the later ones build on the earlier ones)


def configs(kimg: float) -> list[Config]:
    """A–F as EDM's Table 2, scaled to `kimg` thousand training images at batch 32 (EMA half-lives in Mimg).

    A: VP preconditioning and loss, the original hyperparameters (lr / 5, dropout 0.1, a long EMA with no
       ramp-up: half-life a quarter of the budget) and capacity down to 4×4 (cres 1,2,2,2).
    B: EDM's hyperparameters: lr 2e-3, dropout 0.13, EMA ramp-up ratio 0.05 (half-life 5 % of the budget).
    C: capacity moved up: no 4×4 level, the top level twice as wide (cres 2,2,2).
    D: EDM preconditioning, still trained with the VP loss (noise distribution and weight).
    E: EDM loss (log-normal σ, λ(σ) = 1/c_out²).
    F: non-leaking augmentation with EDM's probability 0.12 (the network sees the augmentation labels).
    """
    mimg = kimg / 1000
    a = ("--precond", "vp", "--cres", "1,2,2,2", "--lr", f"{LR / 5:g}", "--dropout", "0.1",
         "--ema", f"{mimg / 4:g}", "--ema-rampup", "none", "--augment", "0")
    b = _set(a, "--lr", f"{LR:g}", "--dropout", "0.13", "--ema", f"{mimg * 0.05:g}", "--ema-rampup", "0.05")
    c = _set(b, "--cres", "2,2,2")
    d = _set(c, "--precond", "edm", "--loss", "vp")
    e = _set(d, "--loss", "edm")
    f = _set(e, "--augment", "0.12")
    return [Config("A", "baseline VP", a), Config("B", "+ adjusted hyperparameters", b),
            Config("C", "+ redistributed capacity", c), Config("D", "+ EDM preconditioning", d),
            Config("E", "+ EDM loss", e), Config("F", "+ non-leaky augmentation", f)]


def _set(args: tuple[str, ...], *pairs: str) -> tuple[str, ...]:
    """`args` with the options of `pairs` (option, value, ...) replaced or appended."""
    out = list(args)
    for opt, value in zip(pairs[::2], pairs[1::2]):
        if opt in out:
            out[out.index(opt) + 1] = value
        else:
            out += [opt, value]
    return tuple(out)


def train_args(config: Config, kimg: float, seed: int, outdir: str) -> list[str]:
    """The full `diffspace train` argument list of one configuration (snapshot only at the end, no previews)."""
    return ["train", *DATA, "--arch", "ddpmpp-small", "--cbase", "8", "--net-kwargs", NET, "--batch", "32",
            *config.args, "--lr-rampup", f"{kimg / 10 / 1000:g}", "--duration", f"{kimg / 1000:g}",
            "--tick", f"{max(kimg / 4, 0.1):g}", "--snap", "0", "--dump", "0", "--sample-every", "0",
            "--device", "cpu", "--threads", str(THREADS), "--seed", str(seed), "--no-progress", "--outdir", outdir]


def command_line(args: list[str]) -> str:
    """What a reader types to rerun one configuration (the claim itself writes into a temporary folder)."""
    return shlex.join(["diffspace", *args])


def _train(args: list[str]) -> tuple[float, float]:
    """Run `python -m diffspace <args>` in a subprocess; (wall, CPU) seconds. A failure raises with its last
    lines. CPU seconds / threads is about the wall time on idle cores (wall time grows on a shared machine)."""
    import resource

    import diffspace

    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    root = str(Path(diffspace.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    cpu = _children_cpu(resource)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffspace", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"diffspace train failed ({proc.returncode}): {tail}")
    return time.perf_counter() - t, _children_cpu(resource) - cpu


def _children_cpu(resource) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _real_images(feature_images: int, reference: int, images: int):
    """(training images and labels for the feature network, reference test images and labels, held-out test
    images for the floor), uint8 [N, 1, 32, 32], padded as training sees them. NOT AVAILABLE without
    Fashion-MNIST."""
    from diffspace.data import open_dataset
    from diffspace.errors import DataError

    try:
        train = open_dataset("fashion-mnist", resolution=32, transform="pad", use_labels=True)
        test = open_dataset("fashion-mnist:test", resolution=32, transform="pad", use_labels=True)
    except DataError as e:
        raise FeatureMissing(f"Fashion-MNIST is not installed here ({e})") from e
    n = min(feature_images, len(train))
    if reference + images > len(test):
        raise ValueError(f"{reference} reference + {images} floor images exceed the {len(test)} test images")
    feats_x = np.asarray(train.images_uint8(0, n))
    feats_y = np.asarray(train.class_indices())[:n]
    held = np.asarray(test.images_uint8(0, reference + images))
    held_y = np.asarray(test.class_indices())[: reference + images]
    return feats_x, feats_y, held[:reference], held_y[:reference], held[reference:]


def _bootstrap_fid(feats: np.ndarray, ref: np.ndarray, n: int, seed: int) -> float:
    """Std of FID over `n` resamples (with replacement) of the generated features: the FID sampling noise."""
    from diffspace.metrics.fid import fid_from_features

    rng = np.random.RandomState(seed)
    return float(np.std([fid_from_features(feats[rng.randint(0, len(feats), len(feats))], ref) for _ in range(n)]))


def _score(feats: np.ndarray, ref: np.ndarray, seed: int) -> dict:
    from diffspace.metrics.fid import fid_from_features
    from diffspace.metrics.kid import kid

    k_mean, k_std = kid(feats, ref, num_subsets=50, seed=seed)
    return {"fid": fid_from_features(feats, ref), "fid_bootstrap_std": _bootstrap_fid(feats, ref, BOOTSTRAP, seed),
            "kid": k_mean, "kid_std": k_std}


def _sample(run: str, n: int, seed: int) -> tuple[np.ndarray, int]:
    """(n images [N, 1, 32, 32] uint8, NFE per image) from the run's EMA snapshot: Heun, 18 steps, ρ = 7 grid
    (NFE 35), as EDM scores every row of Table 2."""
    from diffspace.generate import generate, load

    net, _ = load(run)
    out = generate(net, range(seed * 100_000, seed * 100_000 + n), sampler="edm", steps=18, rho=7.0, batch=100,
                   micro_batch=100)
    return out.images.transpose(0, 3, 1, 2), out.nfe


@claim("edm.table2", source=SRC, title="Table 2 in miniature: training configurations A to F", quick=False,
       prediction="going from the VP baseline (A) through adjusted hyperparameters (B), redistributed capacity (C), "
                  "EDM preconditioning (D), the EDM loss (E) to non-leaky augmentation (F), each change improves "
                  "or keeps FID and F is best (measured here at an equal, tiny training budget on Fashion-MNIST "
                  "32x32, FID/KID of a small classifier's features, Heun NFE 35)")
def table2(quick: bool, seed: int, kimg: float = KIMG, images: int = IMAGES, reference: int = REFERENCE,
           feature_images: int = FEATURE_IMAGES, keys: str = "ABCDEF", workdir: str | None = None) -> Outcome:
    """Train, sample and score each configuration in `keys`. `kimg` (per configuration), `images` (scored per
    configuration), `reference` and `feature_images` size the run (a test runs a few hundred images);
    `workdir` keeps the runs (default: a temporary folder, removed)."""
    import torch

    from diffspace.errors import ConfigError
    from diffspace.metrics.smallfeat import SmallFeatures, accuracy, train_feature_net

    known = "".join(c.key for c in configs(1.0))
    if not keys or set(keys) - set(known):
        raise ConfigError(f"configurations {keys!r}: choose letters of {known}")
    if not (kimg > 0 and images >= 2 and reference >= 2 and feature_images >= 10):
        raise ConfigError(f"kimg={kimg}, images={images}, reference={reference}, feature_images={feature_images}: "
                          "need kimg > 0, at least 2 images in each set (KID) and 10 feature-network images")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        feats_x, feats_y, ref_x, ref_y, floor_x = _real_images(feature_images, reference, images)
        fnet = train_feature_net(feats_x, feats_y, 10, epochs=1, batch=128, lr=2e-3, seed=seed, width=16,
                                 feature_dim=64)
        acc = accuracy(fnet, ref_x, ref_y)
        ext = SmallFeatures(fnet, torch.device("cpu"), "smallfeat:fashion-mnist-32", "edm.table2")
        ref = ext(ref_x).numpy()
        floor = _score(ext(floor_x).numpy(), ref, seed)
        setup_s, setup_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(workdir) if workdir else Path(tmp)
            for c in [c for c in configs(kimg) if c.key in keys]:
                args = train_args(c, kimg, seed, str(base / c.key))
                train_s, train_cpu = _train(args)
                t, cpu = time.perf_counter(), time.process_time()
                gen, nfe = _sample(str(base / c.key), images, seed)
                sample_s, sample_cpu = time.perf_counter() - t, time.process_time() - cpu
                rows[c.key] = {"label": c.label, "command": command_line(_set(tuple(args), "--outdir",
                                                                                 f"table2/{c.key}")),
                               "kimg": kimg, "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
                               "sample_s": round(sample_s, 1), "sample_cpu_s": round(sample_cpu, 1), "nfe": nfe,
                               **_score(ext(gen).numpy(), ref, seed)}
    finally:
        torch.set_num_threads(threads)
    total = time.perf_counter() - t0
    data = {"configs": rows, "real_floor": floor, "kimg": kimg, "images": images, "reference": reference,
            "feature_images": len(feats_x), "feature_accuracy": acc, "threads": THREADS, "bootstrap": BOOTSTRAP,
            "setup_s": round(setup_s, 1), "setup_cpu_s": round(setup_cpu, 1), "total_s": round(total, 1),
            "cpu_s": round(time.process_time() - cpu0 + sum(r["train_cpu_s"] for r in rows.values()), 1)}
    return Outcome(_measurement(rows, floor, data), REPORTED, data, lambda fig: _draw(fig, rows, floor))


def _measurement(rows: dict, floor: dict, data: dict) -> str:
    keys = list(rows)
    noise = max(r["fid_bootstrap_std"] for r in rows.values())
    steps = list(zip(keys, keys[1:]))
    kept = [f"{a}->{b}" for a, b in steps if rows[b]["fid"] <= rows[a]["fid"] + 2 * math.hypot(
        rows[a]["fid_bootstrap_std"], rows[b]["fid_bootstrap_std"])]
    best = min(keys, key=lambda k: rows[k]["fid"])
    per = ", ".join(f"{k} {_num(rows[k]['fid'])} (KID {_num(rows[k]['kid'])})" for k in keys)
    train = sum(r["train_s"] for r in rows.values())
    sample = sum(r["sample_s"] for r in rows.values())
    return (f"FID {per}; real held-out images {_num(floor['fid'])} (the floor at {data['images']} images); FID "
            f"sampling noise (bootstrap std) up to {noise:.2g}. Improves or keeps FID (within 2 std of the "
            f"difference) at "
            f"{len(kept)}/{len(steps)} steps ({', '.join(kept) or 'none'}); best: {best}"
            f"{' as predicted' if best == keys[-1] else ', not F'}. Each config {data['kimg']:g} kimg at batch 32, "
            f"{data['images']} images vs {data['reference']} test images, {data['threads']} threads; time: "
            f"training {train:.0f} s, sampling {sample:.0f} s, features {data['setup_s']:.0f} s, "
            f"total {data['total_s']:.0f} s wall, {data['cpu_s']:.0f} s CPU")


def _num(x: float) -> str:
    """Three significant digits without an exponent for the FID/KID range seen here."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _draw(fig, rows: dict, floor: dict) -> None:
    keys = list(rows)
    for i, (metric, err, name) in enumerate((("fid", "fid_bootstrap_std", "FID"), ("kid", "kid_std", "KID"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.bar(keys, [rows[k][metric] for k in keys], yerr=[rows[k][err] for k in keys], color="#0969da",
               capsize=3)
        values = [rows[k][metric] for k in keys]
        if floor[metric] > 0:
            ax.axhline(floor[metric], color="#6e7781", ls="--", lw=1, label="real held-out")
            ax.legend(fontsize=7)
        if min(values) > 0:
            ax.set_yscale("log")  # A to F span orders of magnitude at a tiny budget
        ax.set_xlabel("configuration (EDM Table 2)")
        ax.set_ylabel(f"{name} (small-data features)")
        ax.set_title(f"error bars: {'bootstrap' if metric == 'fid' else 'subset'} std", fontsize=8)
