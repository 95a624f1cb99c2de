"""Fixtures of the Slicer-extension tests.

The module's helper package ``SpatialVaryingRegLib`` is imported from the module folder; MRML comes
from the ``slicer-core`` wheel (Slicer's real MRML/Logic libraries without Qt, importable as
``slicer``). The engine's child process runs with this interpreter (``sys.executable``).
"""
from __future__ import annotations

import importlib.util
import sys
import types
import typing
import unittest
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SpatialVaryingReg"
MODULE_PY = MODULE_DIR / "SpatialVaryingReg.py"
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


def _stub_parameter_node_wrapper(cls):
    """Stand-in for ``@parameterNodeWrapper``: a plain object with the declared fields and defaults."""
    hints = typing.get_type_hints(cls, include_extras=True)  # what Slicer's wrapper does

    def __init__(self, node=None):
        for name in hints:
            setattr(self, name, getattr(cls, name, None))

    return type(cls.__name__, (), {"__init__": __init__, "__annotations__": cls.__annotations__})


@pytest.fixture
def module(slicer_module, monkeypatch):
    """``SpatialVaryingReg.py`` loaded on the real MRML library with stand-ins for the GUI-only modules (Qt, CTK,
    ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n``), which only exist inside
    the Slicer application: its Logic, parameter node and self-test code run; its Qt widget does not."""
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            return None

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, *args, **kwargs):
            print(message)

    for obj in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, obj.__name__, obj)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = _stub_parameter_node_wrapper
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    for name, mod in (("qt", types.ModuleType("qt")), ("ctk", types.ModuleType("ctk")),
                      ("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw),
                      ("slicer.i18n", i18n)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(slicer_module, "i18n", i18n, raising=False)
    # loaded the way Slicer loads scripted modules (registered in sys.modules, then executed)
    spec = importlib.util.spec_from_file_location("SpatialVaryingReg", MODULE_PY)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "SpatialVaryingReg", mod)
    spec.loader.exec_module(mod)
    return mod
