"""Spatial transforms on explicit grids: warping, composition, velocity fields."""
from svreg_core.transforms.svf import integrate_velocity, inverse_displacement
from svreg_core.transforms.warp import compose, displaced_coordinates, warp

__all__ = ["compose", "displaced_coordinates", "integrate_velocity", "inverse_displacement", "warp"]
