"""The shipped-model catalogue: listing, resolving names and paths, one line per model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.models.zoo import (
    DEFAULT_MODEL,
    describe,
    resolve_model,
    shipped_model_modality_warning,
    shipped_models,
)


def _catalogue(tmp_path: Path) -> Path:
    folder = tmp_path / "shipped"
    for name in (DEFAULT_MODEL, "b-model"):
        (folder / name).mkdir(parents=True)
        (folder / name / "model.json").write_text(json.dumps({"architecture": "unet-spr", "network_spacing_mm": 3.0,
                                                               "size_multiple": 16, "alpha_prime": 0.175,
                                                               "lambda_max": 3.35,
                                                               "training": {"data": "synthetic"}}))
    (folder / "broken").mkdir()
    (folder / "broken" / "model.json").write_text("{not json")  # skipped, not fatal
    (folder / "a-list").mkdir()
    (folder / "a-list" / "model.json").write_text("[1, 2]")  # skipped: 'svreg models' ended in an AttributeError
    (folder / "no-json").mkdir()
    return folder


def test_shipped_models_lists_readable_checkpoints_sorted(tmp_path: Path) -> None:
    folder = _catalogue(tmp_path)
    assert list(shipped_models(folder)) == sorted(["b-model", DEFAULT_MODEL])
    assert shipped_models(tmp_path / "missing") == {}


def test_resolve_names_default_and_paths(tmp_path: Path) -> None:
    folder = _catalogue(tmp_path)
    assert resolve_model("b-model", folder) == folder / "b-model"
    assert resolve_model("default", folder) == folder / DEFAULT_MODEL
    checkpoint = tmp_path / "runs" / "best"
    checkpoint.mkdir(parents=True)
    assert resolve_model(checkpoint, folder) == checkpoint
    with pytest.raises(InputError, match=f"neither a shipped model \\(shipped: b-model, {DEFAULT_MODEL}\\)"):
        resolve_model("no-such-model", folder)


def test_a_path_ending_in_a_shipped_name_is_that_path(tmp_path: Path, monkeypatch) -> None:
    """``--model ./brain-unet-spr`` (a model trained into a folder of that name) used the shipped model instead."""
    folder = _catalogue(tmp_path / "package")
    own = tmp_path / "work" / DEFAULT_MODEL
    own.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    for given in (f"./{DEFAULT_MODEL}", f"{DEFAULT_MODEL}/", f"../work/{DEFAULT_MODEL}", str(own)):
        assert resolve_model(given, folder).resolve() == own, given
    with pytest.warns(UserWarning, match=f"not the checkpoint {DEFAULT_MODEL} in the current folder; give ./"):
        assert resolve_model(DEFAULT_MODEL, folder) == folder / DEFAULT_MODEL  # a bare name is the shipped model
    with pytest.raises(InputError, match="neither a shipped model"):
        resolve_model("./b-model", folder)


def test_describe_puts_the_name_first() -> None:
    meta = {"architecture": "unet-spr", "network_spacing_mm": 3.0, "size_multiple": 16, "alpha_prime": 0.05,
            "lambda_max": 2.0, "config": {"hyper": {"alpha_prime": [0.01, 0.1], "lambda_max": [1, 5]}},
            "training": {"data": "synthetic label maps"}}
    line = describe("my-model", meta)
    assert line.startswith("my-model  architecture=unet-spr  grid=3.0 mm RAS")
    assert "hyper alpha_prime=[0.01, 0.1]" in line and line.endswith("data: synthetic label maps")
    assert describe("bare", {}).startswith("bare  architecture=?")


def test_describe_marks_the_default_model() -> None:
    """``--model default`` points at 'svreg models' for which model it is: the list says so."""
    assert describe(DEFAULT_MODEL, {}).startswith(f"{DEFAULT_MODEL} (default)  architecture=?")
    assert "default" not in describe("b-model", {})


def test_a_ct_pair_with_a_shipped_brain_model_is_warned_about(tmp_path: Path) -> None:
    """Two images in Hounsfield units registered with a shipped model (all trained on synthetic brain images) gave no
    word, where the same pair with an MR preset is warned about; another checkpoint's training data is its own."""
    folder = _catalogue(tmp_path)
    ct = np.full((8, 8, 8), 40.0)
    ct[:, :, :2] = -1000.0  # air: a quarter of the voxels
    mr = np.abs(ct) / 10.0
    warned = shipped_model_modality_warning("default", ct, ct, folder)
    assert warned == (f"both images look like CT (Hounsfield units), but the shipped model {DEFAULT_MODEL} was "
                      "trained on synthetic head images made from brain label maps only; for CT register without "
                      "--model, with --preset ct (or lung-ct for the chest), tuned on CT.")
    own = tmp_path / "runs" / "best"
    own.mkdir(parents=True)
    assert shipped_model_modality_warning(own, ct, ct, folder) is None
    assert shipped_model_modality_warning("b-model", ct, mr, folder) is None  # one MR image: not a CT pair
