"""edm.table2 (EDM's Table 2 in miniature), the runner's merging of `--only` runs, and the run-to-run noise the
report states, checked against the committed report."""

import json
import math
import shlex
from pathlib import Path

import pytest

from diffspace import reproduce
from diffspace.cli import build_parser, main
from diffspace.reproduce import noise, table2
from diffspace.reproduce.core import select

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "reproduction" / "results.json"


def _fashion_mnist() -> bool:
    from diffspace.data import builtin
    from diffspace.errors import DataError

    try:
        builtin.find_fashion_mnist("train")
        builtin.find_fashion_mnist("test")
        return True
    except DataError:
        return False


def test_table2_is_in_the_full_run_only():
    assert "edm.table2" in [c.id for c in select()]
    assert "edm.table2" not in [c.id for c in select(quick=True)]
    assert select("edm.table2", quick=True) == []
    assert [c.id for c in select("edm.table2")] == ["edm.table2"]


def _config(command: str):
    """The TrainConfig a recorded command line resolves to (parsed by `diffspace train`'s own parser)."""
    from diffspace.cli.train import options_from_args
    from diffspace.train.config import TrainConfig

    argv = shlex.split(command)
    assert argv[:2] == ["diffspace", "train"]
    args = build_parser().parse_args(argv[1:])
    cfg = TrainConfig.from_dict({**options_from_args(args), "outdir": args.outdir})
    cfg.check()
    return cfg


def test_table2_commands_express_the_six_configurations():
    cfgs = {c.key: _config(table2.command_line(table2.train_args(c, 10.0, 0, f"runs/{c.key}")))
            for c in table2.configs(10.0)}
    assert list(cfgs) == list("ABCDEF")
    a, b, c, d, e, f = cfgs.values()
    assert {x.duration for x in cfgs.values()} == {0.01} and {x.batch for x in cfgs.values()} == {32}
    assert (a.precond, a.loss, a.lr, a.dropout, a.ema_rampup, a.augment) == ("vp", None, 4e-4, 0.1, None, 0.0)
    assert a.net_kwargs["channel_mult"] == [1, 2, 2, 2] and a.ema == 0.0025
    assert (b.lr, b.dropout, b.ema_rampup, b.ema) == (2e-3, 0.13, 0.05, 0.0005)
    assert c.net_kwargs["channel_mult"] == [2, 2, 2] and c.precond == "vp"
    assert (d.precond, d.loss) == ("edm", "vp")
    assert (e.precond, e.loss, e.augment) == ("edm", "edm", 0.0)
    assert f.augment == 0.12 and f.augment_label
    assert {x.seed for x in cfgs.values()} == {0} and {x.threads for x in cfgs.values()} == {table2.THREADS}


@pytest.mark.skipif(not _fashion_mnist(), reason="Fashion-MNIST is not installed (dataset-fashion-mnist)")
def test_table2_end_to_end_on_a_minuscule_budget(tmp_path):
    """Two configurations, 64 training images each, 16 scored images: the machinery, not the result."""
    r = reproduce.run("edm.table2", quick=False, figure=tmp_path / "t2.png", kimg=0.064, images=16, reference=64,
                      feature_images=300, keys="AE", workdir=str(tmp_path / "runs"))
    assert r["verdict"] == "REPORTED", r["measurement"]
    rows = r["data"]["configs"]
    assert list(rows) == ["A", "E"]
    for row in rows.values():
        assert all(math.isfinite(row[m]) for m in ("fid", "fid_bootstrap_std", "kid", "kid_std"))
        assert row["fid"] > 0 and row["fid_bootstrap_std"] > 0 and row["kid"] > row["kid_std"] > 0
        assert row["command"].startswith("diffspace train --data fashion-mnist --resolution 32 --transform pad")
    from diffspace.generate import load

    net_a, _ = load(tmp_path / "runs" / "A")
    net_e, _ = load(tmp_path / "runs" / "E")
    assert type(net_a).__name__ == "VPPrecond" and type(net_e).__name__ == "EDMPrecond"
    losses = {k: json.loads((tmp_path / "runs" / k / "config.json").read_text())["loss"] for k in rows}
    assert losses["A"].startswith("VPLoss(") and losses["E"].startswith("EDMLoss(")
    assert math.isfinite(r["data"]["real_floor"]["fid"]) and r["data"]["threads"] == table2.THREADS
    assert "A " in r["measurement"] and "E " in r["measurement"] and (tmp_path / "t2.png").stat().st_size > 1000


def test_table2_without_fashion_mnist_is_not_available(monkeypatch):
    import diffspace.data
    from diffspace.errors import DataError

    def missing(*args, **kwargs):
        raise DataError("Fashion-MNIST files not found in /nowhere")

    monkeypatch.setattr(diffspace.data, "open_dataset", missing)
    r = reproduce.run("edm.table2", quick=False)
    assert r["verdict"] == "NOT AVAILABLE" and "Fashion-MNIST is not installed" in r["measurement"]


def test_only_run_adds_to_an_existing_report(tmp_path):
    out = tmp_path / "rep"
    assert main(["reproduce", "--only", "geo.13", "--outdir", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    assert main(["reproduce", "--only", "edm.4", "--outdir", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in records] == ["edm.4", "geo.13"] and records[1] == first[0]
    md = (out / "report.md").read_text()
    assert all(f"| **{i}**" in md for i in ("edm.4", "geo.13")) and "Verdicts: PASS 2," in md
    assert "## Run-to-run noise" in md and ("bit-identical" in md or "apart (relative)" in md)
    assert "Run-to-run noise" in (out / "index.html").read_text()


@pytest.mark.parametrize("claim_id", ["edm.4", "geo.13"])
def test_committed_report_matches_a_fresh_run(claim_id):
    """The committed full report's numbers for a cheap claim agree with a fresh full-mode run within the
    tolerance the report states (noise.TOLERANCE, relative)."""
    committed = {r["id"]: r for r in json.loads(COMMITTED.read_text())}
    assert committed[claim_id]["quick"] is False
    fresh = reproduce.run(claim_id, quick=False)
    assert fresh["verdict"] == committed[claim_id]["verdict"]
    assert noise.difference(committed[claim_id]["data"], fresh["data"]) <= noise.TOLERANCE


def test_difference_of_data():
    assert noise.difference({"a": [1.0, 2.0], "ok": True}, {"a": [1.0, 2.0 * (1 + 1e-9)], "ok": True}) < 2e-9
    assert noise.difference({"a": 1e-14}, {"a": 2e-14}) < 1e-3  # below FLOOR: an absolute difference
    assert noise.difference({"ok": True}, {"ok": False}) == math.inf
    assert noise.difference({"a": 1.0}, {"b": 1.0}) == math.inf
