"""Per-budget sampler plans: search sampler × grid family on warm-up seeds against a high-accuracy teacher, then
choose on held-out seeds (`diffspace tune`).

Candidates for each NFE budget: every sampler (with and without the analytical first step where it has one) on
ρ-grids (ρ searched), the log-uniform grid, the GITS grid, and for the AMED samplers per-step (r, c) fitted on the
ρ=7 and GITS grids. Each runs on the warm-up seeds; the best few by warm-up error and the default (dpmpp_2m on the
ρ=7 grid) run on the held-out seeds, and the plan is the one with the smallest held-out error, so it is never
worse there than the default. Error: RMS per coordinate of the endpoint against the adaptive Dormand–Prince
solution from the same latent, averaged over seeds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from diffspace.errors import ConfigError

DEFAULT_SAMPLERS = ("euler", "heun", "dpm_2", "dpmpp_2m", "dpmpp_3m", "ipndm", "ipndm_v", "dpm_2m", "dpm_3m",
                    "dpm_3m[lower_order_final=false]", "unipc", "unipc[predict_x0=false]", "amed", "amed_ipndm",
                    "amed_dpmpp_2m")
DEFAULT = ("dpmpp_2m", "rho7")
AMED_SAMPLERS = ("amed", "amed_euler", "amed_ipndm", "amed_dpmpp_2m")


def parse_spec(spec: str) -> tuple[str, dict]:
    """A candidate sampler spec, `name` or `name[key=value;key=value]`, as (name, fixed options); values are
    read as booleans (true/false), numbers or strings, e.g. `dpm_3m[lower_order_final=false]`."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\[(.*)\])?\s*", spec)
    if m is None:
        raise ConfigError(f"sampler spec {spec!r} is not NAME or NAME[key=value;...], "
                          "e.g. dpm_3m[lower_order_final=false]")
    options = {}
    for item in filter(None, (part.strip() for part in (m.group(2) or "").split(";"))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"option {item!r} in sampler spec {spec!r} is not key=value")
        options[key.strip()] = _value(value.strip())
    return m.group(1), options


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def split_specs(text: str) -> list[str]:
    """Comma-separated sampler specs; commas inside [...] do not split."""
    return [s.strip() for s in re.split(r",(?![^\[]*\])", text) if s.strip()]


@dataclass
class Plan:
    """A tuned sampler for one budget; `plan(model, x)` samples from x already scaled to plan.sigmas[0]."""

    sampler: str
    options: dict
    sigmas: torch.Tensor
    nfe: int
    family: str = ""
    errors: dict = field(default_factory=dict)
    spec: str = ""  # the candidate's sampler spec (name plus fixed options) when it differs from `sampler`

    def __call__(self, model, x: torch.Tensor, **kwargs) -> torch.Tensor:
        from diffspace import samplers

        return samplers.get(self.sampler)(model, x, self.sigmas.to(x.device), **self.options, **kwargs)

    @property
    def label(self) -> str:
        return candidate_label(self.spec or self.sampler, self.family, bool(self.options.get("afs")))

    def to_dict(self) -> dict:
        return {"nfe": self.nfe, "sampler": self.sampler, "options": self.options, "family": self.family,
                "sigmas": [float(s) for s in self.sigmas], "errors": self.errors, "spec": self.spec or self.sampler}


def candidate_label(sampler: str, family: str, afs: bool) -> str:
    return f"{sampler}/{family}" + ("+afs" if afs else "")


@dataclass
class Row:
    nfe: int
    sampler: str
    family: str
    afs: bool
    warmup: float
    heldout: float | None = None


@dataclass
class Tuning:
    """Everything `search` measured: the plan per budget and one row per candidate."""

    plans: dict[int, Plan]
    rows: list[Row]
    settings: dict


def _rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    err = (out.to(torch.float64) - ref).flatten(1).norm(dim=1) / math.sqrt(ref[0].numel())
    return float(err.mean())


def _teacher(model, lat, sigma_max, sigma_min, rtol, extra_args):
    from diffspace.samplers.reference import solve

    return solve(model, lat * sigma_max, sigma_max, sigma_min, rtol=rtol, atol=rtol, extra_args=extra_args)


