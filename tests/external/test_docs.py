"""docs/models.md runs as written: its Python blocks in order (one namespace, like a notebook) and every
`diffspace ...` line of its bash blocks through the CLI, in a folder holding the small random models it names;
the values the page prints in its comments are checked."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from diffspace.cli import main

from .edm_writer import write_edm_snapshot
from .test_edm_snapshots import _unet

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", text, flags=re.S)


def test_models_page_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    monkeypatch.chdir(tmp_path)
    write_edm_snapshot(tmp_path / "network-snapshot.pkl", _unet(seed=0), tmp_path / "EXECUTED")
    write_edm_snapshot(tmp_path / "weak-snapshot.pkl", _unet(seed=7), tmp_path / "EXECUTED")
    found = blocks(DOC.read_text(encoding="utf-8"))
    assert [k for k, _ in found].count("python") >= 4 and [k for k, _ in found].count("bash") >= 3
    namespace: dict = {}
    for kind, code in found:
        if kind == "python":
            exec(compile(code, str(DOC), "exec"), namespace)
            continue
        for line in code.splitlines():
            if line.startswith("diffspace "):
                assert main(shlex.split(line)[1:]) == 0, line
    out = capsys.readouterr().out
    assert "torch.Size([4, 3, 8, 8]) 10" in out
    assert re.search(r"^0\.0100\d* 157\.4\d*$", out, flags=re.M), out
    assert "15 30 15" in out and "15 30 30" in out
    assert "EDMPrecond SongUNet {'shape': [1, 8, 8], 'label_dim': 3}" in out
    assert len(list((tmp_path / "images").glob("*.png"))) == 4 and len(list((tmp_path / "auto").glob("*.png"))) == 4
    assert (tmp_path / "network.safetensors").is_file() and not (tmp_path / "EXECUTED").exists()
