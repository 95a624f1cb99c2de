"""Every Python block of README.md and of the pages under docs/ runs, on tiny real images under the file
names the README uses, and every link of those pages resolves.

Blocks that need 3D Slicer (``slicer.`` in them) are left out; the learned-model block runs only when
the model it names is shipped. The preset name is replaced by a short pyramid (same code, less time).
"""
from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import pytest

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
    blocks = [(page, block) for page, block in _blocks() if "slicer." not in block]
    assert len(blocks) >= 2
    for number, (page, block) in enumerate(blocks, 1):
        # every block runs: a shipped model renamed or removed while a block still names it fails here
        code = block.replace('"brain-mri"', repr(str(fast_preset)))
        exec(compile(code, f"{page} block {number}", "exec"), namespace)  # noqa: S102
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


_COMMAND = re.compile(r"(?:^|(?<=[\s\"(]))(?:svreg|-m svreg_core\.cli) +([a-z][a-z-]*)((?: [^#`\"]*)?)")


def _command_lines(text: str) -> list[tuple[str, bool]]:
    """(line, complete) of the page: every line of its ``bash`` blocks, ``\\`` continuations joined (complete
    commands), then every inline code span (often a command named in passing, without its required arguments)."""
    lines = [(line, True) for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
             for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return lines + [(span.replace("\n", " "), False) for span in re.findall(r"`([^`]+)`", prose)]


@functools.cache
def _svreg_parser() -> tuple:
    """The ``svreg`` parser and its subcommands' parsers by name."""
    import argparse

    from svreg_core.cli import build_parser

    parser, _ = build_parser()
    return parser, next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _command_problems(text: str) -> list[str]:
    """What the real ``svreg`` parser says about the command lines of ``text``: a subcommand it lacks, a ``--flag``
    that is not exactly one of the subcommand's (no abbreviations), a listed choice (``--x a|b``) it refuses, and
    any error when parsing a complete command of a ``bash`` block that has no ``[...]``/``|``/``...`` placeholders
    (placeholder names such as ``FIXED`` pass as paths)."""
    import contextlib
    import io
    import shlex

    parser, commands = _svreg_parser()
    problems = []
    for line, complete in _command_lines(text):
        for match in _COMMAND.finditer(line):
            name, rest = match.group(1), match.group(2).split("  #")[0]
            if name not in commands:
                if complete and line.lstrip().startswith(("svreg ", "torchrun")):
                    problems.append(f"no command 'svreg {name}': {line.strip()}")
                continue
            options = commands[name]._option_string_actions
            for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
                if flag not in options:
                    problems.append(f"'svreg {name}' has no option {flag}: {line.strip()}")
            for flag, listed in re.findall(r"(--[\w-]+) ([\w.-]+(?:\|[\w.-]+)+)", rest):
                choices = options[flag].choices if flag in options else None
                if choices is not None and not all(c in choices or c.isdigit() for c in listed.split("|")):
                    problems.append(f"'svreg {name} {flag}' takes {sorted(map(str, choices))}, not {listed}")
            if complete and not re.search(r"[\[\]|…]|\.\.\.", rest):
                error = io.StringIO()
                try:
                    with contextlib.redirect_stderr(error):
                        parser.parse_args([name, *shlex.split(rest)])
                except SystemExit:
                    problems.append(f"{error.getvalue().strip().splitlines()[-1]}: {line.strip()}")
    return problems


def test_documented_command_lines_parse() -> None:
    """Every ``svreg …`` command line of the README and the docs/ pages (bash blocks and inline code) uses
    subcommands, options and choices the real parser accepts: a renamed or misspelt flag fails here, not for the
    user who copies it."""
    pages = _pages()
    counted = sum(len(_COMMAND.findall(line)) for page in pages
                  for line, _ in _command_lines(page.read_text(encoding="utf-8")))
    assert counted >= 50
    for page in pages:
        problems = _command_problems(page.read_text(encoding="utf-8"))
        assert not problems, (page.name, problems)
    # the check itself finds a wrong flag, an abbreviation, a refused choice and a missing argument
    bad = "\n".join(_command_problems("```bash\nsvreg register F M -o O --no-such-flag\nsvreg register F M -o O "
                                     "--iter 5\nsvreg tune D --objective dice|mse\nsvreg apply OUT IMAGE\n"
                                     "svreg regster F M -o O\n```\nsee `svreg train --hyper 0.1`"))
    for expected in ("no option --no-such-flag", "no option --iter", "not dice|mse", "required: -o/--output",
                     "no command 'svreg regster'", "'svreg train' has no option --hyper"):
        assert expected in bad, bad


def test_readme_preset_values_are_the_presets() -> None:
    """The values the README gives for each preset ("How it works" and its Presets paragraph) are those of
    ``PRESETS``: α′, λ_max, the refinement codes, the Adam step, the pyramid, the CT grids and the velocity
    smoothing passes (the README once said sliding-motion settings use 1 pass; every preset, ``lung-ct`` included,
    has 3)."""
    from svreg_core.optim.parameters import PRESETS

    text = " ".join(README.read_text(encoding="utf-8").split())
    brain, cardiac, ct, lung = (PRESETS[n] for n in ("brain-mri", "cardiac-mri", "ct", "lung-ct"))
    assert brain.refine_codes is not None

    def g(value: float) -> str:
        return f"{value:g}"

    assert (f"`brain-mri` (α′ {g(brain.alpha_prime)}, λ_max {g(brain.lambda_max)}, Adam step {g(brain.learning_rate)}; "
            f"refinement codes α′ {g(brain.refine_codes[0])}, λ_max {g(brain.refine_codes[1])})") in text
    assert f"`cardiac-mri` keeps the paper's α′ {g(cardiac.alpha_prime)} with λ_max {cardiac.lambda_max:.1f}" in text
    assert f"`ct` (α′ {g(ct.alpha_prime)}, λ_max {g(ct.lambda_max)})" in text
    assert f"`lung-ct` (α′ {g(lung.alpha_prime)}, λ_max {lung.lambda_max:.1f})" in text
    assert (f"CT presets (MIND-SSC, {g(ct.level_spacings[0])} mm coarse level, {g(ct.min_control_spacing)} mm "
            "control grid)") in text
    assert all(p.similarity == "mind" and p.level_spacings == ct.level_spacings
               and p.min_control_spacing == ct.min_control_spacing for p in (ct, lung))
    assert (f"isotropic control grids ({g(brain.level_spacings[0])} mm, then {g(brain.level_spacings[1])} mm;"
            in text)
    assert (f"optimised with Adam ({brain.iterations[0]} then {brain.iterations[1]} iterations, step "
            f"{g(brain.learning_rate)} control-grid voxels of velocity for `brain-mri` and {g(cardiac.learning_rate)} "
            "for the other presets") in text
    assert {p.learning_rate for p in (cardiac, ct, lung)} == {cardiac.learning_rate}
    assert {p.iterations for p in PRESETS.values()} == {brain.iterations}
    passes = {p.smoothing_passes for p in PRESETS.values()}
    assert passes == {3}, passes
    assert "(3, as the authors' ConvexAdam-SPR)" in text and "every preset, `lung-ct` included, keeps 3" in text
    assert "settings use 1 pass" not in text


def test_readme_sections_agree_on_the_headline_numbers() -> None:
    """Where the README gives one measurement in two sections, they give the same numbers: the brain pair's Dice of
    the pairwise optimiser and of the learned model refined 50 steps ("Where it stands" and "The shipped models"),
    and the slider preview's latency ("Live preview engine" and the Slicer module's *Regularisation*). The two had
    drifted apart (0.7730 / 0.7731, 0.7726 / 0.7727; 2.0–2.2 s against "about 5 s" per move)."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    table_pairwise = re.search(r"\| pairwise SPR, brain pair \| Dice (0\.\d{4}) ", text)
    table_refined = re.search(r"\| learned \+ `--refine 50` \| (0\.\d{4}) ", text)
    models = re.search(r"refine 50 reaches (0\.\d{4}) \(.*?\) against the pairwise optimiser's (0\.\d{4})", text)
    assert table_pairwise and table_refined and models
    assert (models.group(1), models.group(2)) == (table_refined.group(1), table_pairwise.group(1))
    engine = re.search(r"later moves ([\d.–]+) s, the first ([\d.]+) s, a new `svreg register` child ([\d.–]+) s", text)
    slicer = re.search(r"CPU, 2 threads \([^)]*\): ([\d.–]+) s per move after the first \(([\d.–]+) s with a new "
                       r"process per move; first move ([\d.]+) s\)", text)
    assert engine and slicer
    assert (slicer.group(1), slicer.group(3), slicer.group(2)) == engine.groups()


def test_readme_layout_lists_every_unit_in_its_layer() -> None:
    """The README's Layout names every top-level module and sub-package of ``svreg_core`` and gives the import
    layers that ``test_layers.py`` enforces, lowest first (``cgroups.py`` had been left out of both)."""
    import importlib.util

    import svreg_core

    layout = re.search(r"## Layout\n+```\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert layout
    listed = set(re.findall(r"^  (\w+)(?:\.py|/) ", layout.group(1), flags=re.M))
    package = Path(svreg_core.__file__).parent
    units = ({p.stem for p in package.glob("*.py")}
             | {p.name for p in package.iterdir() if (p / "__init__.py").is_file()})
    assert listed == units - {"__init__"}
    chain = re.search(r"no module imports a higher layer \((.*?)\), and nothing imports",
                      " ".join(layout.group(1).split()))
    assert chain
    readme_layers = [{name.strip() for name in group.split(",")} for group in chain.group(1).split("→")]
    spec = importlib.util.spec_from_file_location("test_layers", Path(__file__).with_name("test_layers.py"))
    assert spec is not None and spec.loader is not None
    layers_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers_module)
    levels = sorted(set(layers_module.LAYERS.values()))
    assert readme_layers == [{u for u, lv in layers_module.LAYERS.items() if lv == level} for level in levels]


def test_readme_quotes_the_engine_constants() -> None:
    """The limits and counts the README states in numbers are the engine's constants: the memory estimates of
    ``svreg register`` and ``svreg apply``, the pose search's rotations, the learned models' field-size warning,
    the overlap warning, the affine pyramid (whose similarity is the preset's, not always LNCC as the README had
    said) and the small-field-of-view rule."""
    from svreg_core import memory, registration
    from svreg_core.optim import affine, pose_search

    text = " ".join(README.read_text(encoding="utf-8").split())
    words = {2: "two", 4: "four"}
    assert (f"({memory.BASE_BYTES / 1e6:g} MB + {memory.FIXED_BYTES_PER_VOXEL} B per fixed voxel + "
            f"{memory.MOVING_BYTES_PER_VOXEL} B per moving voxel + {memory.WORKING_BYTES_PER_VOXEL} B per voxel of the "
            "finest working grid") in text
    assert (f"({memory.APPLY_BASE_BYTES / 1e9:g} GB + {memory.APPLY_OUTPUT_BYTES_PER_VOXEL} B per output voxel + "
            f"{memory.APPLY_INPUT_BYTES_PER_VOXEL} B per field and input voxel") in text
    assert (f"scores {pose_search.POSE_CANDIDATES} rotations" in text
            and f"the best {words[pose_search.POSE_KEEP]} optimised briefly, the best "
                f"{words[pose_search.POSE_FINALISTS]} of those" in text)
    assert registration.TRAINED_FIELD_FACTOR == 2 and registration.TRAINED_FIELD_SMALL_FRACTION == 1 / 8
    assert "network grid of more than twice, or less than an eighth of, the voxels" in text
    assert f"(under {registration.OVERLAP_WARNING_FRACTION:.0%} gets a warning)".replace("%", " %") in text
    (coarse, _), (fine, _) = affine.AFFINE_LEVELS
    assert (f"Adam on an {coarse:g} mm and a {fine:g} mm anti-aliased pyramid (the preset's similarity: LNCC, "
            "MIND-SSC with the CT presets)") in text
    assert (f"image at least {affine.AFFINE_REFERENCE_EXTENT_MM:g} mm across" in text
            and f"fewer than {registration.MIN_WORKING_VOXELS} voxels across the fixed image" in text
            and f"s = field of view / {registration.SUGGESTED_WORKING_VOXELS}" in text)


def test_readme_output_column_rules_are_the_batch_readers(tmp_path: Path) -> None:
    """What the README says a pairs file's ``output`` column accepts is what ``svreg register-batch`` accepts: a
    folder under ``-o``, nested too (the README had said a sub-folder is refused), but not ``.``, ``..``, an
    absolute path or a folder inside another pair's."""
    from svreg_core.cli import read_pairs
    from svreg_core.errors import InputError

    text = " ".join(README.read_text(encoding="utf-8").split())
    assert ("a folder under `ROOT` (`sub-01` or `site-a/sub-01`; `.`, `..`, an absolute path or a folder inside "
            "another pair's is refused") in text
    parser, _ = _svreg_parser()

    def outputs(*names: str) -> list[str]:
        table = tmp_path / "pairs.csv"
        table.write_text("fixed,moving,output\n" + "".join(f"f.nii.gz,m{i}.nii.gz,{name}\n"
                                                           for i, name in enumerate(names)))
        args = parser.parse_args(["register-batch", "--pairs", str(table), "-o", str(tmp_path / "root")])
        return [Path(pair.output).relative_to(tmp_path / "root").as_posix() for pair in read_pairs(args)]

    assert outputs("sub-01", "site-a/sub-01") == ["sub-01", "site-a/sub-01"]
    for refused in ((".",), ("..",), (str(tmp_path / "elsewhere"),), ("sub-01", "sub-01/inner")):
        with pytest.raises(InputError):
            outputs(*refused)
