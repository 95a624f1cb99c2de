"""Real-data check of the input formats and of ``--initial-transform``: the brain pair registered as it is shipped
(NIfTI), as NRRD, with the moving image as an int16 DICOM series, and with the moving headers moved and ANTs'
affine file given as the initial transform. One command (main venv; ANTs from the peers' venv)::

    .venv/bin/python benchmarks/input_formats.py [--data DIR] [--ants-python .bench/venvs/ants/bin/python] \\
        [--out benchmarks/results/input_formats_DATE.md]

Runs ``svreg register`` (brain-mri preset, affine stage on unless said, nearest-neighbour label warps, 2 threads)
on: (1) the pair as NIfTI; (2) the images and label maps converted to NRRD by SimpleITK (the voxels and geometry
must give a bit-identical run); (3) the moving image as int16 NIfTI (x 1000, rounded) and (4) the same int16 voxels
as a DICOM series written with the tests' DICOM writer (``Testing/svreg_core/conftest.py``: position and
orientation tags computed by hand; ITK stacks the slices along their normal, so the voxel order differs); (5) the
moving image and labels with their headers rotated 10° about S and shifted (15, -10, 5) mm, registered
``--no-affine`` from the ``0GenericAffine.mat`` that ANTs (antspyx, ``type_of_transform="Affine"``) finds for
them. Prints and writes mean Dice over all labels (before -> after), the largest displacement difference against
the run each is compared with, and the RAS matrix read from ANTs' file. Data: ``../shared/data/brain_pair``
(evaluation pair: nothing is tuned here, these are format checks).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
MOVED = np.array([[np.cos(np.radians(10.0)), -np.sin(np.radians(10.0)), 0.0, 15.0],
                  [np.sin(np.radians(10.0)), np.cos(np.radians(10.0)), 0.0, -10.0],
                  [0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
ANTS_SCRIPT = """import ants, shutil, sys
fixed, moving, out = sys.argv[1:4]
reg = ants.registration(ants.image_read(fixed), ants.image_read(moving), type_of_transform="Affine")
shutil.copy(reg["fwdtransforms"][0], out)
"""


def _dicom_writer():
    """The tests' DICOM series writer (hand-computed geometry tags)."""
    spec = importlib.util.spec_from_file_location("svreg_test_helpers", REPO / "Testing" / "svreg_core" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.dicom_series


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def _register(work: Path, name: str, fixed, moving, fixed_seg, moving_seg, *extra: str) -> dict:
    out = work / name
    subprocess.run([sys.executable, "-m", "svreg_core.cli", "register", str(fixed), str(moving), "-o", str(out),
                    "--fixed-labels", str(fixed_seg), "--moving-labels", str(moving_seg), "--label-interpolation",
                    "nearest", "--threads", "2", "--progress", "none", *extra], check=True, cwd=REPO)
    report = json.loads((out / "report.json").read_text())
    field = np.asarray(nib.load(str(out / "displacement.nii.gz")).dataobj)
    return {"name": name, "dice_before": report["metrics"]["dice_mean_before"],
            "dice": report["metrics"]["dice_mean"], "affine_ras": report["affine_ras"], "field": field,
            "moving_orientation": report["inputs"]["moving"]["orientation"], "seconds": report["timing"]["total_s"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brain_pair")
    ap.add_argument("--ants-python", type=Path, default=REPO / ".bench" / "venvs" / "ants" / "bin" / "python")
    ap.add_argument("--out", type=Path, help="also write the table as Markdown")
    args = ap.parse_args(argv)
    d = args.data
    rows, lines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nifti = _register(work, "nifti", d / "fixed.nii.gz", d / "moving.nii.gz", d / "fixed_seg.nii.gz",
                          d / "moving_seg.nii.gz")
        for name in ("fixed", "moving", "fixed_seg", "moving_seg"):
            sitk.WriteImage(sitk.ReadImage(str(d / f"{name}.nii.gz")), str(work / f"{name}.nrrd"), True)
        nrrd = _register(work, "nrrd", *(work / f"{n}.nrrd" for n in ("fixed", "moving", "fixed_seg", "moving_seg")))
        moving = nib.load(str(d / "moving.nii.gz"))
        int16 = np.rint(np.asarray(moving.dataobj, dtype=np.float64) * 1000).astype(np.int16)
        _dicom_writer()(work / "moving_dicom", int16, moving.affine)
        as_int16 = _register(work, "int16-nifti", d / "fixed.nii.gz", _save(int16, moving.affine, work / "m16.nii.gz"),
                             d / "fixed_seg.nii.gz", d / "moving_seg.nii.gz")
        dicom = _register(work, "int16-dicom", d / "fixed.nii.gz", work / "moving_dicom", d / "fixed_seg.nii.gz",
                          d / "moving_seg.nii.gz")
        for name in ("moving", "moving_seg"):
            img = nib.load(str(d / f"{name}.nii.gz"))
            _save(np.asarray(img.dataobj), MOVED @ img.affine, work / f"{name}_moved.nii.gz")
        subprocess.run([str(args.ants_python), "-c", ANTS_SCRIPT, str(d / "fixed.nii.gz"),
                        str(work / "moving_moved.nii.gz"), str(work / "ants.mat")], check=True,
                       env={"OMP_NUM_THREADS": "2", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2"})
        moved = _register(work, "moved+ANTs-initial", d / "fixed.nii.gz", work / "moving_moved.nii.gz",
                          d / "fixed_seg.nii.gz", work / "moving_seg_moved.nii.gz", "--initial-transform",
                          str(work / "ants.mat"), "--no-affine")
        # the moved run maps a fixed point x to MOVED (x + u(x)) of the unmoved run, ideally: compare with that
        fixed_affine = nib.load(str(d / "fixed.nii.gz")).affine
        ijk = np.stack(np.meshgrid(*(np.arange(n) for n in nifti["field"].shape[:3]), indexing="ij"), -1)
        points = ijk @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
        ras = np.array([-1.0, -1.0, 1.0])  # the files hold LPS vectors
        expected = (points + nifti["field"][:, :, :, 0] * ras) @ MOVED[:3, :3].T + MOVED[:3, 3]
        moved["field"] = (points + moved["field"][:, :, :, 0] * ras - expected)[:, :, :, None] * ras
        nifti_zero = {**nifti, "field": np.zeros_like(nifti["field"]),
                      "name": "nifti, its mapping moved like the headers"}
        brain = np.asarray(nib.load(str(d / "fixed.nii.gz")).dataobj) > 0
        for run, reference in ((nifti, None), (nrrd, nifti), (as_int16, None), (dicom, as_int16),
                               (moved, nifti_zero)):
            apart = None if reference is None else np.linalg.norm(run["field"] - reference["field"], axis=-1)[..., 0]
            diff = "" if apart is None else (f"{apart[brain].mean():.3g} / {np.percentile(apart[brain], 99):.3g} / "
                                             f"{apart[brain].max():.3g}")
            rows.append(f"| {run['name']} | {run['moving_orientation']} | {run['dice_before']:.4f} -> "
                        f"{run['dice']:.4f} | {reference['name'] if reference else '-'} | {diff} | "
                        f"{run['seconds']:.1f} |")
        matrix = np.asarray(moved["affine_ras"])
        angle = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
        lines = [f"# Input formats and --initial-transform on the brain pair ({_dt.datetime.now():%Y-%m-%d %H:%M}, "
                 "2 threads)", "", "Command: `.venv/bin/python benchmarks/input_formats.py`. Mean Dice over all labels "
                 "present in both maps, nearest-neighbour label warps; mappings apart: the distance (mm) between "
                 "where `displacement.nii.gz` and the run named send each voxel of the fixed brain (voxels > 0), "
                 "mean / 99th percentile / largest.", "",
                 "| run | moving orientation | mean Dice | compared with | mappings apart in the brain, mm | total s |",
                 "|---|---|---|---|---:|---:|", *rows, "",
                 f"Headers moved by a {np.degrees(np.radians(10.0)):.1f}° rotation about S and a (15, -10, 5) mm "
                 f"shift; the matrix svreg read from ANTs' file: rotation {angle:.2f}°, shift "
                 f"({matrix[0, 3]:.2f}, {matrix[1, 3]:.2f}, {matrix[2, 3]:.2f}) mm. The moved run is compared "
                 "with the NIfTI run's mapping moved by the same rotation and shift (its own affine stage is off; "
                 "the NIfTI run's is on)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
