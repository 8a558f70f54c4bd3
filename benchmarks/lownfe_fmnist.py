"""Low-NFE sampling of a trained Fashion-MNIST 32×32 model: small-data FID/KID of ρ=7 grids vs GITS vs AMED vs
the `diffspace tune` plan, at NFE 4, 5, 6, 8, 10 — the comparison GITS and AMED publish, on our own model.

    python benchmarks/lownfe_fmnist.py --network CKPT --features FEAT.safetensors --schedule PLAN.json \
        [--images 5000] [--nfe 4,5,6,8,10] [--reuse EARLIER.json]
    python benchmarks/lownfe_fmnist.py --quick      # smoke run: an untrained network, a few images

Rows: dpmpp_2m and ipndm on the ρ=7 grid; ipndm on the GITS grid (`--gits` adds samplers; cost matrix from 256
iPNDM teacher trajectories on 61 levels); AMED-Plugin on iPNDM (`amed_ipndm`, per-step r and c fitted on 64
warm-up seeds on the ρ=7 grid); the plan `diffspace tune --network RUN` chose for each budget. Every row samples
the same latents (seeds 100 000 … 100 000 + images − 1, none of which the tuner or GITS/AMED saw), σ 80 → 0.002
without a final step to 0, float64 sampling of the float32 network; FID/KID of the uint8 images against the
Fashion-MNIST test set, in the features of a small classifier trained on the 28×28 images (`diffspace features
train`; the generated 32×32 images are cropped back to the 28×28 inside the padding). The floor is as many real
training images against the same reference. The accurately sampled model (EDM's Heun, 18 steps on the ρ=7 grid,
NFE 36 as it ends at σ = 0.002, same latents) gives the FID that every sampler approaches as it follows the ODE
more closely.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.machine import cpu_name  # noqa: E402
from lib.results import write_results  # noqa: E402

from diffspace import samplers, tune  # noqa: E402
from diffspace.design import grids  # noqa: E402
from diffspace.generate import to_uint8  # noqa: E402
from diffspace.metrics.features import sha256_file  # noqa: E402
from diffspace.metrics.fid import fid_from_features  # noqa: E402
from diffspace.metrics.kid import kid  # noqa: E402
from diffspace.tune.gits import _latents, steps_for_nfe, teacher_costs  # noqa: E402

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
FIRST_SEED = 100_000


def reference_images(n: int | None, split: str = "test") -> np.ndarray:
    """Fashion-MNIST padded to 32×32, uint8 [N, 1, 32, 32] (the first n)."""
    from diffspace.data import open_dataset

    ds = open_dataset(f"fashion-mnist:{split}" if split != "train" else "fashion-mnist", resolution=32,
                      transform="pad")
    n = len(ds) if n is None else min(n, len(ds))
    return np.asarray(ds.images_uint8(0, n))


def build_quick_model():
    """An untrained 32×32 DDPM++ with EDM preconditioning (smoke runs only)."""
    from diffspace.design.precond import EDMPrecond
    from diffspace.nets import build_network

    torch.manual_seed(0)
    net = build_network("ddpmpp-small", img_resolution=32, img_channels=1, model_channels=8, channel_mult=[1, 2],
                        num_blocks=1, attn_resolutions=[], dropout=0)
    return EDMPrecond(net).eval()


def quick_features(images: np.ndarray):
    from diffspace.metrics.smallfeat import SmallFeatures, train_feature_net

    labels = np.arange(len(images)) % 10  # a smoke run only needs a working extractor, not a good one
    net = train_feature_net(images, labels, 10, epochs=1, batch=64, width=8, feature_dim=16)
    return SmallFeatures(net, torch.device("cpu"), "smallfeat:quick", "quick")


def features_of(extractor, images_nchw: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Features of uint8 images; 32×32 images are cropped to a 28×28 feature network's input (the padding goes)."""
    res = extractor.net.config["resolution"]
    if images_nchw.shape[-1] > res:
        top = (images_nchw.shape[-1] - res) // 2
        images_nchw = images_nchw[..., top:top + res, top:top + res]
    out = []
    with torch.no_grad():
        for i in range(0, len(images_nchw), batch):
            out.append(np.asarray(extractor(torch.as_tensor(images_nchw[i:i + batch])), dtype=np.float64))
    return np.concatenate(out)


