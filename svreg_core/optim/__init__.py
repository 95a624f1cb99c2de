"""Optimisers: affine pre-alignment and pairwise SPR deformable registration; parameters and presets."""
from svreg_core.optim.parameters import PRESETS, RegistrationParameters, load_parameters

__all__ = ["PRESETS", "RegistrationParameters", "load_parameters"]
