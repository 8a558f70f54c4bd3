"""Denoisers D(x; σ): exact ones for known data, and the Denoiser contract (see DESIGN.md)."""

from diffspace.denoisers.analytic import Gaussian, GaussianMixture
from diffspace.denoisers.empirical import Empirical

__all__ = ["Empirical", "Gaussian", "GaussianMixture"]
