"""Transforms in the ITK/ANTs file conventions (LPS millimetres, resampling direction).

* ``displacement.nii.gz``: the ANTs ``Warp.nii.gz`` layout: a 5-D NIfTI ``(I, J, K, 1, 3)`` with
  intent ``vector`` (1007), on the fixed grid, vectors in **LPS** mm; fixed point ``x`` maps to
  ``x + u(x)`` in the moving image. ITK/SimpleITK/ANTs read it as a ``DisplacementFieldTransform``.
* ``transform.h5``: an ITK composite transform (affine + displacement field) in ITK's HDF5 layout
  (``/TransformGroup/0`` the composite, ``/1`` the affine, ``/2`` the field; each with
  ``TransformType``, ``TransformFixedParameters``, ``TransformParameters``), LPS. SimpleITK writes it;
  the field's parameters are then stored as float32, chunked, byte-shuffled and gzip-compressed
  (:func:`write_transform`): ITK's reader converts float32 datasets to the reader's precision and
  decompresses them (both standard HDF5 filters), so ITK, SimpleITK, ANTs and Slicer read it as before.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import SimpleITK as sitk

from svreg_core.conventions import RAS_TO_LPS, ras_to_lps_vectors
from svreg_core.image.grid import Grid

NIFTI_INTENT_VECTOR = 1007
#: Elements per HDF5 chunk of a compressed field (1 MiB of float32) and the gzip level.
FIELD_CHUNK_ELEMENTS = 2**18
FIELD_GZIP_LEVEL = 4


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
    """Write :func:`composite_transform` as an ITK HDF5 transform file, the field compressed.

    SimpleITK writes the file (float64 parameters, uncompressed) next to ``path``; it is then copied to
    ``path`` by :func:`compress_transform_file` and removed. svreg's fields are float32, so nothing is
    lost; a float64 field is rounded to float32 (relative 6e-8: under 1e-5 mm below 100 mm).
    """
    path = Path(path)
    handle, plain = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".h5", dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteTransform(composite_transform(affine_ras, deformable_ras, grid), plain)
        compress_transform_file(plain, path)
    finally:
        Path(plain).unlink(missing_ok=True)
    return path


def compress_transform_file(source: str | Path, target: str | Path) -> Path:
    """Copy an ITK HDF5 transform file, storing displacement-field parameters as compressed float32.

    Every object is copied as it is (type strings, fixed parameters, the linear transforms' float64
    parameters, the version strings) except the ``TransformParameters`` of each
    ``DisplacementFieldTransform``: float32, chunks of :data:`FIELD_CHUNK_ELEMENTS`, shuffle + gzip.
    The type string keeps its ``double``: ITK builds the transform in the reader's precision whatever
    the dataset's. ``target`` must differ from ``source``.
    """
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for name, item in src.items():
            if name != "TransformGroup":
                src.copy(item, dst, name)
        group = dst.create_group("TransformGroup")
        for index, transform in src["TransformGroup"].items():
            out = group.create_group(index)
            is_field = transform["TransformType"][0].startswith(b"DisplacementFieldTransform")
            for name, item in transform.items():
                if is_field and name == "TransformParameters":
                    out.create_dataset(name, data=item[()].astype(np.float32),
                                       chunks=(min(FIELD_CHUNK_ELEMENTS, item.size),), shuffle=True,
                                       compression="gzip", compression_opts=FIELD_GZIP_LEVEL)
                else:
                    transform.copy(item, out, name)
    return Path(target)
