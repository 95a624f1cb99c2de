"""Prepare the benchmark data in ``.bench/data/<res>mm/`` from ``../shared/data/brain_pair``.

* 1 mm: the shared files are symlinked as they are (never copied into the repository tree).
* coarser (2 mm, 4 mm, ...): each image is resampled on its **own** field of view onto a grid of the
  requested isotropic spacing with the same orientation and the same physical extent (the new voxel
  ``0`` is centred where the old voxels ``0 .. f-1`` are, ``f = new / old spacing``; the new size is
  ``ceil(n / f)``). Intensity images get a Gaussian anti-alias filter of ``sigma = (f - 1) / 2`` old
  voxels (scikit-image's rule) and linear interpolation; label maps nearest neighbour, no smoothing.
  The pre-aligned ``moving*`` images stay on the (resampled) fixed grid, since the same new grid is
  derived from identical input grids.

Run with the main venv (numpy, scipy, nibabel). Idempotent: existing outputs are kept.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

IMAGES = ("fixed.nii.gz", "moving.nii.gz", "moving_native.nii.gz")
LABELS = ("fixed_seg.nii.gz", "moving_seg.nii.gz", "moving_native_seg.nii.gz")


def res_name(res: float) -> str:
    return f"{res:g}mm"


def downsampled_grid(img: nib.Nifti1Image, res: float) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """New shape, new affine and the per-axis factor ``f`` for isotropic spacing ``res`` mm."""
    old_sp = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    f = res / old_sp
    shape = tuple(int(math.ceil(n / fa - 1e-6)) for n, fa in zip(img.shape[:3], f))
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f)
    scale[:3, 3] = (f - 1.0) / 2.0  # centre of new voxel 0 in old index units
    return shape, img.affine @ scale, f


def resample(img: nib.Nifti1Image, res: float, is_label: bool) -> nib.Nifti1Image:
    shape, affine, f = downsampled_grid(img, res)
    data = np.asarray(img.dataobj)
    if is_label:
        data = np.rint(data).astype(np.int32)
        order = 0
    else:
        data = data.astype(np.float32)
        sigma = np.maximum(0.0, (f - 1.0) / 2.0)
        if np.any(sigma > 0):
            data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
        order = 1
    # new index n -> old index f * n + (f - 1) / 2 (diagonal map: affine_transform with matrix=f).
    out = ndimage.affine_transform(data, np.diag(f), offset=(f - 1.0) / 2.0, output_shape=shape,
                                   order=order, mode="constant", cval=0.0, prefilter=False)
    if is_label:
        out = out.astype(np.int16 if out.max() < 32768 and out.min() >= -32768 else np.int32)
    else:
        out = out.astype(np.float32)
    new = nib.Nifti1Image(out, affine)
    new.set_qform(affine, code=1)
    new.set_sform(affine, code=1)
    new.header.set_xyzt_units("mm")
    return new


def prepare(source: Path, dest_root: Path, res: float, verbose: bool = True) -> Path:
    """Create ``dest_root/<res>mm`` (skipping files already there); returns its path."""
    dest = dest_root / res_name(res)
    dest.mkdir(parents=True, exist_ok=True)
    for name in IMAGES + LABELS:
        src, dst = source / name, dest / name
        if not src.exists():
            raise FileNotFoundError(f"missing input {src}")
        if dst.exists() or dst.is_symlink():
            if dst.exists():
                continue
            dst.unlink()  # dangling symlink
        img = nib.load(str(src))
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
        if np.allclose(zooms, res, atol=1e-6):
            dst.symlink_to(src.resolve())
        else:
            tmp = dst.with_name(dst.name + ".tmp.nii.gz")
            nib.save(resample(img, res, name in LABELS), str(tmp))
            tmp.rename(dst)
        if verbose:
            print(f"prepare: {dst}")
    meta = dest / "grid.json"
    if not meta.exists():
        f = nib.load(str(dest / "fixed.nii.gz"))
        meta.write_text(json.dumps({"resolution_mm": res, "fixed_shape": list(f.shape[:3]),
                                    "fixed_affine": np.round(f.affine, 6).tolist()}, indent=1) + "\n")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_pair")
    ap.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / ".bench" / "data")
    ap.add_argument("--resolutions", type=float, nargs="+", default=[2.0, 1.0])
    a = ap.parse_args()
    for r in a.resolutions:
        print(prepare(a.source, a.dest, r))


if __name__ == "__main__":
    main()
