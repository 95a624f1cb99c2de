"""The torch dependency flow with a fake ``PythonSlicer`` (issue 12, defects 1 and 2).

The fake ``PythonSlicer`` is a shell script running this interpreter without its site-packages
(``-S -s``), on a folder that holds the real numpy plus what each case needs: no torch, a torch whose
metadata says 1.13, a torch that cannot exchange arrays with NumPy (the ABI clash), a working torch
with or without a GPU, and a ``light_the_torch`` that records its arguments and "installs" a torch.
The module's real code starts the real ``torch_env.py`` in that child and reads its JSON answer.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from SpatialVaryingRegLib import dependencies

TORCH_MODULE = """
import numpy
__version__ = "{version}"
class _Tensor:
    def __init__(self, array):
        self._array = array
    def numpy(self):
        return self._array
def from_numpy(array):
    if {abi_broken}:
        raise RuntimeError("Numpy is not available")
    return _Tensor(array)
class _Props:
    name = "Fake GPU"
    total_memory = 8 * 2**30
class cuda:
    @staticmethod
    def is_available():
        return {gpus} > 0
    @staticmethod
    def device_count():
        return {gpus}
    @staticmethod
    def get_device_properties(index):
        return _Props()
"""

LTT_MAIN = """
import json, pathlib, sys
site = pathlib.Path(__file__).resolve().parents[1]
(site / "ltt-args.json").write_text(json.dumps(sys.argv[1:]))
sys.path.insert(0, str(site))
from make_torch import make_torch
make_torch(site, "2.12.1")
"""


def _dist_info(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def make_torch(site: Path, version: str, abi_broken: bool = False, gpus: int = 0) -> None:
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(TORCH_MODULE.format(version=version, abi_broken=abi_broken, gpus=gpus))
    _dist_info(site, "torch", version)


@pytest.fixture
def fake_slicer(tmp_path):
    """``(python, site)``: a fake PythonSlicer and the only folder it imports from (besides numpy)."""
    site = tmp_path / "site-packages"
    site.mkdir()
    numpy_dir = Path(np.__file__).resolve().parent
    os.symlink(numpy_dir, site / "numpy")
    for info in numpy_dir.parent.glob(f"numpy-{np.__version__}.dist-info"):
        os.symlink(info, site / info.name)
    if (numpy_dir.parent / "numpy.libs").is_dir():
        os.symlink(numpy_dir.parent / "numpy.libs", site / "numpy.libs")
    python = tmp_path / "bin" / "PythonSlicer"
    python.parent.mkdir()
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        export PYTHONPATH="{site}"
        exec "{sys.executable}" -S -s "$@"
        """))
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return str(python), site


def test_missing_torch_is_reported_and_installable(fake_slicer):
    python, _site = fake_slicer
    status = dependencies.check_torch(python=python, timeout=120)
    assert status.status == "missing" and status.torch is None and status.numpy == np.__version__
    assert status.installable and "Install" in status.advice()


def test_an_installed_torch_older_than_the_minimum_is_refused(fake_slicer):
    python, site = fake_slicer
    make_torch(site, "1.13.1")
    status = dependencies.check_torch(python=python, timeout=120)
    assert status.status == "too_old"
    assert "PyTorch 1.13.1 is installed; SpatialVaryingReg needs 2.1 or newer." in status.advice()


def test_a_torch_built_for_another_numpy_is_refused_with_plain_advice(fake_slicer):
    python, site = fake_slicer
    make_torch(site, "2.2.2", abi_broken=True)
    status = dependencies.check_torch(python=python, timeout=120)
    assert status.status == "numpy_abi"
    assert f"does not work with NumPy {np.__version__}" in status.message
    assert "Numpy is not available" in status.message
    # the reinstall asks for a torch built for NumPy 2 (2.3+), below the release known to break in Slicer
    assert dependencies.install_requirement(status) == "torch>=2.3,<2.13"
    assert "NumPy" in status.advice()


def test_a_torch_that_cannot_be_loaded_is_not_offered_an_install_that_keeps_it(fake_slicer):
    """Install offered for a torch whose import fails ran pip, which kept the installed version (it satisfies the
    requirement), and the same advice came back: now the advice says how to remove it first; a torch of a release the
    installation replaces (2.13 and later) is still offered Install."""
    python, site = fake_slicer
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("raise ImportError('DLL load failed while importing _C')\n")
    _dist_info(site, "torch", "2.5.1")
    status = dependencies.check_torch(python=python, timeout=120)
    assert status.status == "broken" and status.message == ("PyTorch 2.5.1 cannot be loaded (DLL load failed while "
                                                            "importing _C).")
    assert not status.installable and "slicer.util.pip_uninstall('torch')" in status.advice()
    assert dependencies.TorchStatus("broken", torch="2.13.0+cu126", message="x").installable


