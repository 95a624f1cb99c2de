"""``SpatialVaryingReg.json`` against the Extensions Index entry schema (pinned copy in
``../shared/third_party/extensions-index``, read in place; skipped with a reason when absent)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO.parent / "shared" / "third_party" / "extensions-index" / "schemas" / \
    "slicer-extension-catalog-entry-schema-v1.0.2.json"


@pytest.fixture
def schema():
    if not SCHEMA.is_file():
        pytest.skip(f"the pinned Extensions Index schema is not here ({SCHEMA}); see ../shared/third_party/README.md")
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def test_entry_validates_against_the_index_schema(schema):
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (test extra)")
    entry = json.loads((REPO / "SpatialVaryingReg.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, schema)
    assert entry["$schema"] == schema["$id"]  # the entry names the schema version it follows


def test_entry_fails_the_schema_when_broken(schema):
    """The validation above can fail: an unknown key and a wrong tier type are rejected."""
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (test extra)")
    entry = json.loads((REPO / "SpatialVaryingReg.json").read_text(encoding="utf-8"))
    for broken in ({**entry, "homepage": "x"}, {**entry, "tier": "1"}, {k: v for k, v in entry.items() if k != "scm_url"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_entry_follows_the_index_conventions():
    """What the index's review checks beyond the schema: https GitHub URL of a Slicer<Name> repository,
    a known category, the build dependency declared in CMake."""
    entry = json.loads((REPO / "SpatialVaryingReg.json").read_text(encoding="utf-8"))
    assert re.fullmatch(r"https://github\.com/[\w.-]+/Slicer[\w.-]+\.git", entry["scm_url"])
    assert entry["category"] == "Registration"
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Registration"\)', cmake)
    depends = re.search(r'set\(EXTENSION_DEPENDS\s+"?([^")]+)"?\)', cmake).group(1).split()
    assert entry.get("build_dependencies", []) == depends