def search(model, nfe: int | Sequence[int], *, shape: Sequence[int], sigma_min: float = 0.002,
           sigma_max: float = 80.0, seed: int = 0, samplers: Sequence[str] | None = None,
           rhos: Sequence[float] = (3.0, 5.0, 7.0, 10.0), warmup: int = 32, heldout: int = 32,
           teacher_steps: int = 61, gits_warmup: int | None = None, amed: bool = True, afs: bool = True,
           gits: bool = True, rtol: float = 1e-6, top: int = 3, extra_args: dict | None = None,
           progress: bool = False, log: Callable[[str], None] | None = None) -> Tuning:
    """Measure every candidate for every budget and choose a plan per budget (module docstring)."""
    from diffspace import samplers as S
    from diffspace.design import grids
    from diffspace.tune.amed import fit_amed
    from diffspace.tune.gits import _latents, steps_for_nfe, teacher_costs

    log = log or (lambda msg: None)
    budgets = sorted({int(n) for n in ([nfe] if isinstance(nfe, int) else nfe)})
    if not budgets or budgets[0] < 1:
        raise ConfigError(f"NFE budgets must be positive integers, got {list(budgets)}")
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if warmup < 1 or heldout < 1:
        raise ConfigError(f"warmup={warmup} and heldout={heldout} must be >= 1")
    explicit = samplers is not None
    names = list(dict.fromkeys(samplers or DEFAULT_SAMPLERS))
    specs = {}
    for spec in names:
        name, fixed = parse_spec(spec)
        entry = S.get(name)
        if entry.stochastic:
            raise ConfigError(f"sampler {name!r} is stochastic: tune compares deterministic samplers on pathwise error")
        entry.check_options(fixed)
        if "afs" in fixed:
            raise ConfigError(f"sampler spec {spec!r}: leave afs out, the search tries it both ways (--no-afs: never)")
        specs[spec] = (name, fixed)
    if "dpmpp_2m" not in specs:
        names.append("dpmpp_2m")  # the default every plan is compared with
        specs["dpmpp_2m"] = ("dpmpp_2m", {})
    if explicit:  # a sampler the user asked for must fit every budget
        for name, fixed in specs.values():
            for n in budgets:
                steps_for_nfe(name, n, **fixed)
    max_steps = max(budgets)  # 1-NFE samplers take the most steps
    if gits and teacher_steps - 1 < max_steps:
        raise ConfigError(f"teacher grid of {teacher_steps} levels is shorter than the student's {max_steps} steps: "
                          f"use teacher_steps >= {max_steps + 1}")

    # Warm-up and held-out seeds, and the teacher's endpoints for both.
    lat_w = _latents(shape, range(seed, seed + warmup))
    lat_h = _latents(shape, range(seed + warmup, seed + warmup + heldout))
    log(f"teacher: adaptive Dormand-Prince (rtol {rtol:g}) on {warmup} warm-up and {heldout} held-out seeds")
    ref_w = _teacher(model, lat_w, sigma_max, sigma_min, rtol, extra_args)
    ref_h = _teacher(model, lat_h, sigma_max, sigma_min, rtol, extra_args)
    table = None
    if gits:
        log(f"GITS cost matrix: {gits_warmup or warmup} teacher trajectories on {teacher_steps} levels")
        table = teacher_costs(model, shape=shape, teacher_steps=teacher_steps, warmup=gits_warmup or warmup,
                              seed=seed, sigma_min=sigma_min, sigma_max=sigma_max, extra_args=extra_args)

    # Candidates: (nfe, sampler, family, options, sigmas).
    def grid_of(family: str, steps: int, sampler: str, use_afs: bool):
        if family.startswith("rho"):
            return grids.edm(steps + 1, sigma_min, sigma_max, float(family[3:]), append_zero=False)
        if family == "logu":
            return grids.exponential(steps + 1, sigma_min, sigma_max, append_zero=False)
        return table.grid(sampler, steps - 1 if use_afs else steps, afs=use_afs, model=model, extra_args=extra_args)

    families = [f"rho{r:g}" for r in rhos] + ["logu"] + (["gits"] if gits else [])
    if "rho7" not in families:
        families.append("rho7")
    jobs = []
    for n in budgets:
        for spec in names:
            name, fixed = specs[spec]
            entry = S.get(name)
            for use_afs in ([False, True] if afs and "afs" in entry.options else [False]):
                opts = {**fixed, "afs": True} if use_afs else dict(fixed)
                try:
                    steps = steps_for_nfe(name, n, **opts)
                except ConfigError:
                    continue
                if use_afs and steps < 2:
                    continue
                for fam in families:
                    if name in AMED_SAMPLERS and not (amed and fam in ("rho7", "gits")):
                        continue  # AMED samplers run with fitted (r, c) on the ρ=7 and GITS grids
                    jobs.append((n, spec, fam, opts, steps))
    rows: list[Row] = []
    found: dict[tuple, tuple] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="candidate", dynamic_ncols=True)
    try:
        for n, spec, fam, opts, steps in jobs:
            name = specs[spec][0]
            sig = grid_of(fam, steps, name, bool(opts.get("afs")))
            opts = dict(opts)
            if name in AMED_SAMPLERS:
                fit = fit_amed(model, sig, shape=shape, sampler=name, warmup=warmup, seed=seed,
                               afs=bool(opts.get("afs")), extra_args=extra_args)
                opts.update(r=fit["r"], c=fit["c"])
            entry = S.get(name)
            if entry.nfe(sig, **opts) > n:
                continue
            out = entry(model, lat_w * sig[0], sig, extra_args=extra_args, disable=True, **opts)
            err = _rms(out, ref_w)
            if not math.isfinite(err):
                err = math.inf
            rows.append(Row(n, spec, fam, bool(opts.get("afs")), err))
            found[(n, spec, fam, bool(opts.get("afs")))] = (opts, sig, rows[-1])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    plans: dict[int, Plan] = {}
    for n in budgets:
        mine = sorted([k for k in found if k[0] == n], key=lambda k: found[k][2].warmup)
        default_key = (n, *DEFAULT, False)
        finalists = list(dict.fromkeys(mine[:top] + [default_key]))
        for key in finalists:
            opts, sig, row = found[key]
            out = S.get(specs[key[1]][0])(model, lat_h * sig[0], sig, extra_args=extra_args, disable=True, **opts)
            err = _rms(out, ref_h)
            row.heldout = err if math.isfinite(err) else math.inf
        best = min(finalists, key=lambda k: found[k][2].heldout)
        opts, sig, row = found[best]
        default_err = found[default_key][2].heldout
        name = specs[best[1]][0]
        plans[n] = Plan(name, opts, sig.clone(), S.get(name).nfe(sig, **opts), best[2],
                        {"warmup": row.warmup, "heldout": row.heldout, "default_heldout": default_err}, best[1])
        log(f"NFE {n}: {plans[n].label}  held-out error {row.heldout:.3e} (default {default_err:.3e})")
    settings = dict(shape=list(shape), sigma_min=sigma_min, sigma_max=sigma_max, seed=seed, warmup=warmup,
                    heldout=heldout, teacher="dopri5", rtol=rtol, teacher_steps=teacher_steps, rhos=list(rhos),
                    samplers=names, amed=amed, afs=afs, gits=gits, top=top)
    return Tuning(plans, rows, settings)


