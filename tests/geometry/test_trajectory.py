import torch

from diffspace import samplers
from diffspace.denoisers import GaussianMixture
from diffspace.design import grids
from diffspace.geometry import record


def _mixture(d=4):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, d, generator=g, dtype=torch.float64)
    covs = torch.stack([torch.eye(d, dtype=torch.float64) * s for s in (0.1, 0.2, 0.3)])
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), means, covs)


def test_record_matches_the_sampler_and_costs_no_extra_nfe():
    model, sigmas = _mixture(), grids.edm(8)
    x = samplers.StackedRandom([0, 1, 2]).randn([4], dtype=torch.float64) * sigmas[0]
    def options(name):  # a fresh per-seed noise source for each run
        return {"S_churn": 10.0, "noise": samplers.StackedRandom([0, 1, 2])} if name == "edm" else {}

    for name in ("euler", "heun", "dpmpp_2m", "edm"):
        stats = {}
        out = samplers.get(name)(model, x, sigmas, stats=stats, **options(name))
        traj = record(name, model, x, sigmas, **options(name))
        assert torch.equal(traj.final, out.to(traj.x.dtype))
        assert traj.nfe == stats["nfe"] == samplers.get(name).nfe(sigmas)
        assert traj.x.shape == (9, 3, 4) and traj.denoised.shape == (8, 3, 4)
        assert torch.equal(traj.sigmas, sigmas)
        if name != "edm":  # without churn the first row is the input latent
            assert torch.equal(traj.x[0], x)


def test_record_euler_steps_are_the_recorded_denoised_convex_combinations():
    model, sigmas = _mixture(), grids.edm(6)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80
    t = record("euler", model, x, sigmas)
    for i in range(6):
        r = sigmas[i + 1] / sigmas[i]
        torch.testing.assert_close(t.x[i + 1], r * t.x[i] + (1 - r) * t.denoised[i], rtol=0, atol=1e-12)


def test_record_float32_batch_invariance_and_nfe_at():
    model, sigmas = _mixture(), grids.edm(6)
    x = samplers.StackedRandom([0, 1, 2]).randn([4], dtype=torch.float64) * sigmas[0]
    t32 = record("heun", model, x, sigmas, dtype=torch.float32)
    assert t32.x.dtype == t32.denoised.dtype == torch.float32
    assert t32.nfe_at.tolist() == [1, 3, 5, 7, 9, 11]  # Heun: 2 calls per step, D at the step start is the 2i+1-th
    alone = record("heun", model, x[1:2], sigmas, dtype=torch.float32)
    assert torch.equal(alone.x[:, 0], t32.x[:, 1]) and torch.equal(alone.denoised[:, 0], t32.denoised[:, 1])
    afs = record("dpmpp_2m", model, x, sigmas, afs=True)  # the analytical first step costs no call
    assert afs.nfe_at.tolist() == [0, 1, 2, 3, 4, 5] and afs.nfe == 5
