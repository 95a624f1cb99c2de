"""Every Python block of README.md runs, on tiny real images under the file names the README uses.

Blocks that need 3D Slicer (``slicer.`` in them) are left out; the learned-model block runs only when
the model it names is shipped. The preset name is replaced by a short pyramid (same code, less time).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_blocks() -> None:
    assert len([b for b in _blocks() if "slicer." not in b]) >= 2


def test_readme_python_blocks_run(tiny_pair, fast_preset, tmp_path: Path, monkeypatch) -> None:
    p = tiny_pair.paths
    for name, source in (("fixed.nii.gz", p.fixed), ("moving.nii.gz", p.moving), ("moving_seg.nii.gz", p.moving_labels),
                         ("moving_t2.nii.gz", p.moving)):
        shutil.copy(source, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = 0
    for block in _blocks():
        if "slicer." in block:
            continue
        if "model=" in block:
            from svreg_core.errors import InputError
            from svreg_core.models.zoo import resolve_model
            name = re.search(r'model="([^"]+)"', block).group(1)
            try:
                resolve_model(name)
            except InputError:
                continue  # no shipped model of that name in this checkout
        code = block.replace('"brain-mri"', repr(str(fast_preset)))
        exec(compile(code, f"README.md block {ran + 1}", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 1
    assert (tmp_path / "out" / "warped_labels.nii.gz").is_file()
    import numpy as np
    np.testing.assert_allclose(namespace["back"], namespace["pts_ras"], atol=0.5)  # there and back again


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than ``-``/``_`` dropped,
    spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve() -> None:
    """Every in-page link of the README names a heading, and every relative link an existing file (figures,
    results files): a renamed section or moved figure breaks the test, not the reader's click."""
    text = README.read_text(encoding="utf-8")
    anchors = {_github_anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not t.startswith(("http://", "https://"))]
    assert len(targets) >= 10
    broken = [t for t in targets if (t[1:] not in anchors if t.startswith("#")
                                     else not (README.parent / t.split("#")[0]).exists())]
    assert not broken, broken
    assert _github_anchor("Conventions (defined once, in `svreg_core/conventions.py`)") == \
        "conventions-defined-once-in-svreg_coreconventionspy"
