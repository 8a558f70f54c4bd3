"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and corrector (UniC) of any order that share one model
evaluation per step, in the σ(t) = t, s(t) = 1 form diff-sampler uses (λ = −log σ, h = log(σ/σ')).

With m the model output (data prediction D, or noise prediction ε = (x − D)/σ), r_k = (λ_{i−k} − λ_i)/h and
D1_k = (m_{i−k} − m_i)/r_k, hh = −h (data) or h (noise), B(h) = hh ('bh1') or e^{hh} − 1 ('bh2'), and
g_1 = φ₁/hh − 1, g_{n+1} = g_n/hh − 1/(n+1)! with φ₁ = e^{hh} − 1, b_n = n!·g_n/B(h):

    data:  x̃ = (σ'/σ)x − φ₁m_i,  x' = x̃ − B(h)·Σ_k ρ_k D1_k
    noise: x̃ = x − σ'φ₁m_i,       x' = x̃ − σ'B(h)·Σ_k ρ_k D1_k

The predictor's ρ solve Σ_k ρ_k r_k^{n−1} = b_n over the previous points (order 2: ρ = ½); the corrector
then evaluates m at the predicted point and re-solves with r = 1 added for it (order 1: ρ = ½). That
evaluation is the next step's m_{i+1}, so the method costs 1 NFE/step.

Unlike diff-sampler, nothing is thresholded: its data-prediction path clips D to the 99.5% quantile of |D|
(dynamic thresholding) at every call. Its step rules are kept: warm-up orders 1, 2, … with the corrector on
every warm-up step, lower_order_final, no corrector on the last step.
"""

from __future__ import annotations

import math

import torch

from diffspace.errors import ConfigError
from diffspace.samplers.base import Run, to_d
from diffspace.samplers.dpm_eps import step_order
from diffspace.samplers.multistep import afs_denoised

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(rks: list[float], h: float, order: int, *, variant: str, predict_x0: bool):
    """(B(h), φ₁, ρ_predictor, ρ_corrector) for one step; rks are r_1 … r_{order−1} (module docstring)."""
    hh = -h if predict_x0 else h
    phi_1 = math.expm1(hh)
    B_h = hh if variant == "bh1" else math.expm1(hh)
    g = phi_1 / hh - 1
    R, b, fact = [], [], 1
    r = [*rks, 1.0]
    for n in range(1, order + 1):
        R.append([rk ** (n - 1) for rk in r])
        b.append(g * fact / B_h)
        fact *= n + 1
        g = g / hh - 1 / fact
    R_t, b_t = torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    rhos_p = None
    if rks:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(R_t[:-1, :-1], b_t[:-1]).tolist()
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R_t, b_t).tolist()
    return B_h, phi_1, rhos_p, rhos_c


@torch.no_grad()
def unipc(model, x, sigmas, *, extra_args=None, callback=None, disable=None, dtype=None, stats=None,
          variant: str = "bh2", max_order: int = 3, predict_x0: bool = True, lower_order_final: bool = True,
          afs: bool = False):
    """UniPC (bh1/bh2) predictor–corrector, 1 NFE/step (+1 when the grid has fewer steps than max_order: the
    corrector then also runs on the last step), data (default) or noise prediction, no thresholding.

    A step to σ' = 0 returns the data prediction (no corrector there). See the module docstring for the rule.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} must be 'bh1' or 'bh2'")
    if max_order not in (1, 2, 3):
        raise ConfigError(f"max_order={max_order!r} must be 1, 2 or 3")
    run = Run(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, dtype=dtype, stats=stats)
    x, sigmas = run.x, run.sigmas
    grid = [float(s) for s in sigmas]

    def output(x, i, denoised):
        return denoised if predict_x0 else to_d(x, sigmas[i], denoised)

    denoised = afs_denoised(x, sigmas[0]) if afs else run.denoise(x, sigmas[0], 0)
    run.report(0, x, sigmas[0], sigmas[0], denoised)
    ms, idx = [output(x, 0, denoised)], [0]  # model outputs and their grid indices, oldest first
    for i in run.indices():
        sigma_next = grid[i + 1]
        corrector = i + 1 < max_order or i != run.steps - 1
        order = step_order(i, run.steps, max_order, lower_order_final)
        m0, s0 = ms[-1], grid[idx[-1]]
        if sigma_next == 0:
            x = m0 if predict_x0 else x - s0 * m0  # h = ∞: the exponential integrator lands on D.
            continue
        h = math.log(s0 / sigma_next)
        rks = [math.log(s0 / grid[idx[-(k + 1)]]) / h for k in range(1, order)]
        d1s = [(ms[-(k + 1)] - m0) / rk for k, rk in zip(range(1, order), rks)]
        B_h, phi_1, rhos_p, rhos_c = unipc_coefficients(rks, h, order, variant=variant, predict_x0=predict_x0)
        scale = B_h if predict_x0 else sigma_next * B_h
        x_base = sigma_next / s0 * x - phi_1 * m0 if predict_x0 else x - sigma_next * phi_1 * m0
        x_pred = x_base
        if rhos_p is not None:
            x_pred = x_base - scale * sum(rho * d for rho, d in zip(rhos_p, d1s))
        if not corrector:
            x = x_pred
            continue
        denoised = run.denoise(x_pred, sigmas[i + 1], i + 1)
        run.report(i + 1, x_pred, sigmas[i + 1], sigmas[i + 1], denoised)
        m_next = output(x_pred, i + 1, denoised)
        corr = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s)) + rhos_c[-1] * (m_next - m0)
        x = x_base - scale * corr
        ms, idx = [*ms, m_next][-max_order:], [*idx, i + 1][-max_order:]
    return run.done(x)


def _nfe_unipc(sigmas: torch.Tensor, afs: bool = False, max_order: int = 3) -> int:
    """1 per step; +1 when there are fewer steps than max_order (and the grid does not end at 0); −1 with AFS."""
    steps = len(sigmas) - 1
    return steps - int(afs) + int(steps < max_order and float(sigmas[-1]) > 0)


def _register() -> None:
    from diffspace.samplers.registry import register

    register("unipc", unipc, _nfe_unipc, order=3,
             summary="UniPC predictor-corrector (bh1/bh2, data or noise prediction), 1 NFE/step, order max_order "
                     "(default 3) plus one from the corrector; no thresholding.")


_register()