def test_a_working_torch_lists_the_gpu_only_when_there_is_one(fake_slicer):
    python, site = fake_slicer
    make_torch(site, "2.5.1")
    status = dependencies.check_torch(python=python, timeout=120)
    assert status.ok and status.torch == "2.5.1" and status.devices == []
    assert status.devices_text() == "no CUDA GPU: the CPU is used"
    shutil.rmtree(site / "torch")
    shutil.rmtree(site / "torch-2.5.1.dist-info")
    make_torch(site, "2.5.1", gpus=1)
    status = dependencies.check_torch(python=python, timeout=120)
    assert status.devices == [{"name": "Fake GPU", "memory_gb": 8.0}]
    assert status.devices_text() == "GPU: Fake GPU (8.0 GB)"


def test_install_runs_light_the_torch_in_the_child_then_checks_again(fake_slicer):
    python, site = fake_slicer
    (site / "light_the_torch").mkdir()
    (site / "light_the_torch" / "__init__.py").write_text("")
    (site / "light_the_torch" / "__main__.py").write_text(LTT_MAIN)
    _dist_info(site, "light-the-torch", "0.8.0")
    (site / "make_torch.py").write_text(
        "from pathlib import Path\n" + TORCH_MODULE.join(['TORCH_MODULE = """', '"""\n'])
        + textwrap.dedent("""
            def make_torch(site, version):
                (site / "torch").mkdir()
                (site / "torch" / "__init__.py").write_text(TORCH_MODULE.format(version=version, abi_broken=False,
                                                                                gpus=0))
                info = site / f"torch-{version}.dist-info"
                info.mkdir()
                (info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: torch\\nVersion: {version}\\n")
            """))
    lines = []
    before = dependencies.check_torch(python=python, timeout=120)
    status = dependencies.install_torch(before, python=python, on_log=lines.append, timeout=120)
    import json

    assert json.loads((site / "ltt-args.json").read_text()) == ["install", "torch>=2.1,<2.13"]
    assert status.ok and status.torch == "2.12.1"


def test_a_failed_installation_says_what_failed_and_what_to_do(fake_slicer):
    """Not 'PyTorch could not be checked ... see the log above' in a dialog: the step that failed, the installer's last
    words, where the whole output is, what to check, and Install offered again."""
    python, site = fake_slicer
    (site / "light_the_torch").mkdir()
    (site / "light_the_torch" / "__init__.py").write_text("")
    (site / "light_the_torch" / "__main__.py").write_text(
        "import sys\nprint('ERROR: Could not connect to download.pytorch.org')\n"
        "print('[notice] A new release of pip is available', file=sys.stderr)\nsys.exit(3)\n")
    _dist_info(site, "light-the-torch", "0.8.0")
    status = dependencies.install_torch(None, python=python, timeout=120)
    assert status.status == "install_failed" and not status.ok and status.installable
    assert status.message == ("Installing PyTorch failed: light-the-torch stopped with exit status 3 installing "
                              "torch>=2.1,<2.13. Its last output line: 'ERROR: Could not connect to "
                              "download.pytorch.org'.")
    advice = status.advice()
    assert "could not be checked" not in advice and "log above" not in advice
    assert "Log section" in advice and "internet" in advice and "press 'Install' to try again" in advice


def test_light_the_torch_that_pip_cannot_install_is_named(fake_slicer):
    """Without light-the-torch, pip installs it first; here a ``pip`` in the fake site (ahead of any real one on the
    path, so nothing is installed anywhere) fails as it does offline."""
    python, site = fake_slicer
    (site / "pip").mkdir()
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text(
        "import sys\nprint('ERROR: No matching distribution found for light-the-torch>=0.7')\nsys.exit(1)\n")
    status = dependencies.install_torch(None, python=python, timeout=120)
    assert status.status == "install_failed"
    assert status.message == ("Installing PyTorch failed: pip could not install light-the-torch, the PyTorch "
                              "installer (exit status 1). Its last output line: 'ERROR: No matching distribution "
                              "found for light-the-torch>=0.7'.")


def test_the_check_never_imports_torch_into_this_process(fake_slicer):
    """The check's answer comes from the child: this process's modules are unchanged by it."""
    python, site = fake_slicer
    make_torch(site, "2.5.1")
    before = set(sys.modules)
    dependencies.check_torch(python=python, timeout=120)
    assert {m for m in set(sys.modules) - before if m.split(".")[0] == "torch"} == set()
