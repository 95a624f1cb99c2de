"""Evaluate one registration run identically for every tool (run with the main venv).

Inputs of a run (all on the fixed grid): a warped label map (nearest-neighbour), and a displacement
``displacement.nii.gz`` in the ITK convention (5-D NIfTI ``(I, J, K, 1, 3)``, **LPS** mm, a fixed
point ``x`` maps to ``x + u(x)`` in moving space). Metrics come from :mod:`svreg_core.metrics`:

* mean Dice and mean HD95 (mm) over the evaluation labels present in both the fixed and the moving
  label maps (the 30 VoxelMorph/TransMorph structures listed in the data README);
* % voxels with ``det J <= 0`` (central differences) and NDV % (10-tetrahedra non-diffeomorphic
  volume), both inside the brain mask ``moving > 0`` on the fixed grid (the pre-aligned moving
  image; for the native pair the same subject's pre-aligned image), NDV additionally cropped by one
  voxel (METHOD §6). Unmasked values are stored as well;
* SDlogJ (std of log det J, clipped, inside the same mask) and the mean Dice with the labels warped
  the TransMorph/MIR way — one-hot trilinear + argmax (``svreg_core.image.sampling.sample_labels``)
  through the tool's displacement file — so every tool is scored with both label warps;
* a consistency check: the moving labels resampled through the displacement with SimpleITK
  (``DisplacementFieldTransform``, nearest neighbour) against the tool's own warped labels (mean
  Dice over the evaluation labels; > 0.98 means the displacement file really is the tool's mapping
  in the ITK convention).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from svreg_core import metrics  # noqa: E402
from svreg_core.conventions import ras_to_lps_vectors  # noqa: E402

#: FreeSurfer codes of the 30 evaluation structures (data README).
EVAL_LABELS = (2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31, 41, 42, 43, 46, 47, 49,
               50, 51, 52, 53, 54, 60, 63)


def uniform_at_equal_sdlogj(rows: list[dict], key: str) -> list[tuple[dict, float]]:
    """SPR against the uniform regulariser at equal smoothness: for each row with ``variant == "spr"`` whose
    ``sdlogj`` lies inside the range of the ``"uniform"`` rows, that row and the uniform rows' ``key``
    interpolated linearly in SDlogJ at its ``sdlogj`` (SPR rows in the order given)."""
    uniform = sorted((r for r in rows if r["variant"] == "uniform"), key=lambda r: r["sdlogj"])
    xs = [r["sdlogj"] for r in uniform]
    return [(r, float(np.interp(r["sdlogj"], xs, [u[key] for u in uniform]))) for r in rows
            if r["variant"] == "spr" and len(xs) >= 2 and xs[0] <= r["sdlogj"] <= xs[-1]]


def load_labels(path: str | Path) -> np.ndarray:
    return np.rint(np.asarray(nib.load(str(path)).dataobj)).astype(np.int32)


def eval_labels(fixed_seg: np.ndarray, moving_seg: np.ndarray) -> list[int]:
    """The evaluation labels present in both the fixed and the moving label maps."""
    f, m = set(np.unique(fixed_seg).tolist()), set(np.unique(moving_seg).tolist())
    return [lab for lab in EVAL_LABELS if lab in f and lab in m]


def load_displacement_ras(path: str | Path, fixed_img: nib.Nifti1Image) -> np.ndarray:
    """Read an ITK-convention displacement file and return ``(I, J, K, 3)`` RAS mm on the fixed grid."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.shape != tuple(fixed_img.shape[:3]) + (3,):
        raise ValueError(f"{path}: displacement shape {data.shape} is not fixed grid {fixed_img.shape[:3]} x 3")
    if not np.allclose(img.affine, fixed_img.affine, atol=1e-3):
        raise ValueError(f"{path}: displacement grid differs from the fixed grid")
    return ras_to_lps_vectors(data)  # the LPS<->RAS flip is its own inverse


