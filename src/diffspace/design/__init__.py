"""The independent design choices of EDM's Table 1: schedules σ(t), scalings s(t), grids and preconditioners."""

from diffspace.design.schedules import (
    LinearSchedule,
    NoScaling,
    Scaling,
    Schedule,
    VESchedule,
    VPScaling,
    VPSchedule,
    get_scaling,
    get_schedule,
)

__all__ = [
    "LinearSchedule", "NoScaling", "Schedule", "Scaling", "VESchedule", "VPScaling", "VPSchedule",
    "get_scaling", "get_schedule",
]
