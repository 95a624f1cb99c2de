"""The package's layering, read from its source: data flows one way (images → spatial transforms →
losses → optimiser or model → registration → outputs → command lines), so no module imports a module of
a higher layer (lazy imports inside functions included), and nothing in ``svreg_core`` imports Slicer,
VTK or Qt."""
from __future__ import annotations

import ast
from pathlib import Path

import svreg_core

PACKAGE = Path(svreg_core.__file__).parent

#: Layer of each top-level unit (module or sub-package) of ``svreg_core``, lowest first; a module may import
#: its own unit and lower layers. ``training.cli`` and ``tuning.cli`` (their subcommands' arguments) belong
#: to their sub-packages: ``svreg tune`` builds its trials' configurations with ``svreg train``'s parser.
LAYERS: dict[str, int] = {
    "errors": 0,
    "interrupts": 0,
    "cgroups": 0,
    **dict.fromkeys(("conventions", "progress", "parallel", "memory", "atomic", "text_input"), 1),
    "image": 2,
    "transforms": 3,
    "losses": 4, "metrics": 4,
    "optim": 5,
    "models": 6,  # a checkpoint's loss settings are checked as the registration parameters check them
    "registration": 7,
    "outputs": 8,
    "apply": 9,
    "preview_engine": 10, "training": 10,
    "tuning": 11,
    "cli": 12,
}
GUI_MODULES = ("slicer", "vtk", "qt", "ctk", "PythonQt")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    """Layer of a dotted ``svreg_core`` module (``None``: the package itself)."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


def _imports(source: str, package: str) -> list[str]:
    """Absolute names of every module the Python ``source`` of a module in ``package`` imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def _file_imports(path: Path) -> list[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports(path.read_text(encoding="utf-8"), package)


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_unit_has_a_layer() -> None:
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _sources()} - {"__init__"}
    assert units == set(LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in _sources():
        here = _module_name(path)
        layer = _layer(here)
        if layer is None:  # the package's __init__ re-exports the API
            continue
        for name in _file_imports(path):
            if not name.startswith("svreg_core.") or name.split(".")[1] not in LAYERS:
                continue
            same_unit = name.split(".")[1] == here.split(".")[1]
            if not same_unit and _layer(name) >= layer:
                upward.append(f"{here} (layer {layer}) imports {name} (layer {_layer(name)})")
    assert not upward, "\n".join(upward)


def test_the_engine_never_imports_slicer_vtk_or_qt() -> None:
    found = [f"{_module_name(p)}: {name}" for p in _sources() for name in _file_imports(p)
             if name.split(".")[0] in GUI_MODULES]
    assert not found, found


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    """The reader above on a hand-written module of ``svreg_core.image``: imports inside functions and
    relative ones count."""
    source = "def f():\n    from svreg_core.cli import main\n    from ..optim import spr\n    import vtk.util\n"
    names = _imports(source, "svreg_core.image")
    assert {"svreg_core.cli", "svreg_core.optim.spr", "vtk.util"} <= set(names)
    assert _layer("svreg_core.cli") > _layer("svreg_core.image.grid") == LAYERS["image"]
    assert _layer("svreg_core.training.cli") == LAYERS["training"] and _layer("svreg_core") is None
