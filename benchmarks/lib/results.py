"""Writing a benchmark's results: JSON + Markdown, each atomically, into benchmarks/results (full runs) or a new
temporary folder (--quick runs, which must never replace committed results)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def write_results(stem: str, data, markdown: str, *, quick: bool, outdir: Path | None = None) -> list[Path]:
    """Write STEM.json and STEM.md (STEM_quick.* for quick runs) and return their paths."""
    if outdir is None:
        outdir = Path(tempfile.mkdtemp(prefix="diffspace-bench-")) if quick else RESULTS
    outdir.mkdir(parents=True, exist_ok=True)
    stem = stem + ("_quick" if quick else "")
    written = []
    for suffix, content in ((".json", json.dumps(data, indent=1) + "\n"), (".md", markdown)):
        path = outdir / (stem + suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
        written.append(path)
    return written
