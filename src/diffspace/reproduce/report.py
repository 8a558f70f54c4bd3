"""The reproduction report: results.json (the records), report.md, and index.html — one self-contained page
(figures embedded as data URIs, no scripts, no external resources)."""

from __future__ import annotations

import base64
import html
import json
import platform
from pathlib import Path

from diffspace.reproduce.core import FAIL, NOT_AVAILABLE, PASS, REPORTED
from diffspace.reproduce.noise import sentences

COLOURS = {PASS: "#1a7f37", FAIL: "#cf222e", REPORTED: "#0969da", NOT_AVAILABLE: "#6e7781"}


def machine() -> dict:
    import os

    import torch

    from diffspace import __version__

    return {"diffspace": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"}


def summary(records: list[dict]) -> dict[str, int]:
    out = {v: 0 for v in (PASS, FAIL, REPORTED, NOT_AVAILABLE)}
    for r in records:
        out[r["verdict"]] += 1
    return out


def markdown(records: list[dict], meta: dict) -> str:
    counts = summary(records)
    lines = ["# diffspace reproduction report", "",
             f"diffspace {meta['diffspace']}, torch {meta['torch']}, Python {meta['python']}; {meta['machine']}; "
             f"mode: {meta['mode']}; {meta['seconds']:.0f} s in all.", "",
             "Verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
             "| claim | source | prediction | measurement | verdict | seconds |", "|---|---|---|---|---|---|"]
    for r in records:
        cells = [f"**{r['id']}** {r['title']}", r["source"], r["prediction"], r["measurement"], r["verdict"],
                 f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines.append("")
    noise = sentences(meta.get("noise"))
    if noise:
        lines += ["## Run-to-run noise", "", " ".join(noise), ""]
    for r in records:
        lines += [f"## {r['id']}: {r['title']}", "", f"- Source: {r['source']}", f"- Prediction: {r['prediction']}",
                  f"- Measured: {r['measurement']}", f"- Verdict: **{r['verdict']}**",
                  f"- Command: `{r['command']}` (seed {r['seed']})", ""]
        if r.get("figure"):
            lines += [f"![{r['id']}](figures/{r['figure']})", ""]
    return "\n".join(lines)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="figure of the claim" src="data:image/png;base64,{data}">'


def page(records: list[dict], meta: dict, figures: Path) -> str:
    e = html.escape
    counts = summary(records)
    rows = []
    for r in records:
        colour = COLOURS[r["verdict"]]
        rows.append(f"<tr><td><a href=\"#{e(r['id'])}\">{e(r['id'])}</a></td><td>{e(r['source'])}</td>"
                    f"<td>{e(r['prediction'])}</td><td>{e(r['measurement'])}</td>"
                    f"<td style=\"color:{colour};font-weight:bold\">{e(r['verdict'])}</td>"
                    f"<td>{r['seconds']:.1f}</td></tr>")
    sections = []
    for r in records:
        fig = _img(figures / r["figure"]) if r.get("figure") and (figures / r["figure"]).exists() else ""
        sections.append(f"<section id=\"{e(r['id'])}\"><h2>{e(r['id'])}: {e(r['title'])}</h2>"
                        f"<p><b>Source:</b> {e(r['source'])}<br><b>Prediction:</b> {e(r['prediction'])}<br>"
                        f"<b>Measured:</b> {e(r['measurement'])}<br><b>Verdict:</b> "
                        f"<span style=\"color:{COLOURS[r['verdict']]}\">{e(r['verdict'])}</span><br>"
                        f"<b>Command:</b> <code>{e(r['command'])}</code> (seed {r['seed']})</p>{fig}</section>")
    said = sentences(meta.get("noise"))
    noise = f"<h2 id=\"noise\">Run-to-run noise</h2><p>{e(' '.join(said))}</p>" if said else ""
    head = (f"diffspace {e(meta['diffspace'])}, torch {e(meta['torch'])}, Python {e(meta['python'])}; "
            f"{e(meta['machine'])}; mode: {e(meta['mode'])}; {meta['seconds']:.0f} s in all")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>diffspace reproduction report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #d0d7de;padding:4px 6px;vertical-align:top}}
img{{max-width:100%}}code{{background:#f6f8fa}}</style></head>
<body><h1>diffspace reproduction report</h1><p>{head}</p>
<p>{e(", ".join(f"{k} {v}" for k, v in counts.items()))}</p>
<table><tr><th>claim</th><th>source</th><th>prediction</th><th>measurement</th><th>verdict</th><th>s</th></tr>
{"".join(rows)}</table>
{noise}{"".join(sections)}
</body></html>
"""


def write(outdir: Path, records: list[dict], meta: dict) -> None:
    """index.html and report.md beside results.json and figures/ (each file written atomically)."""
    from diffspace.io.checkpoint import atomic_write_text

    figures = outdir / "figures"
    atomic_write_text(outdir / "report.md", markdown(records, meta))
    atomic_write_text(outdir / "index.html", page(records, meta, figures))


def save_results(path: Path, records: list[dict]) -> None:
    """results.json: the list of finished claims (rewritten atomically after each one)."""
    from diffspace.io.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(records, indent=1))
