"""What an image's intensities say about its modality."""
from __future__ import annotations

import numpy as np

#: Hounsfield units at or below which a CT voxel is air or lung (water 0 HU, air −1000 HU).
CT_AIR_HU = -500.0

#: Share of voxels at or below :data:`CT_AIR_HU` from which an image is taken for a CT in Hounsfield units (the air
#: around the body, or the lungs, of any CT covers far more; MR and PET intensities are not negative).
CT_AIR_FRACTION = 0.02


def looks_like_ct(data: np.ndarray) -> bool:
    """Whether ``data`` reads as a CT in Hounsfield units: at least :data:`CT_AIR_FRACTION` of its voxels at or
    below :data:`CT_AIR_HU`."""
    return bool(np.count_nonzero(np.asarray(data) <= CT_AIR_HU) >= CT_AIR_FRACTION * np.size(data))
