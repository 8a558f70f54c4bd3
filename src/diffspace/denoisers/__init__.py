"""Denoisers D(x; σ): exact ones for known data, and the Denoiser contract."""

from diffspace.denoisers.analytic import Gaussian, GaussianMixture
from diffspace.denoisers.empirical import Empirical

__all__ = ["Empirical", "Gaussian", "GaussianMixture"]
