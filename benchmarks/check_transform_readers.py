"""transform.h5 with a float32 field (stored, or gzip-compressed): sizes, write time, and readers beyond SimpleITK.

    .venv/bin/python benchmarks/check_transform_readers.py [--ants-python .bench/venvs/ants/bin/python]
        [--points 2000] [--gzip-level 0-9]

The data: a 1 mm brain grid (the MNI152 template shipped in the PyPI package
``nilearn``, ``MNI152_FILE_PATH``, 197x233x189) carries a random smooth displacement (cubic
upsampling of noise on an 8 mm lattice, at most 8 mm) after which a rotation + translation applies,
as in ``svreg register``'s composite. The old file (``sitk.WriteTransform``, float64, uncompressed)
and the new one (:func:`svreg_core.outputs.itk.write_transform`, h5py, its field stored as svreg writes it by
default, or compressed at ``--gzip-level``) are both written and timed.

Both files are then read by SimpleITK (``TransformPoint``, ``Resample`` of the template), by Slicer's
``vtkMRMLTransformStorageNode`` (``slicer-core``, RAS; grid interpolation set to linear as ITK's)
and, in a child process with the ANTs venv of the benchmarks (antspyx), by ``ants.read_transform``
(float and double), ``ants.apply_transforms_to_points`` and ``ants.apply_transforms`` of the template.
Printed: sizes, times, and for every reader the largest difference new vs old file and reader vs
SimpleITK. A reader that is not installed is reported as skipped. Not a CI test (the ANTs venv is
not there); the CI tests are in Testing/svreg_core/outputs/test_itk.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from svreg_core.conventions import RAS_TO_LPS
from svreg_core.image.grid import Grid
from svreg_core.outputs.itk import composite_transform, write_transform

REPO = Path(__file__).resolve().parents[1]
FLIP = np.diag(RAS_TO_LPS)

# run by the ANTs venv's python: argv = old.h5 new.h5 points_lps.npy moving.nii.gz result.json
ANTS_SCRIPT = r"""
import json, sys
import ants, numpy as np, pandas as pd
old, new, points, moving, result = sys.argv[1:6]
pts = np.load(points)
out = {"ants": ants.__version__}
for precision in ("float", "double"):
    for name, path in (("old", old), ("new", new)):
        tx = ants.read_transform(path, precision=precision)
        out[f"read_{precision}_{name}_type"] = tx.transform_type
        out[f"read_{precision}_{name}"] = [list(tx.apply_to_point(tuple(p))) for p in pts]
for name, path in (("old", old), ("new", new)):
    df = pd.DataFrame(pts, columns=["x", "y", "z"])
    out[f"points_{name}"] = ants.apply_transforms_to_points(3, df, [path]).to_numpy().tolist()
    img = ants.image_read(moving)
    warped = ants.apply_transforms(fixed=img, moving=img, transformlist=[path], interpolator="linear")
    np.save(result + f".{name}.npy", warped.numpy())