def autotune(model, nfe: int | Sequence[int], *, shape: Sequence[int], sigma_min: float = 0.002,
             sigma_max: float = 80.0, seed: int = 0, **kwargs) -> Plan | dict[int, Plan]:
    """The best plan for `model` at `nfe` denoiser calls (a Plan), or one per budget for a list (a dict).

    Keyword arguments as for `search` (samplers, rhos, warmup, heldout, teacher_steps, amed, afs, gits, rtol, …).
    """
    result = search(model, nfe, shape=shape, sigma_min=sigma_min, sigma_max=sigma_max, seed=seed, **kwargs)
    return result.plans[int(nfe)] if isinstance(nfe, int) else result.plans


def format_table(result: Tuning) -> str:
    """One line per candidate label, one column per budget (warm-up error; '*' marks the chosen plan)."""
    budgets = sorted(result.plans)
    labels = list(dict.fromkeys(candidate_label(r.sampler, r.family, r.afs) for r in result.rows))
    cells = {(candidate_label(r.sampler, r.family, r.afs), r.nfe): r for r in result.rows}
    width = max([len(s) for s in labels] + [9])
    lines = [f"{'candidate':{width}s}  " + "  ".join(f"{'NFE ' + str(n):>10s}" for n in budgets)]
    for lab in labels:
        parts = []
        for n in budgets:
            r = cells.get((lab, n))
            mark = "*" if r is not None and result.plans[n].label == lab else " "
            parts.append(f"{r.warmup:9.2e}{mark}" if r is not None else f"{'-':>9s} ")
        lines.append(f"{lab:{width}s}  " + "  ".join(parts))
    lines.append("warm-up error (RMS per coordinate vs the teacher); * = chosen on the held-out seeds")
    lines.append("")
    lines.append(f"{'NFE':>4s}  {'plan':{width}s}  {'held-out':>9s}  {'default':>9s}  ratio")
    for n in budgets:
        p = result.plans[n]
        h, d = p.errors["heldout"], p.errors["default_heldout"]
        lines.append(f"{n:4d}  {p.label:{width}s}  {h:9.2e}  {d:9.2e}  {h / d if d else float('nan'):5.2f}")
    return "\n".join(lines)


def plot(result: Tuning, path) -> None:
    """Warm-up error against NFE for every candidate (log-log), the plans highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffspace.io.checkpoint import atomic_write

    fig, ax = plt.subplots(figsize=(8, 5.5))
    labels = list(dict.fromkeys(candidate_label(r.sampler, r.family, r.afs) for r in result.rows))
    for lab in labels:
        pts = sorted((r.nfe, r.warmup) for r in result.rows
                     if candidate_label(r.sampler, r.family, r.afs) == lab and math.isfinite(r.warmup))
        if pts:
            ax.plot(*zip(*pts), marker=".", lw=0.8, alpha=0.6, label=lab)
    best = sorted((n, p.errors["heldout"]) for n, p in result.plans.items())
    ax.plot(*zip(*best), "k*-", ms=12, lw=2, label="tuned (held-out)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMS error vs teacher")
    ax.legend(fontsize=5, ncol=3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
