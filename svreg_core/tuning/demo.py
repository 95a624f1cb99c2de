"""A tiny labelled validation set built from real data shipped with nilearn (the ``demo`` extra).

The MNI152 2009a template and its grey/white-matter probability maps (bundled inside the nilearn
package, read with its ``load_mni152_*`` functions: nothing is downloaded) are smoothed and resampled
to a coarse grid cropped to the brain (6 mm: 28x34x28 voxels). Labels: 1 = grey matter, 2 = white
matter. Each pair's fixed image is the template; its moving image is the template pulled through a
known smooth displacement (a sum of sinusoids of a few millimetres), the labels warped the same way
(nearest neighbour); landmarks: random points of the brain and the moving points that correspond to them
exactly (the displacement inverted by fixed-point iteration). Used by the tuning tests and
``scripts/tune_demo.sh``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from svreg_core.conventions import map_points
from svreg_core.errors import InputError
from svreg_core.image import Image, save_image


def template_volumes(spacing: float = 6.0, margin_mm: float = 12.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1, labels, affine)`` of the MNI152 template on a ``spacing``-mm grid cropped to the brain."""
    from scipy import ndimage

    try:
        from nilearn import datasets
    except ImportError:
        raise InputError("the demo data needs nilearn (pip install 'svreg-core[demo]').") from None
    imgs = {"t1": datasets.load_mni152_template(resolution=1), "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1)}  # the 1 mm files, intensities scaled to [0, 1]
    affine = imgs["t1"].affine
    vols = {k: np.asarray(img.dataobj, dtype=np.float32) for k, img in imgs.items()}
    brain = np.argwhere((vols["gm"] + vols["wm"]) > 0.1)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    margin = np.ceil(margin_mm / vox).astype(int)
    lo, hi = np.maximum(brain.min(0) - margin, 0), np.minimum(brain.max(0) + margin + 1, vols["t1"].shape)
    step = spacing / vox
    shape = np.floor((hi - lo) / step).astype(int)
    coords = np.stack(np.meshgrid(*[lo[a] + (np.arange(shape[a]) + 0.5) * step[a] - 0.5 for a in range(3)],
                                  indexing="ij"))
    out = {k: ndimage.map_coordinates(ndimage.gaussian_filter(v, 0.4 * step), coords, order=1, mode="nearest")
           for k, v in vols.items()}
    labels = np.zeros(tuple(shape), np.int32)
    labels[(out["gm"] >= 0.3) & (out["gm"] >= out["wm"])] = 1
    labels[(out["wm"] >= 0.3) & (out["wm"] > out["gm"])] = 2
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] @ np.diag(step)
    new_affine[:3, 3] = affine[:3, :3] @ (lo + 0.5 * step - 0.5) + affine[:3, 3]  # the first sample's centre
    return out["t1"].astype(np.float32), labels, new_affine


def smooth_displacement(shape: tuple[int, ...], amplitude_vox: float, seed: int) -> np.ndarray:
    """A smooth displacement ``(3, I, J, K)`` in voxels: per component, two random low-frequency sinusoids."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) / n for n in shape], indexing="ij")
    disp = np.zeros((3, *shape))
    for c in range(3):
        for _ in range(2):
            k = rng.uniform(0.5, 1.5, size=3) * rng.choice([-1, 1], size=3)
            phase = rng.uniform(0, 2 * np.pi)
            disp[c] += np.sin(2 * np.pi * sum(k[a] * grids[a] for a in range(3)) + phase)
    return (amplitude_vox / 2.0) * disp


def _corresponding_points(fixed_vox: np.ndarray, disp: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Moving-grid voxels ``y`` with ``y + disp(y) = x`` for fixed voxels ``x`` ``(N, 3)``: the moving point that
    shows what the fixed image shows at ``x`` (``moving(y) = fixed(y + disp(y))``). ``disp`` ``(3, I, J, K)``."""
    from scipy import ndimage

    y = fixed_vox.copy()
    for _ in range(iterations):  # a contraction: the displacement's gradient is well below 1
        y = fixed_vox - np.stack([ndimage.map_coordinates(d, y.T, order=1, mode="nearest") for d in disp], 1)
    return y


def _write_points(path: Path, ras: np.ndarray) -> None:
    path.write_text("label,x,y,z\n" + "".join(f"p{n + 1},{x!r},{y!r},{z!r}\n"
                                                for n, (x, y, z) in enumerate(ras.tolist())))


def make_demo_pairs(folder: str | Path, n_pairs: int = 2, *, spacing: float = 6.0, amplitude_mm: float = 6.0,
                    seed: int = 0, landmarks: int = 32) -> list[Path]:
    """Write ``n_pairs`` pair folders (``pair01``...) under ``folder``; return them.

    Each holds ``fixed.nii.gz``, ``moving.nii.gz``, ``fixed_labels.nii.gz``, ``moving_labels.nii.gz`` and
    ``landmarks`` corresponding points (``fixed_landmarks.csv``, ``moving_landmarks.csv``, RAS mm) in the brain.
    """
    from scipy import ndimage

    t1, labels, affine = template_volumes(spacing)
    folder = Path(folder)
    out = []
    base = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in t1.shape], indexing="ij"))
    for p in range(n_pairs):
        disp = smooth_displacement(t1.shape, amplitude_mm / spacing, seed + p)
        coords = base + disp
        moving = ndimage.map_coordinates(t1, coords, order=1, mode="nearest").astype(np.float32)
        moving_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest").astype(np.int32)
        pair = folder / f"pair{p + 1:02d}"
        pair.mkdir(parents=True, exist_ok=True)
        save_image(Image(t1, affine), pair / "fixed.nii.gz")
        save_image(Image(moving, affine), pair / "moving.nii.gz")
        save_image(Image(labels, affine), pair / "fixed_labels.nii.gz", dtype=np.int16)
        save_image(Image(moving_labels, affine), pair / "moving_labels.nii.gz", dtype=np.int16)
        if landmarks:
            brain = np.argwhere(labels > 0).astype(np.float64)
            fixed_vox = brain[np.random.default_rng(seed + p).choice(len(brain), landmarks, replace=False)]
            for name, vox in (("fixed", fixed_vox), ("moving", _corresponding_points(fixed_vox, disp))):
                _write_points(pair / f"{name}_landmarks.csv", map_points(affine, vox))
        out.append(pair)
    return out
