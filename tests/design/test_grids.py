"""Grids of EDM's Table 1 against the spec's listed values and closed forms."""

import math

import pytest
import torch

from diffspace import grids
from diffspace.errors import ConfigError

# Spec §1.2, "EDM 18-step grid (N=18, ρ=7)", printed to 3 decimals (5 significant digits for small values).
EDM18 = [80, 57.586, 40.786, 28.375, 19.353, 12.910, 8.401, 5.315, 3.257, 1.923, 1.088, 0.5853, 0.2964,
         0.1395, 0.0599, 0.0229, 0.0075, 0.002, 0]


def _printed_precision(v: float) -> float:
    """Half a unit in the last printed digit of the spec's value."""
    text = repr(float(v)) if v != int(v) else str(int(v))
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10**-decimals + 1e-12


def test_edm18_matches_spec():
    sig = grids.edm(18)
    assert sig.dtype == torch.float64 and len(sig) == 19
    for i, (got, want) in enumerate(zip(sig.tolist(), EDM18)):
        # σ_4 = 19.352453 (the same in float32): the spec's 19.353 is a double rounding (→ 19.3525 → 19.353),
        # so that one entry is allowed 0.6 of a unit in the last printed digit instead of 0.5.
        slack = 1.2 if i == 4 else 1.0
        assert abs(got - want) <= slack * _printed_precision(want), (i, got, want)


def test_grids_end_with_zero_unless_asked():
    for fn in (grids.edm, grids.vp, grids.ve, grids.iddpm, grids.exponential):
        g = fn(10)
        assert g[-1] == 0 and len(g) == 11 and (g[1:] < g[:-1]).all()
        assert fn(10, append_zero=False)[-1] > 0


def test_iddpm_table_constants():
    u = grids.iddpm_table()
    # Spec §1.2: u_8 = 80.2037…, u_999 = 0.006425…, u_0 = 20291.2; j0 = 8 is the first index with u_j <= 81.
    assert abs(float(u[8]) - 80.2037) < 5e-5
    assert abs(float(u[999]) - 0.006425) < 5e-7
    assert abs(float(u[998]) - 0.009350) < 5e-7
    assert abs(float(u[0]) - 20291.2) < 0.05
    assert float(u[1000]) == 0
    j0 = int(torch.nonzero(u <= 81)[0])
    assert j0 == 8
    # The default iDDPM grid with all 992 levels is exactly u_8..u_999.
    full = grids.iddpm(992, append_zero=False)
    assert torch.equal(full, u[8:1000])


@pytest.mark.parametrize("n", [59, 99, 103])
def test_iddpm_index_rounds_like_edm_at_floating_point_ties(n):
    # Default range: 992 levels u_8..u_999. The middle step i = (N−1)/2 sits at 991·i/(N−1) = 495.5 exactly, but
    # EDM computes (991/(N−1))·i in float64, which gives 495.49999999999994 for these N, and rounds half to even:
    # index 495 (the paper's ⌊x + ½⌋ on the exact value would give 496).
    u = grids.iddpm_table()
    mid = (n - 1) // 2
    assert (991 / (n - 1)) * mid == 495.49999999999994
    got = grids.iddpm(n, append_zero=False)
    assert got[mid] == u[8 + 495] and got[mid] != u[8 + 496]
    # Every index against numpy's half-to-even rounding of EDM's expression.
    import numpy as np

    idx = np.round((991 / (n - 1)) * np.arange(n)).astype(np.int64)
    assert torch.equal(got, u[8:1000][torch.from_numpy(idx)])


def test_vp_ve_exponential_closed_forms():
    vp = grids.vp(2, append_zero=False)
    # σ_VP(1) and σ_VP(1e-3) from spec §1.2 derived constants.
    assert abs(float(vp[0]) - 152.167) < 5e-4 and abs(float(vp[1]) - 0.010486) < 5e-7
    ve = grids.ve(5, append_zero=False)
    ratios = ve[1:] / ve[:-1]
    assert torch.allclose(ratios, ratios[0].expand(4), rtol=1e-12)  # geometric in σ
    assert abs(float(ve[0]) - 100) < 1e-12 and abs(float(ve[-1]) - 0.02) < 1e-12
    ex = grids.exponential(5, 0.01, 100, append_zero=False)
    assert torch.allclose(ex.log().diff(), torch.full((4,), math.log(1e-4) / 4, dtype=torch.float64))


def test_edm_rho_limits():
    # ρ = 1 is uniform in σ.
    g = grids.edm(5, 1.0, 5.0, rho=1, append_zero=False)
    assert torch.allclose(g, torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64))
    # One step uses σ_max only.
    assert grids.edm(1).tolist() == [80.0, 0.0]


@pytest.mark.parametrize("call", [
    lambda: grids.edm(10, sigma_min=1.0, sigma_max=1.0),
    lambda: grids.edm(10, sigma_min=2.0, sigma_max=1.0),
    lambda: grids.edm(10, rho=0),
    lambda: grids.edm(10, rho=-1),
    lambda: grids.edm(0),
    lambda: grids.ve(-3),
    lambda: grids.custom([1.0, 2.0, 0.5]),
    lambda: grids.custom([2.0, -1.0]),
    lambda: grids.custom([2.0, 2.0, 1.0]),
    lambda: grids.custom([2.0, float("nan")]),
    lambda: grids.iddpm(2000),
])
def test_bad_grids_raise_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_bad_grid_message_names_value():
    with pytest.raises(ConfigError, match="sigma_min=2.0"):
        grids.edm(10, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ConfigError, match=r"sigma\[0\]=1 <= sigma\[1\]=2"):
        grids.custom([1.0, 2.0])


def test_custom_accepts_final_zero():
    g = grids.custom([3.0, 1.0], append_zero=True)
    assert g.tolist() == [3.0, 1.0, 0.0]
