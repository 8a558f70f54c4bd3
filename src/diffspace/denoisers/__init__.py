"""Denoisers D(x; σ): exact ones for known data, and the Denoiser contract."""

from diffspace.denoisers.analytic import Empirical, Gaussian, GaussianMixture

__all__ = ["Empirical", "Gaussian", "GaussianMixture"]
