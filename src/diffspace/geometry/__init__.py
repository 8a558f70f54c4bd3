"""The geometric perspective on diffusion sampling (Chen et al. 2023): trajectories and their measurements."""

from diffspace.geometry.trajectory import Trajectory, record

__all__ = ["Trajectory", "record"]