def brain_mask(mask_image: str | Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask_image is None:
        return None
    m = np.asarray(nib.load(str(mask_image)).dataobj) > 0
    if m.shape[:3] != tuple(shape):
        raise ValueError(f"mask image {mask_image} is not on the fixed grid")
    return m


def sitk_consistency(displacement_path: str | Path, moving_seg_path: str | Path, fixed_path: str | Path,
                     warped: np.ndarray, labels: list[int]) -> float:
    """Mean Dice between the tool's warped labels and SimpleITK's resampling through the displacement."""
    import SimpleITK as sitk

    fixed = sitk.ReadImage(str(fixed_path))
    disp = sitk.ReadImage(str(displacement_path))
    if disp.GetNumberOfComponentsPerPixel() != 3 or disp.GetDimension() != 3:
        raise ValueError(f"SimpleITK reads {displacement_path} as {disp.GetDimension()}-D with "
                         f"{disp.GetNumberOfComponentsPerPixel()} components, not a 3-D vector field")
    tx = sitk.DisplacementFieldTransform(sitk.Cast(disp, sitk.sitkVectorFloat64))
    seg = sitk.ReadImage(str(moving_seg_path))
    res = sitk.Resample(seg, fixed, tx, sitk.sitkNearestNeighbor, 0.0, seg.GetPixelID())
    arr = np.rint(sitk.GetArrayFromImage(res)).astype(np.int32).transpose(2, 1, 0)
    d = metrics.dice(warped, arr, labels)
    return float(np.mean(list(d.values()))) if d else float("nan")


def linear_label_dice(displacement_ras: np.ndarray, fixed_img: nib.Nifti1Image, fixed_seg: np.ndarray,
                      moving_seg_path: str | Path, labels: list[int]) -> float:
    """Mean Dice of the moving labels warped one-hot trilinear + argmax through ``x ↦ x + d(x)`` (RAS mm)."""
    import torch

    from svreg_core.image import Grid
    from svreg_core.image.resample import world_to_source_normalized
    from svreg_core.image.sampling import sample_labels

    seg_img = nib.load(str(moving_seg_path))
    moving_seg = torch.as_tensor(load_labels(moving_seg_path))
    points = Grid(fixed_seg.shape, fixed_img.affine).world_points() + displacement_ras
    coords = world_to_source_normalized(torch.as_tensor(points), Grid(moving_seg.shape, seg_img.affine)).float()
    warped = sample_labels(moving_seg, coords[None]).numpy().astype(np.int32)
    d = metrics.dice(fixed_seg, warped, labels)
    return float(np.mean([d.get(lab, 0.0) for lab in labels])) if labels else float("nan")


def evaluate_run(fixed_path: str | Path, fixed_seg_path: str | Path, moving_seg_path: str | Path,
                 warped_path: str | Path, displacement_path: str | Path | None,
                 mask_image: str | Path | None = None, consistency: bool = True) -> dict:
    """Return the metrics of one run as a plain dict (NaN-free: missing values are None)."""
    fixed_img = nib.load(str(fixed_path))
    fixed_seg = load_labels(fixed_seg_path)
    moving_seg = load_labels(moving_seg_path)
    warped = load_labels(warped_path)
    if warped.shape != fixed_seg.shape:
        raise ValueError(f"{warped_path}: shape {warped.shape} is not the fixed grid {fixed_seg.shape}")
    labels = eval_labels(fixed_seg, moving_seg)
    spacing = tuple(float(z) for z in fixed_img.header.get_zooms()[:3])
    d = metrics.dice(fixed_seg, warped, labels)
    h = metrics.hd95(fixed_seg, warped, labels, spacing)
    # A label lost entirely by the warp scores Dice 0 (metrics.dice scores a listed label present in either map).
    dice_all = {lab: d.get(lab, 0.0) for lab in labels}
    in_warped = set(np.unique(warped).tolist())
    out = {
        "n_labels": len(labels),
        "labels_missing_after_warp": [lab for lab in labels if lab not in in_warped],
        "mean_dice": float(np.mean(list(dice_all.values()))) if labels else None,
        "mean_hd95_mm": float(np.mean([v for v in h.values() if np.isfinite(v)])) if h else None,
        "dice": {str(k): round(v, 5) for k, v in dice_all.items()},
        "hd95_mm": {str(k): round(float(v), 4) for k, v in h.items()},
    }
    if displacement_path is not None and Path(displacement_path).exists():
        disp = load_displacement_ras(displacement_path, fixed_img)
        mask = brain_mask(mask_image, fixed_seg.shape)
        det = metrics.jacobian_determinant(disp, fixed_img.affine)
        out["pct_detj_le0"] = metrics.folding_percent(det, mask)
        out["ndv_pct"] = metrics.ndv_percent(disp, fixed_img.affine, mask)
        out["sdlogj"] = metrics.sdlogj(det, mask)
        out["mean_dice_linear"] = linear_label_dice(disp, fixed_img, fixed_seg, moving_seg_path, labels)
        out["pct_detj_le0_fov"] = metrics.folding_percent(det, None)
        out["ndv_pct_fov"] = metrics.ndv_percent(disp, fixed_img.affine, None)
        out["mask"] = "moving>0 on the fixed grid" if mask is not None else "whole grid"
        out["max_displacement_mm"] = float(np.sqrt((disp ** 2).sum(-1)).max())
        if consistency:
            try:
                out["disp_consistency_dice"] = sitk_consistency(displacement_path, moving_seg_path,
                                                                fixed_path, warped, labels)
            except Exception as exc:  # report, do not crash the benchmark
                out["disp_consistency_dice"] = None
                out["disp_consistency_error"] = f"{type(exc).__name__}: {exc}"
    else:
        out.update(pct_detj_le0=None, ndv_pct=None, sdlogj=None, mean_dice_linear=None, disp_consistency_dice=None)
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Evaluate one run's outputs (prints JSON).")
    ap.add_argument("--fixed", required=True)
    ap.add_argument("--fixed-seg", required=True)
    ap.add_argument("--moving-seg", required=True, help="the moving label map that was warped")
    ap.add_argument("--warped", required=True)
    ap.add_argument("--displacement")
    ap.add_argument("--mask-image", help="image whose > 0 voxels (fixed grid) are the Jacobian/NDV mask")
    a = ap.parse_args()
    print(json.dumps(evaluate_run(a.fixed, a.fixed_seg, a.moving_seg, a.warped, a.displacement,
                                  a.mask_image), indent=2))


if __name__ == "__main__":
    main()
