"""`diffspace demo`: a smoke run with tiny settings (the full run takes about five minutes), the data choice, the
time-budget split and bad input."""

import json

import numpy as np
import PIL.Image
import pytest

from diffspace.cli import demo, main
from diffspace.errors import DataError


def test_demo_smoke_digits(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--data", "digits", "--kimg", "0.3", "--images", "16", "--outdir", str(out)]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"] == "digits" and m["shape"] == [1, 8, 8] and m["images_per_sampler"] == 16
    assert m["train_kimg"] == pytest.approx(0.32)  # 0.3 kimg rounded up to whole batches of 32: 10 steps
    rows = {r["sampler"]: r for r in m["metrics"]}
    assert rows["edm (Heun)"]["nfe"] == 35 and rows["dpmpp_2m"]["nfe"] == 10
    assert all(np.isfinite(r["fid"]) and r["fid"] >= 0 for r in m["metrics"])
    # the real-vs-real floor is far below a network trained for 10 steps
    assert rows["real (held out)"]["fid"] < rows["edm (Heun)"]["fid"]  # (trained on 320 images only)
    for name in ("samples-heun.png", "samples-dpmpp_2m.png", "real.png"):
        img = PIL.Image.open(out / name)
        assert img.size[0] >= 256 and img.size[0] % 32 == 0  # 4×4 tiles of 8×8, scaled up by an integer factor
    assert (out / "features.safetensors").is_file() and list((out / "run").glob("network-snapshot-*.safetensors"))
    assert "NFE" in printed and "dpmpp_2m" in printed and "FID" in (out / "README.md").read_text()
    # a second run into the same folder needs --force
    assert main(["demo", "--data", "digits", "--kimg", "0.3", "--images", "16", "--outdir", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_pick_data_falls_back_to_digits(monkeypatch):
    from diffspace.data import builtin

    def missing(split):
        raise DataError("not here")

    monkeypatch.setattr(builtin, "find_fashion_mnist", missing)
    monkeypatch.setattr(builtin, "find_mnist", missing)
    assert demo.pick_data("auto") == "digits"
    monkeypatch.setattr(builtin, "find_mnist", lambda split: "somewhere")
    assert demo.pick_data("auto") == "mnist"
    assert demo.pick_data("fashion-mnist") == "fashion-mnist"


def test_plan_fills_the_budget():
    # 300 s budget, 20 s spent: (300 − 20 − 15)·0.9 = 238.5 s; 25% of it samples at 45 NFE × 2 ms per image.
    kimg, n = demo._plan(300, 20, train_cost=0.005, nfe_cost=0.002, nfe_total=45, images=None, kimg=None)
    assert n == int(0.25 * 238.5 / 0.09)
    assert kimg == pytest.approx((238.5 - n * 0.09) / 0.005 / 1000)
    # explicit values win; the image count stays within [128, 1000] otherwise
    assert demo._plan(300, 20, 0.005, 0.002, 45, images=7, kimg=1.5) == (1.5, 7)
    assert demo._plan(300, 20, 0.005, 1e-6, 45, None, None)[1] == 1000


@pytest.mark.parametrize("argv,message", [
    (["--fast-sampler", "nope"], "unknown sampler 'nope'"),
    (["--minutes", "0"], "--minutes 0 must be > 0"),
    (["--images", "1"], "--images 1 must be >= 2"),
])
def test_demo_bad_input_leaves_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "demo"
    assert main(["demo", "--outdir", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_toy_flag_runs_the_toy_demo(tmp_path, monkeypatch):
    import diffspace.toydemo

    calls = []
    monkeypatch.setattr(diffspace.toydemo, "run_toy_demo", lambda outdir, seed=0: calls.append((outdir, seed)))
    assert main(["demo", "--toy", "--outdir", str(tmp_path / "t"), "--seed", "3"]) == 0
    assert calls == [(tmp_path / "t", 3)]


@pytest.mark.slow
def test_minutes_is_a_wall_clock_deadline(tmp_path, monkeypatch):
    # The calibration claims training is 10⁴× faster than it is (as when the machine gets busy after it): the
    # planned kimg would take hours, and the deadline must stop training when its share of the time is spent.
    monkeypatch.setattr(demo, "_train_seconds_per_image", lambda *args: 1e-7)
    out = tmp_path / "demo"
    assert main(["demo", "--data", "digits", "--minutes", "0.4", "--images", "16", "--outdir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_at_deadline"] and 0 < m["training_share_s"] <= 0.4 * 60
    # The training phase ends within one step, the final checkpoint and its reload after the deadline; without
    # a deadline it would run for hours.
    assert m["phases"]["training"]["wall_s"] < m["training_share_s"] + 30
