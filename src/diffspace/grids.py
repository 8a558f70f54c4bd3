"""Noise-level grids (re-exported from diffspace.design.grids)."""

from diffspace.design.grids import check, custom, edm, exponential, iddpm, iddpm_table, li, ve, vp  # noqa: F401

__all__ = ["check", "custom", "edm", "exponential", "iddpm", "iddpm_table", "li", "ve", "vp"]
