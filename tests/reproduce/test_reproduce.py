import json
import shutil

import pytest
import torch

from diffspace import reproduce
from diffspace.cli import main


def _broken_heun(model, x, sigmas, **unused):
    """Heun with the correction weights (3/4, 1/4) instead of (1/2, 1/2): only first order."""
    x = x.to(torch.float64)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - model(x, s)) / s
        x_prime = x + (s_next - s) * d
        d_prime = (x_prime - model(x_prime, s_next)) / s_next
        x = x + (s_next - s) * (0.75 * d + 0.25 * d_prime)
    return x


def test_heun_claim_fails_for_a_heun_with_wrong_weights():
    assert reproduce.run("edm.1")["verdict"] == "PASS"
    broken = reproduce.run("edm.1", heun=_broken_heun)
    assert broken["verdict"] == "FAIL" and broken["data"]["slopes"]["heun"] > -1.3


def test_li_order_claim_fails_when_the_accelerated_sampler_is_only_first_order():
    from diffspace import samplers

    assert reproduce.run("li.7", accel_ode=samplers.get("ddim_type"))["verdict"] == "FAIL"


def test_mean_shift_claim_fails_for_a_wrong_step_size():
    from diffspace.geometry import mean_shift

    def wrong_step(data, x, sigmas):  # steps of size 1 − (σ'/σ)² instead of 1 − σ'/σ
        return mean_shift(data, x, torch.as_tensor(sigmas, dtype=torch.float64) ** 2 / float(sigmas[0]))

    assert reproduce.run("geo.11")["verdict"] == "PASS"
    assert reproduce.run("geo.11", mean_shift=wrong_step)["verdict"] == "FAIL"


def test_report_folder_resume_and_results_schema(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "--quick", "--only", "edm.4,amed.19", "--outdir", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in records] == ["edm.4", "amed.19"]
    for r in records:
        assert {"id", "source", "prediction", "measurement", "verdict", "seconds", "command"} <= set(r)
        assert r["verdict"] == "PASS" and r["command"] == f"diffspace reproduce --only {r['id']} --quick"
    assert (out / "figures" / "amed.19.png").stat().st_size > 1000
    html = (out / "index.html").read_text()
    assert "amed.19" in html and "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    assert "| **edm.4**" in (out / "report.md").read_text()
    # An interrupted run keeps its finished claims: drop one, rerun, the other is reused unchanged.
    (out / "results.json").write_text(json.dumps(records[:1]))
    (out / "index.html").unlink()
    capsys.readouterr()
    assert main(["reproduce", "--quick", "--only", "edm.4,amed.19", "--outdir", str(out)]) == 0
    assert "resuming: 1 of 2" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again[0] == records[0] and again[1]["id"] == "amed.19" and (out / "index.html").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["reproduce", "--only", "edm.99", "--outdir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown claim 'edm.99'" in err and "edm.1" in err
    assert not (tmp_path / "x").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["reproduce", "--only", "edm.4", "--outdir", str(blocker / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not writable" in err and "--outdir" in err


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None or shutil.which("chromedriver") is None,
                    reason="no headless Chromium/chromedriver here (Debian packages chromium, chromium-driver)")
def test_html_report_opens_in_a_real_browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.chrome.service import Service

    out = tmp_path / "rep"
    assert main(["reproduce", "--quick", "--only", "amed.19,edm.4", "--outdir", str(out)]) == 0
    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((out / "index.html").as_uri())
        images = driver.find_elements("tag name", "img")
        assert len(images) == 1
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                   for im in images)
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        assert "PASS" in driver.find_element("tag name", "table").text
    finally:
        driver.quit()


@pytest.mark.slow
def test_quick_reproduction_passes(tmp_path):
    out = tmp_path / "quick"
    assert main(["reproduce", "--quick", "--jobs", "2", "--outdir", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert records and not [r["id"] for r in records if r["verdict"] == "FAIL"]
