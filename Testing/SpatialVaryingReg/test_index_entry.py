"""The Extensions Index entries against the index's entry schema (pinned copy in
``../shared/third_party/extensions-index``, read in place; skipped with a reason when absent) and the
index's conventions.

One entry per index branch: ``SpatialVaryingReg.json`` for ``main`` (the Preview build, follows this
repository's ``main``) and ``Resources/ExtensionsIndex/<5.10|5.12>/SpatialVaryingReg.json`` for the stable
release lines, each pinned to the extension's release branch of the same name (an entry on ``main``
reaches only the Preview build; a stable release's Extension Manager lists only its own branch).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO.parent / "shared" / "third_party" / "extensions-index" / "schemas" / \
    "slicer-extension-catalog-entry-schema-v1.0.2.json"


#: index branch -> the entry prepared for it
ENTRIES = {"main": REPO / "SpatialVaryingReg.json",
           "5.10": REPO / "Resources" / "ExtensionsIndex" / "5.10" / "SpatialVaryingReg.json",
           "5.12": REPO / "Resources" / "ExtensionsIndex" / "5.12" / "SpatialVaryingReg.json"}


def entry(branch: str) -> dict:
    return json.loads(ENTRIES[branch].read_text(encoding="utf-8"))


@pytest.fixture
def schema():
    if not SCHEMA.is_file():
        pytest.skip(f"the pinned Extensions Index schema is not here ({SCHEMA}); see ../shared/third_party/README.md")
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


@pytest.mark.parametrize("branch", sorted(ENTRIES))
def test_entry_validates_against_the_index_schema(schema, branch):
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (test extra)")
    doc = entry(branch)
    jsonschema.validate(doc, schema)
    assert doc["$schema"] == schema["$id"]  # the entry names the schema version it follows


def test_each_index_branch_gets_its_own_pinned_revision():
    """Preview follows ``main``; 5.10 and 5.12 are pinned to the extension's release branch of the same
    name (or a full commit hash), never ``main``; otherwise the entries are identical."""
    assert entry("main")["scm_revision"] == "main"
    for branch in ("5.10", "5.12"):
        revision = entry(branch)["scm_revision"]
        assert revision == branch or re.fullmatch(r"[0-9a-f]{40}", revision), (branch, revision)
        assert {k: v for k, v in entry(branch).items() if k != "scm_revision"} == \
            {k: v for k, v in entry("main").items() if k != "scm_revision"}


def test_entry_fails_the_schema_when_broken(schema):
    """The validation above can fail: an unknown key and a wrong tier type are rejected."""
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (test extra)")
    doc = entry("main")
    for broken in ({**doc, "homepage": "x"}, {**doc, "tier": "1"}, {k: v for k, v in doc.items() if k != "scm_url"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_entry_follows_the_index_conventions():
    """What the index's review checks beyond the schema: https GitHub URL of a Slicer<Name> repository,
    a known category, the build dependency declared in CMake, contributors in the template's
    ``Name (Organisation)`` form, the same in CMake and in the module."""
    doc = entry("main")
    assert re.fullmatch(r"https://github\.com/[\w.-]+/Slicer[\w.-]+\.git", doc["scm_url"])
    assert doc["category"] == "Registration"
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Registration"\)', cmake)
    depends = re.search(r'set\(EXTENSION_DEPENDS\s+"?([^")]+)"?\)', cmake).group(1).split()
    assert doc.get("build_dependencies", []) == depends
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS\s+"([^"]+)"\)', cmake).group(1)
    people = re.findall(r"\s*([^,(]+?) \(([^)]+)\)\s*(?:,|$)", contributors)
    assert people and ", ".join(f"{n} ({o})" for n, o in people) == contributors, contributors
    module = (REPO / "SpatialVaryingReg" / "SpatialVaryingReg.py").read_text(encoding="utf-8")
    assert f"self.parent.contributors = {[f'{n} ({o})' for n, o in people]!r}".replace("'", '"') in module
