"""Tiny label maps for the training tests (files are written with ``geo.save_nifti``)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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


def write_sphere_label_maps(geo, folder: Path, *, split: bool) -> None:
    """Two 16³ label maps ``a_seg``/``b_seg`` (4 mm) in ``folder``: spheres of radius 5 and 6.5 voxels
    labelled 2 (with ``split``, their half ``i > 7.5`` labelled 3) around an inner sphere labelled 4."""
    folder.mkdir()
    ijk = np.indices((16, 16, 16), dtype=np.float64).transpose(1, 2, 3, 0) - 7.5
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -30.0
    for name, radius in (("a", 5.0), ("b", 6.5)):
        labels = np.zeros((16, 16, 16), np.int16)
        sphere = (ijk ** 2).sum(-1) < radius ** 2
        labels[sphere] = 2
        if split:
            labels[sphere & (ijk[..., 0] > 0)] = 3
        labels[((ijk - [1, 1, 0]) ** 2).sum(-1) < 4] = 4
        geo.save_nifti(labels, affine, folder / f"{name}_seg.nii.gz")


@pytest.fixture(scope="session")
def sphere_label_maps() -> Callable[..., None]:
    """:func:`write_sphere_label_maps`."""
    return write_sphere_label_maps
