"""Every Python block of README.md and of the pages under docs/ runs, on tiny real images under the file
names the README uses, and every link of those pages resolves.

Blocks that need 3D Slicer (``slicer.`` in them) are left out; the learned-model block runs only when
the model it names is shipped. The preset name is replaced by a short pyramid (same code, less time).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"


def _pages() -> list[Path]:
    """README.md, then the Markdown pages of docs/ (the evidence the README summarises)."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _blocks() -> list[tuple[str, str]]:
    """(page name, source) of every Python block, README first."""
    return [(page.relative_to(README.parent).as_posix(), block) for page in _pages()
            for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]


def test_readme_has_python_blocks() -> None:
    assert len([b for page, b in _blocks() if page == "README.md" and "slicer." not in b]) >= 2


def test_readme_python_blocks_run(tiny_pair, fast_preset, tmp_path: Path, monkeypatch) -> None:
    p = tiny_pair.paths
    for name, source in (("fixed.nii.gz", p.fixed), ("moving.nii.gz", p.moving), ("moving_seg.nii.gz", p.moving_labels),
                         ("moving_t2.nii.gz", p.moving)):
        shutil.copy(source, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = 0
    for page, block in _blocks():
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
        exec(compile(code, f"{page} block {ran + 1}", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 1
    assert (tmp_path / "out" / "warped_labels.nii.gz").is_file()
    import numpy as np
    np.testing.assert_allclose(namespace["back"], namespace["pts_ras"], atol=0.5)  # there and back again


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than ``-``/``_`` dropped,
    spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return {_github_anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _broken_links(page: Path) -> tuple[list[str], int]:
    """The relative links of one page that name no heading or no file, and how many relative links it has.

    ``#anchor`` is looked up among the page's own headings, ``path`` relative to the page's folder, and
    ``page.md#anchor`` among the headings of that page."""
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8"))
               if not t.startswith(("http://", "https://"))]
    broken = []
    for target in targets:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    return broken, len(targets)


def test_readme_links_resolve() -> None:
    """Every in-page link of the README and of the docs/ pages names a heading, every relative link an existing
    file (figures, results files, pages) and every ``page.md#anchor`` a heading of that page: a renamed section
    or moved figure breaks the test, not the reader's click."""
    broken, count = _broken_links(README)
    assert count >= 10
    assert not broken, broken
    docs = sorted(DOCS.glob("*.md"))
    assert docs, "docs/ holds the pages the README links to"
    for page in docs:
        broken, _ = _broken_links(page)
        assert not broken, (page.name, broken)
    assert _github_anchor("Conventions (defined once, in `svreg_core/conventions.py`)") == \
        "conventions-defined-once-in-svreg_coreconventionspy"
