"""Low-NFE tuning: GITS time grids, AMED mean-direction steps and per-budget plans (`diffspace tune`).

    sigmas = diffspace.tune.gits(D, 6, shape=(3, 32, 32), sampler="ipndm")
    plans = diffspace.tune.autotune(D, [5, 10], shape=(3, 32, 32))
    x = plans[5](D, latents * plans[5].sigmas[0])
"""

from diffspace.tune.gits import cost_matrix, gits, solve_dp, steps_for_nfe

__all__ = ["cost_matrix", "gits", "solve_dp", "steps_for_nfe"]
