"""Schedule files: the plans `diffspace tune` chose, as JSON (sampler, options, σ grid, measured errors and the
digest of the model they were tuned for), written atomically and checked when read."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import torch

from diffspace.errors import ConfigError, DataError

FORMAT = "diffspace-schedule"
VERSION = 1


def model_digest(model) -> str:
    """sha256 of a model's tensors: a module's state_dict, or the tensor attributes of an analytic denoiser."""
    h = hashlib.sha256()
    if isinstance(model, torch.nn.Module):
        items = sorted(model.state_dict().items())
    else:
        items = sorted((k, v) for k, v in vars(model).items() if torch.is_tensor(v))
    if not items:
        raise ConfigError(f"cannot fingerprint a {type(model).__name__}: it has no tensors (wrap it in an nn.Module)")
    h.update(type(getattr(model, "model", model)).__name__.encode())
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_schedule(path, result, *, digest: str, source: str = "", force: bool = False) -> None:
    """Write the plans of a `search` result to `path` (refuses to overwrite an existing file unless force)."""
    from diffspace.io.checkpoint import atomic_write_text

    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: choose another --out or pass --force to overwrite it")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give a file name for the schedule")
    doc = {
        "format": FORMAT, "version": VERSION,
        "model": {"digest": digest, "source": source},
        "settings": result.settings,
        "plans": [p.to_dict() for _, p in sorted(result.plans.items())],
        "candidates": [{"nfe": r.nfe, "sampler": r.sampler, "family": r.family, "afs": r.afs,
                        "warmup_error": _num(r.warmup), "heldout_error": _num(r.heldout)} for r in result.rows],
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _num(v):
    return None if v is None or not math.isfinite(v) else float(v)


def read_schedule(path) -> dict:
    """The parsed and checked schedule file (DataError/ConfigError naming the problem)."""
    from diffspace import samplers

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"schedule file {path} does not exist: run `diffspace tune` to make one") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read schedule file {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("plans"), list):
        raise DataError(f"{path} is not a diffspace schedule file (written by `diffspace tune`)")
    for p in doc["plans"]:
        if not isinstance(p, dict) or not {"nfe", "sampler", "options", "sigmas"} <= set(p):
            raise DataError(f"{path}: a plan lacks nfe, sampler, options or sigmas")
        if p["sampler"] not in samplers.names():
            raise DataError(f"{path}: unknown sampler {p['sampler']!r} in the plan for NFE {p['nfe']}; known: "
                            f"{', '.join(samplers.names())}")
        sig = p["sigmas"]
        if (not isinstance(sig, list) or len(sig) < 2 or not all(isinstance(s, (int, float)) for s in sig)
                or not all(math.isfinite(s) and s >= 0 for s in sig)
                or any(b >= a for a, b in zip(sig[:-1], sig[1:]))):
            raise DataError(f"{path}: the sigma grid of the plan for NFE {p['nfe']} is not strictly decreasing "
                            "and positive: re-run `diffspace tune`")
        if not isinstance(p["options"], dict):
            raise DataError(f"{path}: the options of the plan for NFE {p['nfe']} are not a JSON object")
    return doc


def load_schedule(path, nfe: int | None = None, *, model=None, force: bool = False):
    """The Plan for budget `nfe` from a schedule file (the only plan when nfe is None).

    With `model`, its digest must match the file's: a mismatch warns and raises ConfigError unless `force`.
    """
    from diffspace import samplers
    from diffspace.tune.tuning import Plan

    doc = read_schedule(path)
    if model is not None:
        want, have = doc.get("model", {}).get("digest"), model_digest(model)
        if want != have:
            msg = (f"schedule {path} was tuned for another model (digest {str(want)[:12]}…, this one {have[:12]}…)")
            print(f"warning: {msg}", file=sys.stderr)
            if not force:
                raise ConfigError(f"{msg}: re-run `diffspace tune` for this model, or pass --force to use it anyway")
    plans = {int(p["nfe"]): p for p in doc["plans"]}
    if nfe is None:
        if len(plans) != 1:
            raise ConfigError(f"schedule {path} has plans for NFE {sorted(plans)}: choose one with --nfe")
        nfe = next(iter(plans))
    if int(nfe) not in plans:
        raise ConfigError(f"schedule {path} has no plan for NFE {nfe}; it has {sorted(plans)}")
    p = plans[int(nfe)]
    samplers.get(p["sampler"]).check_options(p["options"])
    return Plan(p["sampler"], dict(p["options"]), torch.tensor(p["sigmas"], dtype=torch.float64), int(p["nfe"]),
                p.get("family", ""), dict(p.get("errors", {})), p.get("spec", ""))