def sample_images(model, name: str, sigmas: torch.Tensor, options: dict, seeds: range, batch: int) -> np.ndarray:
    """uint8 [N, C, H, W] of `name` on `sigmas` from the per-seed latents, in batches."""
    fn = samplers.get(name)
    out = []
    with torch.no_grad():
        for i in range(0, len(seeds), batch):
            lat = _latents(SHAPE, seeds[i:i + batch])
            x = fn(model, lat * sigmas[0], sigmas, disable=True, **options)
            out.append(to_uint8(x.to(torch.float32)).transpose(0, 3, 1, 2))
    return np.concatenate(out)


def rho7(steps: int) -> torch.Tensor:
    return grids.edm(steps + 1, SIGMA_MIN, SIGMA_MAX, 7.0, append_zero=False)


AMED_ROW = "AMED-Plugin (amed_ipndm), rho=7"


def configs(model, budgets, plans, *, gits_samplers, gits_warmup: int, amed_warmup: int, log,
            skip=frozenset()) -> dict[str, dict[int, tuple]]:
    """Row -> NFE -> (sampler, σ grid, options), leaving out the rows named in `skip` (taken from an earlier run:
    their GITS cost matrix and AMED fits are not recomputed)."""
    rows: dict[str, dict[int, tuple]] = {}
    for name in ("dpmpp_2m", "ipndm"):
        rows[f"{name}, rho=7"] = {n: (name, rho7(steps_for_nfe(name, n)), {}) for n in budgets}
    gits_rows = [name for name in gits_samplers if f"{name}, GITS" not in skip]
    if gits_rows:
        log(f"GITS cost matrix from {gits_warmup} iPNDM teacher trajectories")
        table = teacher_costs(model, shape=SHAPE, warmup=gits_warmup, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        for name in gits_rows:
            rows[f"{name}, GITS"] = {n: (name, table.grid(name, steps_for_nfe(name, n)), {}) for n in budgets}
    if AMED_ROW not in skip:
        amed = {}
        for n in budgets:
            sig = rho7(steps_for_nfe("amed_ipndm", n))
            log(f"AMED (r, c) for NFE {n}: {len(sig) - 1} steps, {amed_warmup} warm-up seeds")
            fit = tune.fit_amed(model, sig, shape=SHAPE, sampler="amed_ipndm", warmup=amed_warmup)
            amed[n] = ("amed_ipndm", sig, {"r": fit["r"], "c": fit["c"]})
        rows[AMED_ROW] = amed
    if plans:
        rows["tuned plan"] = {n: (p.sampler, p.sigmas, dict(p.options)) for n, p in plans.items() if n in budgets}
    return rows


def main() -> None:
    global SHAPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--network", help="run folder or checkpoint of the trained model")
    ap.add_argument("--features", help="feature network (.safetensors from `diffspace features train`)")
    ap.add_argument("--schedule", help="schedule file of `diffspace tune --network` for the same model")
    ap.add_argument("--images", type=int, default=5000, help="generated images per row and budget (default 5000)")
    ap.add_argument("--nfe", default="4,5,6,8,10")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--reuse", type=Path, default=None,
                    help="results JSON of an earlier run with the same network, features and images: its cells "
                         "with the same sampler, grid and options are taken, not sampled again")
    ap.add_argument("--gits", default="ipndm", help="samplers run on the GITS grid (default ipndm, GITS's own "
                                                    "choice; dpmpp_2m,ipndm for both)")
    ap.add_argument("--reference-steps", type=int, default=18,
                    help="Heun steps of the accurate-sampling reference on the ρ=7 grid (default 18; 0: none)")
    ap.add_argument("--quick", action="store_true", help="smoke run: untrained network, 64 images, NFE 5")
    args = ap.parse_args()
    t_start = time.time()
    if args.quick:
        args.images, args.nfe = 64, "5"
    budgets = [int(v) for v in args.nfe.split(",")]
    if args.reuse is not None and not args.reuse.is_file():
        ap.error(f"--reuse {args.reuse}: no such file")
    ref = reference_images(200 if args.quick else None)
    if args.quick:
        model, source, plans = build_quick_model(), "untrained network (quick)", {}
        extractor = quick_features(ref)
        gits_warmup, amed_warmup = 8, 4
    else:
        if not (args.network and args.features):
            ap.error("--network and --features are required (or --quick)")
        from diffspace import generate as G
        from diffspace.metrics.smallfeat import load_feature_net

        model, _ = G.load(args.network)
        model.eval()
        source = args.network
        extractor = load_feature_net(args.features)
        plans = {}
        if args.schedule:
            from diffspace.tune.schedule import load_schedule

            plans = {n: load_schedule(args.schedule, nfe=n, model=model) for n in budgets}
        gits_warmup, amed_warmup = 256, 64
    SHAPE = (1, 32, 32)
    feats_ref = features_of(extractor, ref)
    real = reference_images(len(ref) if args.quick else args.images, split="train")
    floor = {"fid": fid_from_features(features_of(extractor, real), feats_ref),
             "kid": kid(features_of(extractor, real), feats_ref, num_subsets=50)[0]}
    print(f"real (train) vs reference: FID {floor['fid']:.2f}, KID {floor['kid']:.5f}", flush=True)
    t0 = time.time()
    old = reused_rows(args, budgets) if args.reuse else {}
    rows = configs(model, budgets, plans, gits_samplers=args.gits.split(","), gits_warmup=gits_warmup,
                   amed_warmup=amed_warmup, log=lambda m: print(m, flush=True), skip=frozenset(old))
    t_setup = time.time() - t0
    seeds = range(FIRST_SEED, FIRST_SEED + args.images)
    results: dict[str, dict[int, dict]] = dict(old)
    # Identical (sampler, grid, options) are sampled once, also across runs.
    done = {cell_key(c["sampler"], c["sigmas"], c["options"]): c for per in old.values() for c in per.values()}

    def measure(name: str, sig, opts: dict) -> dict:
        t1 = time.time()
        feats = features_of(extractor, sample_images(model, name, sig, opts, seeds, args.batch))
        k_mean, k_std = kid(feats, feats_ref, num_subsets=50)
        return {"fid": fid_from_features(feats, feats_ref), "kid": k_mean, "kid_std": k_std,
                "nfe": samplers.get(name).nfe(sig, **opts), "seconds": time.time() - t1}

    for label, per_nfe in rows.items():
        if label in old:
            continue
        results[label] = {}
        for n, (name, sig, opts) in per_nfe.items():
            key = cell_key(name, sig, opts)
            if key not in done:
                done[key] = measure(name, sig, opts)
            results[label][n] = {**{k: done[key][k] for k in CELL}, "sampler": name, "options": _plain(opts),
                                 "sigmas": [float(s) for s in sig]}
            r = results[label][n]
            print(f"{label:34s} NFE {n:2d} (used {r['nfe']:2d}): FID {r['fid']:8.2f}  KID {r['kid']:.5f}  "
                  f"{r['seconds']:.0f} s", flush=True)
    reference = None
    if args.reference_steps:
        old_ref = json.loads(args.reuse.read_text())["meta"].get("reference") if args.reuse else None
        sig = rho7(args.reference_steps)
        if old_ref and old_ref["sigmas"] == [float(s) for s in sig]:
            reference = old_ref
        else:
            reference = {"sampler": "heun", "sigmas": [float(s) for s in sig], **measure("heun", sig, {})}
        print(f"reference (heun, {args.reference_steps} steps, NFE {reference['nfe']}): FID {reference['fid']:.2f}",
              flush=True)
    md = markdown(results, budgets, floor, reference, args, source, t_setup, time.time() - t_start)
    print(md)
    meta = {"network": source, "features": args.features, "schedule": args.schedule, "images": args.images,
            "network_sha256": None if args.quick else sha256_file(args.network),
            "features_sha256": None if args.quick else sha256_file(args.features),
            "first_seed": FIRST_SEED, "floor": floor, "reference": reference, "machine": cpu_name(),
            "platform": platform.platform(),
            "threads": torch.get_num_threads(), "setup_seconds": t_setup, "seconds": time.time() - t_start}
    data = {"meta": meta, "rows": {k: {str(n): v for n, v in r.items()} for k, r in results.items()}}
    for path in write_results("lownfe_fmnist", data, md, quick=args.quick):
        print(f"wrote {path}")


