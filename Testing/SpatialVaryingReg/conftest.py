"""Fixtures of the Slicer-extension tests.

The module's helper package ``SpatialVaryingRegLib`` is imported from the module folder; MRML comes
from the ``slicer-core`` wheel (Slicer's real MRML/Logic libraries without Qt, importable as
``slicer``). The engine's child process runs with this interpreter (``sys.executable``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SpatialVaryingReg"
for _path in (MODULE_DIR, Path(__file__).resolve().parent, REPO / "Testing"):  # module, test, shared helpers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _slicer_core():
    """``slicer`` from slicer-core, or skip (never the unrelated PyPI ``slicer`` package)."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (test extra)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core (no MRML); install slicer-core")
    return slicer


@pytest.fixture
def slicer_module():
    return _slicer_core()


@pytest.fixture
def scene(slicer_module):
    """A fresh MRML scene, also set as ``slicer.mrmlScene`` (what ``slicer.util`` helpers use)."""
    scene = slicer_module.vtkMRMLScene()
    slicer_module.mrmlScene = scene
    yield scene
    scene.Clear(1)
