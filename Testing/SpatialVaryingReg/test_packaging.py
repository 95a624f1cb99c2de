"""The extension package: the module's CMake configured, built and installed with Slicer's real macros.

``SpatialVaryingReg/CMakeLists.txt`` runs through the pinned ``slicerMacroBuildScriptedModule`` (Slicer
5.12.3) and ``ctkMacroCompilePythonScript`` (CTK 5056664), read in place from
``../shared/third_party`` (skipped with a reason when absent), driven by
``cmake_standins/CMakeLists.txt``, which sets only the variables those macros read (each documented
there). ``cmake --install`` then yields the tree the Extension Manager package holds; the tests check
that it has the module, its ``Lib/``, its resources, the bundled engine (every ``svreg_core`` source,
byte-compiled) and the shipped models (whatever is in ``svreg_core/models/shipped`` now, and a
temporary model in a temporary copy of the sources), and nothing else of the engine's folders.
Configure + build + install of these scripted files takes about two seconds.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = REPO.parent / "shared" / "third_party"
STANDINS = Path(__file__).resolve().parent / "cmake_standins"
MODULES_DIR = "lib/Slicer-5.12/qt-scripted-modules"  # Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR of the stand-in
MINIMUM_CMAKE = (3, 20, 6)  # the top-level CMakeLists.txt's cmake_minimum_required


def _cmake() -> str:
    """The CMake executable (the environment's, else the system's), or skip with the reason."""
    if not (THIRD_PARTY / "slicer" / "CMake" / "SlicerMacroBuildScriptedModule.cmake").is_file():
        pytest.skip(f"the pinned Slicer/CTK CMake macros are not here ({THIRD_PARTY}); see its README.md")
    candidates = [Path(sys.executable).with_name("cmake"), shutil.which("cmake")]
    for cmake in [str(c) for c in candidates if c and Path(c).is_file()]:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"cmake version (\d+)\.(\d+)\.(\d+)", out)
        if m and tuple(int(x) for x in m.groups()) >= MINIMUM_CMAKE:
            return cmake
    pytest.skip("needs CMake >= 3.20.6 (system package or `pip install cmake`)")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def configure(module_dir: Path, work: Path) -> subprocess.CompletedProcess:
    """Configure the module at ``module_dir`` (its engine is ``module_dir/../svreg_core``) in ``work/build``."""
    cmake = _cmake()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    library = Path(sysconfig.get_config_var("LIBDIR") or "") / (sysconfig.get_config_var("LDLIBRARY") or "")
    return _run([cmake, "-S", str(STANDINS), "-B", str(work / "build"), *generator,
                 f"-DTHIRD_PARTY_DIR={THIRD_PARTY}", f"-DMODULE_SOURCE_DIR={module_dir}",
                 f"-DPYTHON_EXECUTABLE={sys.executable}", f"-DPYTHON_LIBRARY={library}"], cwd=work)


def package(module_dir: Path, work: Path) -> Path:
    """Configure, build and install; return the installed scripted-modules folder."""
    for step in (lambda: configure(module_dir, work),
                 lambda: _run([_cmake(), "--build", str(work / "build")], cwd=work),
                 lambda: _run([_cmake(), "--install", str(work / "build"), "--prefix", str(work / "install")],
                              cwd=work)):
        done = step()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "install" / MODULES_DIR


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def source_copy(tmp_path: Path) -> Path:
    """A temporary copy of the module and the engine's sources (no caches); returns the module folder."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "SpatialVaryingReg", tmp_path / "src" / "SpatialVaryingReg", ignore=ignore)
    shutil.copytree(REPO / "svreg_core", tmp_path / "src" / "svreg_core", ignore=ignore)
    return tmp_path / "src" / "SpatialVaryingReg"


