"""Fetch the real CT of the known-warp CT benchmark from PyPI source distributions (idempotent).

Two sdists ship real, openly licensed CT as test data:

* ``pyradiomics==3.1.0``: ``data/lung1_image.nrrd``, a chest CT of 512 x 512 x 48 voxels of
  0.57 x 0.57 x 5 mm (non-contrast, thorax from the heart to the neck), and ``data/lung2_image.nrrd``,
  another patient's chest CT (512 x 512 x 61, 0.63 x 0.63 x 5 mm);
* ``totalsegmentator==2.18.0``: ``tests/reference_files/aorta_report/test_result/models/``, a
  contrast chest CT of 1.5 mm (``ct.nii.gz``; ``ct_cropped.nii.gz`` around the aorta) with
  TotalSegmentator's masks on the cropped grid (aorta and branches, vertebra T12); and
  ``tests/reference_files/example_ct_sm.nii.gz`` with ``example_seg.nii.gz``, another patient's upper
  abdomen (122 x 101 x 30 voxels of 3 mm) with TotalSegmentator's 41 structures (liver, spleen, kidneys,
  stomach, bowel, vertebrae, ribs, vessels, muscles).

``lung2`` and the abdomen are the CT *tuning* data (:mod:`ct_cases`: the ``tuning`` cases): the CT
presets are tuned on them, never on the evaluation cases built from the other two CTs.

The sdist's address and SHA-256 come from PyPI's JSON API; the digest must also equal the one pinned
here, so a changed upload is refused. Only the needed members are extracted into
``.bench/ct/raw/<package>/`` (git-ignored); the sdist itself is not kept. A marker file holding the
digest and the member list makes a second call a no-op (a changed member list fetches again).
Nothing here is ever committed.

Usage: ``.venv/bin/python benchmarks/fetch_ct_data.py [--dest .bench/ct/raw]``
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / ".bench" / "ct" / "raw"
PYPI_JSON = "https://pypi.org/pypi/{name}/json"


@dataclass(frozen=True)
class Source:
    """One sdist and the members (a file or a folder, relative to the sdist's top folder) to keep."""

    name: str
    version: str
    sha256: str
    members: tuple[str, ...]


SOURCES = (
    Source("pyradiomics", "3.1.0", "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
           ("data/lung1_image.nrrd", "data/lung2_image.nrrd")),
    Source("totalsegmentator", "2.18.0", "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
           ("tests/reference_files/aorta_report/test_result/models/",
            "tests/reference_files/example_ct_sm.nii.gz", "tests/reference_files/example_seg.nii.gz")),
)


def sdist_url(source: Source) -> tuple[str, str]:
    """The sdist's download address and SHA-256 as PyPI's JSON API lists them."""
    with urllib.request.urlopen(PYPI_JSON.format(name=source.name), timeout=60) as resp:
        doc = json.load(resp)
    files = [f for f in doc.get("releases", {}).get(source.version, []) if f.get("packagetype") == "sdist"]
    if not files:
        raise SystemExit(f"fetch_ct_data: PyPI lists no sdist for {source.name}=={source.version}")
    return files[0]["url"], files[0]["digests"]["sha256"]


def _download(url: str, target: Path) -> str:
    """Stream ``url`` into ``target``; return its SHA-256."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as resp, open(target, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _extract(archive: Path, source: Source, dest: Path) -> list[str]:
    """Extract the regular files under ``source.members`` into ``dest``.

    A member keeps its path below its parent folder: ``data/lung1_image.nrrd`` -> ``lung1_image.nrrd``,
    ``.../test_result/models/`` -> ``models/...``.
    """
    top = f"{source.name}-{source.version}/"
    written: dict[str, list[str]] = {m: [] for m in source.members}
    root = dest.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar.getmembers():
            rel = info.name[len(top):] if info.name.startswith(top) else None
            member = next((m for m in source.members if rel is not None and
                           (rel == m or (m.endswith("/") and rel.startswith(m)))), None)
            if member is None or not info.isfile():
                continue
            parent = member.rstrip("/").rpartition("/")[0]
            out = (root / rel[len(parent) + 1 if parent else 0:]).resolve()
            if root not in out.parents:
                raise SystemExit(f"fetch_ct_data: refusing member {info.name!r} outside {dest}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written[member].append(str(out.relative_to(root)))
    missing = [m for m, files in written.items() if not files]
    if missing:
        raise SystemExit(f"fetch_ct_data: {archive.name} lacks {', '.join(missing)}")
    return sorted(f for files in written.values() for f in files)


def fetch(source: Source, dest_root: Path = DEFAULT_DEST, log=print) -> Path:
    """Make ``dest_root/<name>/`` hold the source's members; download only when its marker is missing."""
    dest = dest_root / source.name
    marker = dest / ".fetched"
    stamp = f"{source.sha256} {source.name}=={source.version} {','.join(source.members)}"
    if marker.is_file() and marker.read_text().splitlines()[:1] == [stamp]:
        log(f"fetch_ct_data: {source.name}=={source.version}: present in {dest}")
        return dest
    url, listed = sdist_url(source)
    if listed != source.sha256:
        raise SystemExit(f"fetch_ct_data: PyPI's SHA-256 of {source.name}=={source.version} is {listed}, "
                         f"not the pinned {source.sha256}; refusing it")
    log(f"fetch_ct_data: downloading {url}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=dest_root) as tmp:
        archive = Path(tmp) / url.rsplit("/", 1)[-1]
        got = _download(url, archive)
        if got != source.sha256:
            raise SystemExit(f"fetch_ct_data: downloaded {archive.name} has SHA-256 {got}, "
                             f"not the pinned {source.sha256}")
        written = _extract(archive, source, dest)
    marker.write_text(stamp + "\n" + "\n".join(written) + "\n")
    log(f"fetch_ct_data: {source.name}=={source.version}: {len(written)} file(s) in {dest}")
    return dest


def fetch_all(dest_root: Path = DEFAULT_DEST, log=print) -> dict[str, Path]:
    """Fetch every source; return ``{package name: folder}``."""
    dest_root.mkdir(parents=True, exist_ok=True)
    return {s.name: fetch(s, dest_root, log) for s in SOURCES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"target folder (default {DEFAULT_DEST})")
    args = ap.parse_args(argv)
    fetch_all(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
