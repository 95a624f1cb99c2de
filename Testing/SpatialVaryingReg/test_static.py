"""Static checks of the Slicer extension (what can be verified without the Slicer application).

* every ``SlicerParameterName`` in the .ui is a field of the parameter node, bound to a widget type
  that Slicer's parameterNodeWrapper can connect to that field's type;
* every file of the module is listed in its CMakeLists.txt, the engine is bundled, the self-test is
  registered;
* the Extensions Index JSON is valid and consistent with the top-level CMakeLists.txt;
* icon (128x128 PNG), screenshot and LICENSE exist; the module imports neither torch nor the engine.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "SpatialVaryingReg"
MODULE_PY = MODULE / "SpatialVaryingReg.py"
UI = MODULE / "Resources" / "UI" / "SpatialVaryingReg.ui"

#: Widget classes that parameterNodeWrapper's GUI connectors bind to each kind of field.
CONNECTABLE = {
    "bool": {"QCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "QComboBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit", "QPlainTextEdit", "QComboBox"},
    "node": {"qMRMLNodeComboBox"},
}


def parameter_fields() -> dict[str, dict]:
    """Fields of the ``@parameterNodeWrapper`` class: name -> {"kind", "choice", "node_types", "default"}."""
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list)]
    assert len(classes) == 1, "expected one @parameterNodeWrapper class"
    fields = {}
    for stmt in classes[0].body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann = stmt.annotation
        info = {"choice": False, "node_types": None, "default": stmt.value}
        if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "Union":
            # Union[NodeType1, NodeType2, None]: a reference to a node of any of these types
            types = [e.id for e in ann.slice.elts if isinstance(e, ast.Name)]
            assert types and all(t.startswith("vtkMRML") for t in types), f"unsupported Union {types}"
            assert any(isinstance(e, ast.Constant) and e.value is None for e in ann.slice.elts), \
                "parameterNodeWrapper needs None in a Union of node types"
            info["kind"], info["node_types"] = "node", types
            fields[stmt.target.id] = info
            continue
        if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "Annotated":
            elts = ann.slice.elts
            base = elts[0].id
            info["choice"] = any(isinstance(e, ast.Call) and getattr(e.func, "id", None) == "Choice" for e in elts[1:])
        else:
            base = ann.id
        if base.startswith("vtkMRML"):
            info["kind"], info["node_types"] = "node", [base]
        else:
            info["kind"] = base
        fields[stmt.target.id] = info
    return fields


def ui_bindings() -> dict[str, tuple[str, str, ET.Element]]:
    """SlicerParameterName -> (widget class, widget name, element)."""
    root = ET.parse(UI).getroot()
    out = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert name not in out, f"{name} is bound twice in the .ui"
                out[name] = (widget.get("class"), widget.get("name"), widget)
    return out


def test_every_ui_parameter_name_is_a_parameter_node_field_of_a_connectable_type():
    fields = parameter_fields()
    bindings = ui_bindings()
    assert len(bindings) >= 20
    for name, (cls, widget_name, element) in bindings.items():
        assert name in fields, f"{widget_name}: SlicerParameterName '{name}' is not a parameter-node field"
        info = fields[name]
        assert cls in CONNECTABLE[info["kind"]], f"{widget_name} ({cls}) cannot represent {info['kind']} field {name}"
        if cls == "QComboBox":
            assert info["choice"], f"{widget_name}: a combo box needs a Choice annotation on '{name}'"
        if cls == "qMRMLNodeComboBox":
            types = [s.text for s in element.find("property[@name='nodeTypes']").iter("string")]
            assert types == info["node_types"], f"{widget_name}: nodeTypes {types} != field type {info['node_types']}"


def test_ui_is_consistent_with_the_widget_code():
    """Every ``self.ui.<name>`` used by the widget exists in the .ui, and node combo boxes get the scene."""
    root = ET.parse(UI).getroot()
    names = {w.get("name") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text(encoding="utf-8")))
    assert used - names == set(), f"widgets used in the code but missing from the .ui: {sorted(used - names)}"
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert combos == connected, f"node combo boxes without setMRMLScene: {sorted(combos - connected)}"
    assert root.find("widget").get("class") == "qMRMLWidget"


def cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not found"
    return [item.replace("${MODULE_NAME}", "SpatialVaryingReg") for item in m.group(1).split()]


def test_every_module_file_is_listed_in_cmake():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts, resources = cmake_list(text, "MODULE_PYTHON_SCRIPTS"), cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk_py = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    on_disk_res = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert set(scripts) == on_disk_py, f"unlisted: {on_disk_py - set(scripts)}, missing: {set(scripts) - on_disk_py}"
    assert set(resources) == on_disk_res, (f"unlisted: {on_disk_res - set(resources)}, "
                                           f"missing: {set(resources) - on_disk_res}")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)
    # only the module file and the Lib package sit on the module path (every top-level .py is a module)
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["SpatialVaryingReg.py"]


def test_engine_is_bundled_next_to_the_module():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"GLOB_RECURSE\s+ENGINE_PYTHON_SCRIPTS.*svreg_core/\*\.py", text, re.S)
    assert "ctkMacroCompilePythonScript(" in text
    assert "${MODULE_NAME}Engine" in text
    sys.path.insert(0, str(MODULE))
    from SpatialVaryingRegLib import runner

    assert runner.ENGINE_FOLDER == "SpatialVaryingRegEngine"
    # the glob takes .py files; the only other files the engine needs are its shipped models
    # (svreg_core/models/shipped/<name>/model.json + model.safetensors), which CMake must install too
    shipped = REPO / "svreg_core" / "models" / "shipped"
    others = [p for p in (REPO / "svreg_core").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
              and "__pycache__" not in p.parts]
    models = [p for p in others if p.parent.parent == shipped and p.name in ("model.json", "model.safetensors")]
    assert [p for p in others if p not in models] == [], "svreg_core holds non-Python files that CMake does not install"
    if models:
        assert re.search(r"svreg_core/models/shipped/\*/model\.(json|safetensors|\*)", text), \
            "the shipped models (svreg_core/models/shipped/*/model.json, model.safetensors) are not installed by CMake"
    # in a source checkout the module finds the engine in the repository
    assert runner.engine_path() == REPO


def test_top_level_cmake_and_extension_index_json():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(SpatialVaryingReg\)", cmake, re.M)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(" + var + r"\s", cmake), var
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', cmake)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(SpatialVaryingReg)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in cmake
    # the URLs point at files of this repository (raw GitHub URLs of the default branch)
    icon = re.search(r'set\(EXTENSION_ICONURL\s*"([^"]+)"\s*\)', cmake).group(1)
    shots = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    for url in [icon, *shots]:
        m = re.match(r"https://raw\.githubusercontent\.com/[^/]+/([^/]+)/main/(.+)$", url)
        assert m, url
        assert (REPO / m.group(2)).is_file(), f"{url} names {m.group(2)}, which is not in the repository"

    doc = json.loads((REPO / "SpatialVaryingReg.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(doc) <= allowed
    assert doc["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                     "slicer-extension-catalog-entry-schema-v1.0.")
    assert doc["category"] == "Registration"
    assert doc["build_dependencies"] == ["PyTorch"]  # consistent with EXTENSION_DEPENDS
    assert isinstance(doc["tier"], int) and 1 <= doc["tier"] <= 5
    repo_name = re.match(r"https://github\.com/[^/]+/([^/]+?)(\.git)?$", doc["scm_url"]).group(1)
    assert repo_name.startswith("Slicer")  # Extensions Index convention: repository Slicer<Name>
    assert all(f"/{repo_name}/" in url for url in [icon, *shots])


def test_icon_screenshot_and_license():
    from PIL import Image

    for icon in (REPO / "Resources/Icons/SpatialVaryingReg.png", MODULE / "Resources/Icons/SpatialVaryingReg.png"):
        with Image.open(icon) as im:
            assert im.format == "PNG" and im.size == (128, 128)
    shot = REPO / "Resources/Screenshots/outputs.png"
    with Image.open(shot) as im:
        assert im.format == "PNG" and min(im.size) >= 300
    assert shot.stat().st_size < 2_000_000
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text


def test_readme_section_has_the_self_test_command():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "slicer.testing.runUnitTest" in text and "--testing" in text
    assert "SpatialVaryingRegLogic().register(" in text or "logic.register(" in text
    assert "outputs.png" in text and "not a" in text.lower()


def test_module_files_never_import_torch_or_the_engine():
    """An import failure in the module file leaves an empty panel: torch and svreg_core stay in the child."""
    # torch_env.py is the script the PythonSlicer child runs to check torch: it imports torch there,
    # and no module file may import it
    child_script = MODULE / "SpatialVaryingRegLib" / "torch_env.py"
    files = [MODULE_PY, *sorted(p for p in (MODULE / "SpatialVaryingRegLib").glob("*.py") if p != child_script)]
    for path in files:
        assert "import torch_env" not in path.read_text(encoding="utf-8"), f"{path.name} imports torch_env"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("torch", "svreg_core", "optuna"), f"{path.name} imports {name}"
    # importing the whole helper package pulls neither torch nor Qt
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import SpatialVaryingRegLib.logic, SpatialVaryingRegLib.tuning, SpatialVaryingRegLib.dependencies; "
            "bad = [m for m in ('torch', 'qt', 'svreg_core', 'optuna') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


def test_module_lists_match_the_engine():
    pytest.importorskip("torch")
    sys.path.insert(0, str(MODULE))
    from SpatialVaryingRegLib import logic
    from svreg_core.optim.parameters import PRESETS, SIMILARITIES

    assert tuple(PRESETS) == logic.PRESET_NAMES
    assert tuple(SIMILARITIES) == logic.SIMILARITIES
    from SpatialVaryingRegLib import estimate

    assert estimate.PRESET_PYRAMIDS == {name: (tuple(map(float, params.level_spacings)), tuple(params.iterations),
                                               params.similarity) for name, params in PRESETS.items()}
    assert set(estimate.CPU_SECONDS_PER_VOXEL_ITERATION) == set(estimate.CPU_AFFINE_SECONDS_PER_VOXEL) \
        == set(SIMILARITIES)
    from svreg_core.optim.affine import AFFINE_LEVELS, AFFINE_REFERENCE_EXTENT_MM

    assert estimate.AFFINE_REFERENCE_EXTENT_MM == AFFINE_REFERENCE_EXTENT_MM
    assert estimate.AFFINE_SPACING_MM == AFFINE_LEVELS[-1][0]


def test_requirements_cover_the_engine_imports():
    """Every third-party package the engine imports is either bundled with Slicer, torch, or listed."""
    sys.path.insert(0, str(MODULE))
    from SpatialVaryingRegLib import dependencies

    listed = set()
    for name in ("requirements.txt", "requirements-tuning.txt"):
        for req in dependencies.read_requirements(MODULE / "Resources" / name):
            listed.add(re.match(r"[A-Za-z0-9_.-]+", req).group().lower())
    import_names = {"nibabel": "nibabel", "scipy": "scipy", "SimpleITK": "simpleitk", "matplotlib": "matplotlib",
                    "tqdm": "tqdm", "optuna": "optuna", "sqlalchemy": "sqlalchemy", "safetensors": "safetensors",
                    "yaml": "pyyaml", "h5py": "h5py", "isal": "isal"}
    provided = {"numpy", "torch"} | set(import_names)
    stdlib = set(sys.stdlib_module_names)
    for path in (REPO / "svreg_core").rglob("*.py"):
        if path.name == "demo.py":
            continue  # demo data download (the 'demo' extra: nilearn); not used by the module
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for mod in mods:
                top = mod.split(".")[0]
                if top in stdlib or top == "svreg_core" or top == "__future__":
                    continue
                assert top in provided, f"{path.relative_to(REPO)} imports {top}, not in Resources/requirements*.txt"
                if top in import_names:
                    assert import_names[top] in listed, f"{top} missing from the requirements files"
    # imported by optuna rather than the engine: the random forests of fANOVA, the tuning report's importances
    assert "scikit-learn" in listed