def check_install_tree(installed: Path, module_dir: Path) -> None:
    """The installed tree holds exactly the module's files, the engine's sources and its shipped models."""
    engine_src = module_dir.parent / "svreg_core"
    tree = {f for f in files_under(installed) if "__pycache__" not in f}

    module_files = {p.relative_to(module_dir).as_posix() for p in module_dir.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert module_files <= tree, f"module files missing from the package: {module_files - tree}"
    for name in ("SpatialVaryingReg.py", "SpatialVaryingRegLib/__init__.py", "SpatialVaryingRegLib/logic.py",
                 "Resources/UI/SpatialVaryingReg.ui", "Resources/Icons/SpatialVaryingReg.png",
                 "Resources/requirements.txt"):
        assert name in tree, name

    engine_py = {"SpatialVaryingRegEngine/" + p.relative_to(engine_src.parent).as_posix()
                 for p in engine_src.rglob("*.py") if "__pycache__" not in p.parts}
    models = {"SpatialVaryingRegEngine/" + p.relative_to(engine_src.parent).as_posix()
              for p in engine_src.glob("models/shipped/*/model.*") if p.name in ("model.json", "model.safetensors")}
    engine_tree = {f for f in tree if f.startswith("SpatialVaryingRegEngine/")}
    assert engine_tree == engine_py | models, (f"missing: {(engine_py | models) - engine_tree}, "
                                               f"unexpected: {engine_tree - engine_py - models}")
    for name in models:
        source = engine_src.parent / name.split("/", 1)[1]
        assert (installed / name).read_bytes() == source.read_bytes(), name
    assert tree - module_files - engine_tree == set(), f"unexpected files: {tree - module_files - engine_tree}"

    # every script is byte-compiled by the build (a file that does not compile has no .pyc)
    tag = sys.implementation.cache_tag
    for script in [f for f in tree if f.endswith(".py")]:
        folder, stem = Path(script).parent, Path(script).stem
        assert (installed / folder / "__pycache__" / f"{stem}.{tag}.pyc").is_file(), f"{script} was not compiled"


def test_install_tree_of_the_repository_sources(tmp_path):
    """The repository as it is: the module, its Lib/ and resources, the engine, the models shipped now."""
    installed = package(REPO / "SpatialVaryingReg", tmp_path)
    check_install_tree(installed, REPO / "SpatialVaryingReg")
    assert not list((REPO / "SpatialVaryingReg").rglob("CMakeCache.txt"))  # nothing was built in the sources


def test_a_shipped_model_travels_with_the_engine(tmp_path):
    """A model folder in svreg_core/models/shipped (a temporary copy of the sources) is installed with
    exactly its model.json and model.safetensors; other files of that folder stay out."""
    from safetensors.numpy import save_file

    module_dir = source_copy(tmp_path)
    shipped = module_dir.parent / "svreg_core" / "models" / "shipped" / "packaging-check"
    shipped.mkdir(parents=True, exist_ok=True)
    (shipped / "model.json").write_text(json.dumps({"name": "packaging-check"}), encoding="utf-8")
    save_file({"weight": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(shipped / "model.safetensors"))
    (shipped / "training-log.csv").write_text("epoch,loss\n", encoding="utf-8")

    installed = package(module_dir, tmp_path)
    check_install_tree(installed, module_dir)
    target = installed / "SpatialVaryingRegEngine" / "svreg_core" / "models" / "shipped" / "packaging-check"
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.safetensors"]


def test_a_listed_file_missing_from_the_sources_fails_the_configure(tmp_path):
    """The real macro refuses a module whose CMake list names a file that is not there (so the checks
    above run against the macro, not a permissive stand-in)."""
    module_dir = source_copy(tmp_path)
    (module_dir / "SpatialVaryingRegLib" / "display.py").unlink()
    done = configure(module_dir, tmp_path)
    assert done.returncode != 0
    assert "given nonexistent file or directory 'SpatialVaryingRegLib/display.py'" in \
        " ".join((done.stdout + done.stderr).split())
