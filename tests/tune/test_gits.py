"""GITS: the dynamic programme on hand-made costs, the cost matrix on exact trajectories, and lower errors than the
ρ=7 grid for Euler and iPNDM on the exact gmm3x32x32 mixture."""

import itertools
import math

import pytest
import torch

from diffspace import samplers, tune
from diffspace.design import grids
from diffspace.errors import ConfigError
from diffspace.samplers import problems
from diffspace.tune.gits import cost_matrix, deviation, steps_for_nfe


def brute_force(C, steps, coeff):
    """Cheapest path 0 -> n−1 with `steps` jumps, the k-th jump (k = 0 first) weighted by coeff^k."""
    n = C.shape[0]
    best, arg = math.inf, None
    for mid in itertools.combinations(range(1, n - 1), steps - 1):
        path = [0, *mid, n - 1]
        jumps = list(zip(path[:-1], path[1:]))
        total = sum(coeff**k * float(C[i, j]) for k, (i, j) in enumerate(jumps))
        if total < best:
            best, arg = total, path
    return arg, best


def test_dp_hand_made_five_points():
    # Jumps of length 1 cost 1, length 2 cost 1.5, length 3 cost 10, 0 -> 4 costs 100. With 2 steps the best
    # path is 0 -> 2 -> 4 (1.5 + 1.15·1.5 = 3.225; 0 -> 1 -> 4 costs 1 + 1.15·10, 0 -> 3 -> 4 costs 10 + 1.15).
    n = 5
    C = torch.full((n, n), math.inf, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            C[i, j] = {1: 1.0, 2: 1.5, 3: 10.0, 4: 100.0}[j - i]
    assert tune.solve_dp(C, 2, coeff=1.15) == [0, 2, 4]
    assert tune.solve_dp(C, 1) == [0, 4]
    assert tune.solve_dp(C, 4) == [0, 1, 2, 3, 4]
    # 3 steps: two jumps of 1 and one of 2; jump k is weighted 1.15^k, so the long jump goes first:
    # costs 1.5 + 1.15 + 1.3225 (0-2-3-4) < 1 + 1.725 + 1.3225 (0-1-3-4) < 1 + 1.15 + 1.98 (0-1-2-4).
    assert tune.solve_dp(C, 3, coeff=1.15) == [0, 2, 3, 4]
    # With coeff < 1 the last jump is the cheap one to make long: 0-1-2-4.
    assert tune.solve_dp(C, 3, coeff=0.5) == [0, 1, 2, 4]


@pytest.mark.parametrize("seed", range(5))
def test_dp_matches_brute_force_on_random_costs(seed):
    g = torch.Generator().manual_seed(seed)
    n = 8
    C = torch.rand(n, n, generator=g, dtype=torch.float64) - 0.3  # signed, like the 'dev' cost
    for steps in (1, 2, 3, 5, 7):
        path, best = brute_force(C, steps, 1.15)
        assert tune.solve_dp(C, steps, 1.15) == path


def test_dp_refuses_a_student_longer_than_the_teacher():
    with pytest.raises(ConfigError, match="shorter than the student"):
        tune.solve_dp(torch.zeros(5, 5), 5)


def test_cost_matrix_on_a_straight_trajectory():
    # Points on a straight line with exact derivatives: every Euler jump lands on the teacher point, so the
    # l2 cost is 0 and the 'dev' cost is 0 (deviation of points on the start-end line).
    sig = torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)
    x = torch.stack([s * v for s in sig])  # x(σ) = σ v: dx/dσ = v
    d = v.expand(3, 1, 3)
    for kind in ("l2", "l1", "dev"):
        C = cost_matrix(x, d, sig, kind)
        assert torch.allclose(C.triu(1).nan_to_num(posinf=0), torch.zeros(4, 4, dtype=torch.float64), atol=1e-12)
        assert math.isinf(float(C[2, 1]))


def test_deviation_is_the_distance_to_the_line():
    start = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    end = torch.tensor([[4.0, 0.0]], dtype=torch.float64)
    assert float(deviation(torch.tensor([[1.0, 3.0]], dtype=torch.float64), start, end)) == pytest.approx(3.0)


def test_nfe_rule_halves_steps_for_two_evaluation_samplers():
    assert steps_for_nfe("ipndm", 6) == 6
    assert steps_for_nfe("dpm_2", 6) == 3 and steps_for_nfe("heun", 7) == 3
    assert steps_for_nfe("dpmpp_2m", 6, afs=True) == 7
    with pytest.raises(ConfigError, match="below the minimum NFE"):
        steps_for_nfe("heun", 1)


def test_gits_grid_shape_and_errors():
    P = problems.get("gmm2")
    sig = tune.gits(P.denoiser, 4, shape=P.shape, sampler="dpm_2", teacher_steps=21, warmup=16)
    assert sig.dtype == torch.float64 and len(sig) == 3  # 2 steps of 2 NFE
    assert float(sig[0]) == pytest.approx(80.0) and float(sig[-1]) == pytest.approx(0.002)
    assert bool((sig[1:] < sig[:-1]).all())
    with pytest.raises(ConfigError, match="shorter than the student"):
        tune.gits(P.denoiser, 10, shape=P.shape, sampler="euler", teacher_steps=6, warmup=4)
    with pytest.raises(ConfigError, match="no analytical first step"):
        tune.gits(P.denoiser, 4, shape=P.shape, sampler="euler", afs=True, warmup=4)


def test_gits_afs_inserts_one_level_at_equal_nfe():
    P = problems.get("gmm2")
    sig = tune.gits(P.denoiser, 5, shape=P.shape, sampler="ipndm", teacher_steps=31, warmup=16, afs=True)
    assert len(sig) == 7  # 6 steps, the first with AFS: 5 NFE
    assert samplers.get("ipndm").nfe(sig, afs=True) == 5


@pytest.fixture(scope="module")
def image_problem():
    P = problems.get("gmm3x32x32")
    from diffspace.tune.gits import _latents

    lat = _latents(P.shape, range(1000, 1032))  # held-out seeds (warm-up uses 0..63)
    # Reference: iPNDM with 200 ρ=7 steps; it differs from 400 steps by 2.5e-6 RMS, far below the errors here.
    ref = samplers.get("ipndm")(P.denoiser, lat * 80, grids.edm(201, 0.002, 80.0, append_zero=False))
    table = tune.gits.__globals__["teacher_costs"](P.denoiser, shape=P.shape, warmup=64)
    return P, lat, ref, table


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["euler", "ipndm"])
@pytest.mark.parametrize("nfe", [6, 10])
def test_gits_beats_rho7_on_gmm3x32x32(image_problem, sampler, nfe):
    P, lat, ref, table = image_problem

    def err(sig):
        out = samplers.get(sampler)(P.denoiser, lat * sig[0], sig)
        return float((out - ref).flatten(1).norm(dim=1).mean()) / math.sqrt(P.dim)

    rho7 = grids.edm(nfe + 1, 0.002, 80.0, append_zero=False)
    g = table.grid(sampler, nfe)
    assert len(g) == nfe + 1
    assert err(g) < err(rho7)
