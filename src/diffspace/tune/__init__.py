"""Low-NFE tuning: GITS time grids, AMED mean-direction steps and per-budget plans (`diffspace tune`).

    sigmas = diffspace.tune.gits(D, 6, shape=(3, 32, 32), sampler="ipndm")
    plans = diffspace.tune.autotune(D, [5, 10], shape=(3, 32, 32))
    x = plans[5](D, latents * plans[5].sigmas[0])
"""

from diffspace.tune.amed import fit_amed
from diffspace.tune.gits import cost_matrix, gits, solve_dp, steps_for_nfe
from diffspace.tune.schedule import load_schedule, model_digest, save_schedule
from diffspace.tune.tuning import Plan, autotune, search

__all__ = ["Plan", "autotune", "cost_matrix", "fit_amed", "gits", "load_schedule", "model_digest", "save_schedule",
           "search", "solve_dp", "steps_for_nfe"]