def cell_key(name: str, sigmas, options: dict) -> tuple:
    return name, tuple(round(float(s), 12) for s in sigmas), json.dumps(_plain(options), sort_keys=True)


CELL = ("fid", "kid", "kid_std", "nfe", "seconds")


def reused_rows(args, budgets) -> dict[str, dict[int, dict]]:
    """Rows of an earlier results file (budgets of this run only); refused when it measured something else."""
    old = json.loads(args.reuse.read_text())
    meta = old["meta"]
    for what, mine in (("network_sha256", sha256_file(args.network)), ("features_sha256", sha256_file(args.features)),
                       ("images", args.images), ("first_seed", FIRST_SEED)):
        if meta.get(what) != mine:
            sys.exit(f"--reuse {args.reuse}: its {what} is {meta.get(what)!r}, this run's is {mine!r}; "
                     "reuse only a run of the same network, features and images")
    rows = {label: {int(n): c for n, c in per.items() if int(n) in budgets} for label, per in old["rows"].items()
            if label != "tuned plan"}  # the plan comes from this run's --schedule
    return {label: per for label, per in rows.items() if set(per) == set(budgets)}


def _plain(opts: dict) -> dict:
    return {k: ([float(x) for x in v] if isinstance(v, (list, tuple, torch.Tensor)) else v) for k, v in opts.items()}


