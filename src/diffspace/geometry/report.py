"""Figures, results.json and report.md of one analysis (see analysis.analyze)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffspace.geometry import metrics, plots
from diffspace.geometry.analysis import to_uint8_images

__all__ = ["write_report"]


def _steps(n: int) -> list[int]:
    return list(range(n))


def _is_image(shape) -> bool:
    return len(shape) == 3


def _figures(r: dict, data: torch.Tensor, out: Path) -> dict[str, str]:
    """Write every figure; returns {key: file name}."""
    runs, figs = r["runs"], {}
    names = list(runs)
    K = r["steps"]

    def per_run(key_x: str, key_d: str | None, title: str, ylabel: str, logy=False, hlines=()):
        panels = []
        for name in names:
            st = runs[name]
            series = [{"label": "sampling x_i", "x": _steps(len(st[key_x]["mean"])), "band": st[key_x]}]
            if key_d:
                series.append({"label": "denoising D(x_i)", "x": _steps(len(st[key_d]["mean"])), "band": st[key_d]})
            panels.append({"title": f"{title} ({name})", "ylabel": ylabel, "logy": logy, "series": series,
                           "hlines": list(hlines)})
        return panels

    plots.curves(per_run("deviation_rel", "deviation_denoised_rel", "deviation from start-end line",
                         "deviation / start-end distance", logy=True), out / "deviation.png")
    figs["deviation"] = "deviation.png"
    plots.curves(per_run("dist_x", "dist_d", "distance to the final sample", "L2 distance", logy=True),
                 out / "distance_to_final.png")
    figs["distance"] = "distance_to_final.png"
    panels = []
    radius = r["sigmas"][0] * np.sqrt(r["dim"])
    for name in names:
        st = runs[name]
        panels.append({"title": f"norms ({name})", "ylabel": "L2 norm", "logy": True, "series": [
            {"label": "sampling ||x_i||", "x": _steps(K + 1), "band": st["norm_x"]},
            {"label": "denoising ||D(x_i)||", "x": _steps(K), "band": st["norm_d"]},
            {"label": "tangent ||d_i||", "x": _steps(K), "band": st["norm_tangent"], "color": "tab:gray"}],
            "hlines": [(radius, "sigma_max sqrt(d)"), (np.sqrt(r["dim"]), "sqrt(d)")]})
    plots.curves(panels, out / "norms.png")
    figs["norms"] = "norms.png"
    plots.curves([{"title": "cos(d_i, x_i - x_N)", "ylabel": "cosine", "series": [
        {"label": name, "x": _steps(K), "band": runs[name]["cosine"]} for name in names]}], out / "cosine.png")
    figs["cosine"] = "cosine.png"

    sets = []
    for name in names:
        t = r["tensors"][name]
        n = min(r["settings"]["show"], t.x.shape[1])
        sets.append((f"{name}: sampling x_i", "sampling", metrics.principal_plane(t.x[:, :n], batched=True).numpy()))
        sets.append((f"{name}: denoising D(x_i)", "denoising",
                     metrics.principal_plane(t.denoised[:, :n], batched=True).numpy()))
    plots.projections(sets, out / "projections.png")
    figs["projections"] = "projections.png"

    plots.curves([{"title": "KDE log-likelihood change per step", "ylabel": "log p(x_{i+1}) - log p(x_i)",
                   "series": [{"label": name, "x": _steps(K), "band": runs[name]["likelihood"]["delta"]}
                              for name in names], "hlines": [(0.0, "no change")]}], out / "kde.png")
    figs["kde"] = "kde.png"

    if "score_deviation" in r:
        sd = r["score_deviation"]
        plots.curves([{"title": "learned vs optimal denoiser", "ylabel": "L2 distance", "logy": True, "series": [
            {"label": "on learned trajectory", "x": _steps(K), "band": sd["on_learned"], "color": "tab:purple"},
            {"label": "on optimal trajectory", "x": _steps(K), "band": sd["on_optimal"], "color": "tab:green"},
            {"label": "between denoising trajectories", "x": _steps(K), "band": sd["denoised"],
             "color": "tab:blue"},
            {"label": "between sampling trajectories", "x": _steps(K + 1), "band": sd["samples"],
             "color": "tab:red"}]}], out / "score_deviation.png", width=5.0, height=3.2)
        figs["score_deviation"] = "score_deviation.png"

    panels = [{"title": "ODE-Jump: error to the full run", "xlabel": "jump at step k", "ylabel": "RMS per element",
               "logy": True, "series": [{"label": name, "x": list(range(1, K + 1)), "band": runs[name]["jump_error"]}
                                        for name in names]}]
    if "jump_fid" in r:
        rows = r["jump_fid"]["rows"]
        panels.append({"title": "ODE-Jump: FID / KID x 100 (learned)", "xlabel": "jump at step k", "logy": True,
                       "series": [{"label": "FID", "x": [w["k"] for w in rows], "y": [w["fid"] for w in rows],
                                   "color": "tab:purple"},
                                  {"label": "KID x 100", "x": [w["k"] for w in rows],
                                   "y": [max(100 * w["kid"], 1e-4) for w in rows], "color": "tab:gray"}]})
    plots.curves(panels, out / "jump.png")
    figs["jump"] = "jump.png"

    it = r["interpolation"]
    plots.curves([{"title": "latent norm along the path", "xlabel": "t", "ylabel": "||z(t)|| / sqrt(d)",
                   "series": [{"label": m, "x": it["t"], "band": it["norms"][m]} for m in it["norms"]]}],
                 out / "interpolation_norms.png")
    figs["interpolation_norms"] = "interpolation_norms.png"

    if _is_image(r["shape"]):
        rows = []
        for name in names:
            t = r["tensors"][name]
            idx = np.unique(np.linspace(0, K - 1, min(K, 10)).round().astype(int))
            rows.append((f"{name} x_i", to_uint8_images(t.x[idx, 0])))
            rows.append((f"{name} D(x_i)", to_uint8_images(t.denoised[idx, 0])))
        plots.image_grid(rows, out / "trajectories.png", col_labels=[f"i={i}" for i in idx])
        figs["trajectories"] = "trajectories.png"
        rows = []
        for name in names:
            t, nn = r["tensors"][name], r["tensors"][f"nn_{name}"]
            rows.append((f"{name} sample", to_uint8_images(t.final[: len(nn)])))
            rows.append(("nearest training", to_uint8_images(data[nn].to(torch.float64))))
        plots.image_grid(rows, out / "nearest.png")
        figs["nearest"] = "nearest.png"
        rows = [(f"{name} {m}", to_uint8_images(strip)) for name, strips in it["strips"].items()
                for m, strip in strips.items()]
        plots.image_grid(rows, out / "interpolation.png", col_labels=[f"t={t:.2f}" for t in it["t"]])
        figs["interpolation"] = "interpolation.png"
    return figs


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _markdown(r: dict, figs: dict, title: str, command: str | None) -> str:
    runs, mem, K = r["runs"], r["memorization"], r["steps"]
    img = lambda key, alt: f"\n![{alt}]({figs[key]})\n" if key in figs else ""  # noqa: E731
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += [f"Data: {r['data']} ({r['num_data']} items of shape {r['shape']}, d = {r['dim']}); "
              f"network: {r.get('network') or 'none (optimal denoiser only)'}.",
              f"Sampler {r['sampler']}{' ' + str(r['options']) if r['options'] else ''}, {K} steps on the EDM grid "
              f"(sigma {r['sigmas'][0]:g} -> {r['sigmas'][-2]:g} -> 0, rho {r['settings']['rho']:g}), "
              f"{r['seeds']} seeds, float64. NFE per run: "
              + ", ".join(f"{n} {runs[n]['nfe']}" for n in runs) + ".",
              "Bands in the figures: 10-90% of the seeds around the mean.", ""]
    lines += ["## Trajectories", img("trajectories", "sampling and denoising trajectories"), "",
              "## Quasi-linear sampling trajectories",
              "Largest deviation from the start-end line, relative to the start-end distance (mean over seeds):", "",
              "| run | sampling | denoising |", "|---|---|---|"]
    for n, st in runs.items():
        lines.append(f"| {n} | {_fmt(st['max_deviation_rel'])} | {_fmt(st['max_deviation_denoised_rel'])} |")
    lines += [img("deviation", "deviation"), "## The denoising trajectory converges faster",
              "Share of seeds whose denoising output is closer to the final sample than the current iterate, "
              "at steps 1..N-1:", ""]
    for n, st in runs.items():
        closer = st["denoised_closer"]
        lines.append(f"- {n}: min over steps 1..{K - 1} = {min(closer[1:]) if K > 1 else float('nan'):.3f}, "
                     f"at step 0 = {closer[0]:.3f}")
    lines += [img("distance", "distance to final"), "## Norms",
              "||x_0|| / (sigma_max sqrt(d)) and sampling-path length / (sigma_max sqrt(d)):", ""]
    for n, st in runs.items():
        lines.append(f"- {n}: {st['norm_x0_ratio']:.4f} and {st['path_length_ratio']:.4f}")
    lines += [img("norms", "norms"), "## Tangent points at the final sample",
              "Mean cos(d_i, x_i - x_N) over steps (min over steps of the seed mean):", ""]
    for n, st in runs.items():
        c = st["cosine"]["mean"]
        lines.append(f"- {n}: mean {np.mean(c):.4f}, min {np.min(c):.4f}")
    lines += [img("cosine", "cosine"), "## Low-dimensional trajectories",
              "Fraction of each trajectory's variance in its top-k principal components (mean / min over seeds):",
              "", "| run | trajectory | top-1 | top-2 | top-3 |", "|---|---|---|---|---|"]
    for n, st in runs.items():
        for key, label in (("pca_x", "sampling"), ("pca_d", "denoising")):
            p = st[key]
            lines.append(f"| {n} | {label} | " + " | ".join(
                f"{p[f'top{k}']['mean']:.4f} / {p[f'top{k}']['min']:.4f}" for k in (1, 2, 3)) + " |")
    lines += [img("projections", "projections"), "## Optimal sampling is annealed mean shift"]
    ms = r["meanshift"]
    if "euler_max_abs_diff" in ms:
        lines.append(f"Euler with the optimal denoiser vs annealed mean shift on {ms['seeds']} seeds, every iterate: "
                     f"max |difference| = {ms['euler_max_abs_diff']:.2e}.")
    lines.append(f"Mean-shift view of the {r['sampler']} steps on the optimal trajectories (step size "
                 f"1 - sigma_(i+1)/sigma_i): distance of the implied target to the kernel mean, largest seed mean "
                 f"{max(ms['target_gap']['mean']):.3g}.")
    lines += ["", "KDE log-likelihood of the training set at each step's bandwidth, after minus before the step:", ""]
    for n, st in runs.items():
        lk = st["likelihood"]
        lines.append(f"- {n}: min change {lk['min_delta']:.4g} over {lk['steps']} steps, share of decreasing steps "
                     f"{lk['share_negative']:.3f}")
    lines += [img("kde", "KDE likelihood")]
    if "score_deviation" in r:
        sd = r["score_deviation"]
        peak = int(np.argmax(sd["on_learned"]["mean"]))
        lines += ["## Score deviation", f"||D_theta - D*|| on the learned trajectory peaks at step {peak} "
                  f"(sigma {r['sigmas'][peak]:.3g}) with {sd['on_learned']['mean'][peak]:.3g}; final distance "
                  f"between learned and optimal samples {sd['samples']['mean'][-1]:.3g} (mean).",
                  img("score_deviation", "score deviation")]
    lines += ["## Memorisation", f"Distance of each sample to its nearest training item relative to the median "
              f"distance between training items ({mem['scale']:.4g}); memorised = at most {mem['threshold']:g}.", "",
              "| run | samples | memorised | median | 10% | 90% |", "|---|---|---|---|---|---|"]
    for n in runs:
        m = mem[n]
        lines.append(f"| {n} | {m['samples']} | {m['memorized']:.3f} | {_fmt(m['median'])} | {_fmt(m['q10'])} | "
                     f"{_fmt(m['q90'])} |")
    lines += [img("nearest", "nearest neighbours"), "## ODE-Jump",
              "Output D(x_(k-1)) at step k instead of finishing the run: RMS distance per element to the full run's "
              "sample (mean over seeds) and the NFE spent.", "",
              "| k | NFE | " + " | ".join(f"{n} error" for n in runs) + " |", "|---" * (2 + len(runs)) + "|"]
    first = next(iter(runs.values()))
    for k in range(1, K + 1):
        lines.append(f"| {k} | {first['jump_nfe'][k - 1]} | " + " | ".join(
            _fmt(runs[n]["jump_error"]["mean"][k - 1]) for n in runs) + " |")
    if "jump_fid" in r:
        jf = r["jump_fid"]
        lines += ["", f"FID / KID of the learned model's jump outputs ({jf['images']} images against "
                  f"{jf['reference']} training images, features: {r.get('features')}):", "",
                  "| k | NFE | FID | KID |", "|---|---|---|---|"]
        lines += [f"| {w['k']} | {w['nfe']} | {w['fid']:.2f} | {w['kid']:.4f} |" for w in jf["rows"]]
    lines += [img("jump", "ODE-Jump"), "## Latent interpolation",
              "Norm at the midpoint relative to the mean norm of the two end latents (mean over pairs):", ""]
    for m, v in r["interpolation"]["midpoint_ratio"].items():
        lines.append(f"- {m}: {v:.4f}")
    lines += [img("interpolation_norms", "interpolation norms"), img("interpolation", "interpolation strips"),
              "## Timings", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in r["timings"].items()]
    lines += ["", "(wall-clock on the machine that wrote the report; 'total' excludes writing the figures)"]
    return "\n".join(lines) + "\n"


def _jsonable(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "tensors" and not (k == "interpolation")} | {
        "interpolation": {k: v for k, v in r["interpolation"].items() if k != "strips"}}


def write_report(r: dict, data: torch.Tensor, out: Path, *, title: str, command: str | None = None) -> None:
    """Write figures, results.json and report.md of analysis result `r` into the existing folder `out`."""
    figs = _figures(r, data, out)
    (out / "results.json").write_text(json.dumps(_jsonable(r), indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(r, figs, title, command), encoding="utf-8")
