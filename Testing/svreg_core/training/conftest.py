"""Tiny head-like label maps for the training-data tests (files are written with ``geo.save_nifti``)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def ellipsoid_labels(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Nested random ellipsoids labelled, outside in, 530 (scalp), 24 (CSF), 2, 41 and 17 (int16)."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape, dtype=np.float64).transpose(1, 2, 3, 0)
    centre = (np.asarray(shape) - 1) / 2.0 + rng.uniform(-1, 1, 3)
    labels = np.zeros(shape, np.int16)
    for value, radius in ((530, 0.45), (24, 0.38), (2, 0.32), (41, 0.22), (17, 0.1)):
        radii = radius * np.asarray(shape) * rng.uniform(0.9, 1.1, 3)
        labels[(((ijk - centre) / radii) ** 2).sum(-1) <= 1.0] = value
    return labels


@pytest.fixture(scope="session")
def make_labels() -> Callable[[tuple[int, int, int], int], np.ndarray]:
    """:func:`ellipsoid_labels`."""
    return ellipsoid_labels