def markdown(results, budgets, floor, reference, args, source, t_setup, seconds) -> str:
    lines = [f"# {__doc__.splitlines()[0]}", "",
             f"Model: `{source}`; {args.images} images per cell; machine: {cpu_name()}, "
             f"{torch.get_num_threads()} threads; {seconds / 60:.1f} min in all ({t_setup:.0f} s for GITS/AMED "
             "fitting).", "",
             f"Floor ({args.images} real training images vs the test set): FID {floor['fid']:.2f}, "
             f"KID {floor['kid']:.3g}."]
    if reference:
        lines += ["", f"The model sampled accurately (Heun, ρ=7, {len(reference['sigmas']) - 1} steps, NFE "
                      f"{reference['nfe']}, same latents): FID {reference['fid']:.4g}, KID {reference['kid']:.3g}."]
    lines += ["", "FID (KID in brackets: unbiased, so it can be below 0; its scale follows the features'); a cell's "
              "NFE is the budget, the sampler may use one less.", "",
              "| method | " + " | ".join(f"NFE {n}" for n in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for label, per_nfe in results.items():
        cells = [f"{per_nfe[n]['fid']:.4g} ({per_nfe[n]['kid']:.3g})" if n in per_nfe else "–"
                 for n in budgets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "tuned plan" in results:
        lines.append("| (plan) | " + " | ".join(
            _plan_label(results["tuned plan"].get(n)) for n in budgets) + " |")
        base = results["dpmpp_2m, rho=7"]
        lines += ["", "Tuned plan's FID / dpmpp_2m on the ρ=7 grid: " + ", ".join(
            f"NFE {n}: {results['tuned plan'][n]['fid'] / base[n]['fid']:.2f}" for n in budgets
            if n in results["tuned plan"])]
        if reference:
            lines += ["", "Tuned plan's FID / the accurately sampled model's: " + ", ".join(
                f"NFE {n}: {results['tuned plan'][n]['fid'] / reference['fid']:.2f}" for n in budgets
                if n in results["tuned plan"])]
    return "\n".join(lines) + "\n"


def _plan_label(r) -> str:
    if r is None:
        return "–"
    extra = ", ".join(f"{k}={v}" for k, v in r["options"].items() if k not in ("r", "c"))
    return r["sampler"] + (f" ({extra})" if extra else "")


if __name__ == "__main__":
    main()
