"""Peak memory of loading a displacement field into a grid transform node (issue 12, defect 7).

A 256³ float32 field (192 MiB) is written in the engine's ITK convention, then read and turned into a
``vtkMRMLGridTransformNode`` in a fresh Python process whose peak resident memory (``ru_maxrss``) is
measured around that call. The old loader (float64 rebuild + deep copy) needed about 7 field sizes on
top of the imports; the float32 path needs SimpleITK's image plus one array.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SpatialVaryingReg"

CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, SimpleITK, slicer, vtk, vtk.util.numpy_support as ns
from SpatialVaryingRegLib import geometry

def peak_bytes():
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 if sys.platform != "darwin" else kib

scene = slicer.vtkMRMLScene()
before = peak_bytes()
disp, affine = geometry.read_displacement_file(sys.argv[2])
node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "t")
geometry.set_grid_transform(node, disp, affine)
after = peak_bytes()
scalars = node.GetTransformFromParent().GetDisplacementGrid().GetPointData().GetScalars()
probe = ns.vtk_to_numpy(scalars)
print(json.dumps({"before": before, "after": after, "vtk_type": scalars.GetDataTypeAsString(),
                  "shares": bool(np.shares_memory(probe, disp)), "value": float(probe[1, 0])}))
"""


def test_loading_a_256_cubed_field_peaks_below_three_field_sizes(slicer_module, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    shape = (256, 256, 256)
    lps = np.zeros((shape[2], shape[1], shape[0], 3), np.float32)  # (K, J, I, 3)
    lps[0, 0, 1] = (1.5, -2.0, 0.25)
    image = sitk.GetImageFromArray(lps, isVector=True)
    image.SetSpacing((1.0, 1.0, 1.0))
    path = tmp_path / "displacement.nii"  # uncompressed: the test measures loading, not gzip
    sitk.WriteImage(image, str(path))
    field_bytes = lps.nbytes
    del lps, image

    done = subprocess.run([sys.executable, "-c", CHILD, str(MODULE_DIR), str(path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    added = out["after"] - out["before"]
    print(f"field {field_bytes / 2**20:.0f} MiB, peak added {added / 2**20:.0f} MiB "
          f"({added / field_bytes:.2f} field sizes)")
    assert out["vtk_type"] == "float"
    assert out["shares"], "the VTK displacement array is a copy of the loaded array"
    assert out["value"] == -1.5  # LPS -> RAS: x flipped, at voxel i=1 (VTK point 1)
    assert added < 2.6 * field_bytes