json.dump(out, open(result, "w"))
"""


def synthetic_case(folder: Path, gzip_level: int) -> tuple[Path, Path, dict]:
    """Write the old and new files of a random smooth field on the nilearn MNI152 grid."""
    from nilearn.datasets import MNI152_FILE_PATH

    img = nib.load(MNI152_FILE_PATH)
    grid = Grid(img.shape[:3], img.affine)
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(3, *(np.asarray(grid.shape) // 8 + 2)))
    u = np.stack([ndimage.zoom(c, np.asarray(grid.shape) / c.shape, order=3, grid_mode=True, mode="grid-constant")
                  for c in coarse], axis=-1)[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    u = (u * 8.0 / np.abs(u).max()).astype(np.float32)
    angle = np.deg2rad(4.0)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine[:3, 3] = [2.0, -3.0, 1.5]
    old, new = folder / "old.h5", folder / "new.h5"
    t = time.perf_counter()
    sitk.WriteTransform(composite_transform(affine, u, grid), str(old))
    t_old = time.perf_counter() - t
    t = time.perf_counter()
    write_transform(new, affine, u, grid, gzip_level=gzip_level)
    t_new = time.perf_counter() - t
    info = {"data": f"random smooth field (max 8 mm) on the nilearn MNI152 1 mm grid {grid.shape}",
            "write_old_s": t_old, "write_new_s": t_new}
    return old, new, info


def field_points(path: Path, n: int) -> np.ndarray:
    """``n`` random LPS points inside the grid of the field in ``path``."""
    composite = sitk.CompositeTransform(sitk.ReadTransform(str(path)))
    field = next(sitk.DisplacementFieldTransform(composite.GetNthTransform(i)).GetDisplacementField()
                 for i in range(composite.GetNumberOfTransforms())
                 if composite.GetNthTransform(i).GetName() == "DisplacementFieldTransform")
    size = np.asarray(field.GetSize(), dtype=float)
    cont = np.random.default_rng(1).uniform(1.0, size - 2.0, size=(n, 3))
    return np.array([field.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in cont])


def dataset_summary(path: Path) -> dict:
    """dtype, filters and chunks of each displacement-field parameter dataset."""
    out = {}
    with h5py.File(path, "r") as f:
        for index, group in f["TransformGroup"].items():
            if "TransformParameters" in group:
                d = group["TransformParameters"]
                out[index] = {"type": group["TransformType"][0].decode(), "dtype": str(d.dtype),
                              "compression": d.compression, "shuffle": d.shuffle, "chunks": d.chunks}
    return out


def slicer_points(path: Path, points_ras: np.ndarray) -> np.ndarray | None:
    """Slicer's reading of ``path`` (FromParent, RAS, linear grid interpolation), or None."""
    try:
        import slicer
    except ImportError:
        return None
    if not hasattr(slicer, "vtkMRMLTransformStorageNode"):
        return None
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", path.stem)
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RuntimeError(f"Slicer could not read {path}")
    general = node.GetTransformFromParent()
    for i in range(general.GetNumberOfConcatenatedTransforms()):
        part = general.GetConcatenatedTransform(i)
        if hasattr(part, "SetInterpolationModeToLinear"):
            part.SetInterpolationModeToLinear()
    out = np.array([general.TransformPoint(tuple(p)) for p in points_ras])
    scene.Clear(1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ants-python", type=Path, default=REPO / ".bench" / "venvs" / "ants" / "bin" / "python")
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--gzip-level", type=int, choices=range(10), default=0,
                    help="the new file's field: 0 stored (svreg's default), 1-9 shuffled + gzip at that level")
    args = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        old, new, info = synthetic_case(folder, args.gzip_level)
        mib = 2.0**20
        print(f"data: {info.pop('data')}")
        print(f"size: old {old.stat().st_size / mib:.1f} MiB, new {new.stat().st_size / mib:.1f} MiB "
              f"({new.stat().st_size / old.stat().st_size:.1%}); times: "
              + ", ".join(f"{k} {v:.2f}" for k, v in info.items()))
        print(f"new datasets: {json.dumps(dataset_summary(new))}")

        points = field_points(old, args.points)
        tx_old, tx_new = sitk.ReadTransform(str(old)), sitk.ReadTransform(str(new))
        ref = np.array([tx_old.TransformPoint(tuple(p)) for p in points])
        got = np.array([tx_new.TransformPoint(tuple(p)) for p in points])
        print(f"SimpleITK TransformPoint, new vs old: max {np.abs(got - ref).max():.3g} mm "
              f"(points moved up to {np.abs(ref - points).max():.1f} mm)")

        slicer_new = slicer_points(new, points * FLIP)
        if slicer_new is None:
            print("Slicer: skipped (slicer-core not importable)")
        else:
            slicer_old = slicer_points(old, points * FLIP)
            print(f"Slicer storage node (RAS), new vs old: max {np.abs(slicer_new - slicer_old).max():.3g} mm; "
                  f"new vs SimpleITK: max {np.abs(slicer_new * FLIP - ref).max():.3g} mm")

        # the template resampled through each file by SimpleITK: the reference for ANTs' warp
        from nilearn.datasets import MNI152_FILE_PATH

        moving = folder / "moving.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(nib.load(MNI152_FILE_PATH).dataobj, dtype=np.float32),
                                 nib.load(MNI152_FILE_PATH).affine), str(moving))
        image = sitk.ReadImage(str(moving), sitk.sitkFloat32)
        warped = {name: sitk.GetArrayFromImage(sitk.Resample(image, image, tx, sitk.sitkLinear, 0.0,
                                                             sitk.sitkFloat32))
                  for name, tx in (("old", tx_old), ("new", tx_new))}
        print(f"SimpleITK Resample of the template, new vs old: max {np.abs(warped['new'] - warped['old']).max():.3g} "
              f"(intensities up to {np.abs(warped['old']).max():.0f})")

        if not args.ants_python.is_file():
            print(f"ANTs: skipped ({args.ants_python} not found)")
            return 0
        np.save(folder / "points.npy", points)
        result = folder / "ants.json"
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", OMP_NUM_THREADS="1")
        subprocess.run([str(args.ants_python), "-c", ANTS_SCRIPT, str(old), str(new), str(folder / "points.npy"),
                        str(moving), str(result)], check=True, env=env)
        out = json.loads(result.read_text())
        print(f"antspyx {out['ants']}:")
        for precision in ("float", "double"):
            a_old, a_new = np.array(out[f"read_{precision}_old"]), np.array(out[f"read_{precision}_new"])
            print(f"  read_transform(precision={precision}) type {out[f'read_{precision}_new_type']}: new vs old "
                  f"max {np.abs(a_new - a_old).max():.3g} mm, new vs SimpleITK max {np.abs(a_new - ref).max():.3g} mm")
        p_old, p_new = np.array(out["points_old"]), np.array(out["points_new"])
        print(f"  apply_transforms_to_points: new vs old max {np.abs(p_new - p_old).max():.3g} mm, "
              f"new vs SimpleITK max {np.abs(p_new - ref).max():.3g} mm")
        # ANTs arrays are (x, y, z) of the ITK image; SimpleITK's are (z, y, x)
        ants_old = np.load(f"{result}.old.npy").transpose(2, 1, 0)
        ants_new = np.load(f"{result}.new.npy").transpose(2, 1, 0)
        print(f"  apply_transforms of the template: new vs old max {np.abs(ants_new - ants_old).max():.3g}, "
              f"new vs SimpleITK Resample max {np.abs(ants_new - warped['new']).max():.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
