"""Transforms in the ITK/ANTs file conventions (LPS millimetres, resampling direction).

* ``displacement.nii.gz``: the ANTs ``Warp.nii.gz`` layout: a 5-D NIfTI ``(I, J, K, 1, 3)`` with
  intent ``vector`` (1007), on the fixed grid, vectors in **LPS** mm; fixed point ``x`` maps to
  ``x + u(x)`` in the moving image. ITK/SimpleITK/ANTs read it as a ``DisplacementFieldTransform``.
* ``transform.h5``: an ITK composite transform (affine + displacement field), written by SimpleITK.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from svreg_core.conventions import RAS_TO_LPS, ras_to_lps_vectors
from svreg_core.image.grid import Grid

NIFTI_INTENT_VECTOR = 1007


def displacement_nifti(displacement_ras: np.ndarray, grid: Grid) -> nib.Nifti1Image:
    """5-D ITK-convention NIfTI of a RAS mm displacement ``(I, J, K, 3)`` on ``grid``."""
    lps = ras_to_lps_vectors(np.asarray(displacement_ras, dtype=np.float32))
    nii = nib.Nifti1Image(lps[:, :, :, None, :].astype(np.float32), grid.affine)
    nii.set_sform(grid.affine, code=1)
    nii.set_qform(grid.affine, code=1)
    nii.header.set_intent(NIFTI_INTENT_VECTOR)
    nii.header.set_xyzt_units("mm")
    return nii


def sitk_displacement_image(displacement_ras: np.ndarray, grid: Grid) -> sitk.Image:
    """SimpleITK vector image (LPS vectors, LPS geometry) of a RAS mm displacement on ``grid``."""
    lps = ras_to_lps_vectors(np.asarray(displacement_ras, dtype=np.float64))
    img = sitk.GetImageFromArray(np.ascontiguousarray(lps.transpose(2, 1, 0, 3)), isVector=True)
    img.SetSpacing(tuple(float(s) for s in grid.spacing))
    img.SetOrigin(tuple(float(v) for v in RAS_TO_LPS @ grid.affine[:3, 3]))
    img.SetDirection(tuple(float(v) for v in (RAS_TO_LPS @ grid.direction).ravel()))
    return img


def sitk_affine(affine_ras: np.ndarray) -> sitk.AffineTransform:
    """ITK affine (LPS) equal to a 4x4 RAS->RAS matrix."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ np.asarray(affine_ras, dtype=np.float64) @ flip
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(lps[:3, :3].ravel()))
    tx.SetTranslation(tuple(lps[:3, 3]))
    return tx


def composite_transform(affine_ras: np.ndarray, deformable_ras: np.ndarray, grid: Grid) -> sitk.CompositeTransform:
    """ITK composite ``T(x) = A(x + u(x))``: ``u`` (RAS mm on ``grid``) applied first, then ``A``.

    ITK applies the transforms of a composite last-added first, so ``A`` is added first.
    """
    field = sitk.DisplacementFieldTransform(sitk_displacement_image(deformable_ras, grid))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(sitk_affine(affine_ras))
    composite.AddTransform(field)
    return composite


def write_transform(path: str | Path, affine_ras: np.ndarray, deformable_ras: np.ndarray, grid: Grid) -> Path:
    """Write :func:`composite_transform` as an ITK HDF5 transform file."""
    sitk.WriteTransform(composite_transform(affine_ras, deformable_ras, grid), str(path))
    return Path(path)
