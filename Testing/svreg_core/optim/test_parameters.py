"""Registration parameters: presets, preset files (as written by ``svreg tune``), and plain errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.optim.parameters import (
    PRESETS,
    RegistrationParameters,
    load_parameters,
    preset_modality_warning,
    preset_warning,
)


def test_presets_load() -> None:
    for name, preset in PRESETS.items():
        assert load_parameters(name) == preset
        assert len(preset.level_spacings) == len(preset.iterations) > 0
        assert 0 < preset.alpha_prime and 0 < preset.lambda_max
    assert load_parameters("brain-mri", alpha_prime=0.05, similarity=None).alpha_prime == 0.05
    assert PRESETS["ct"].similarity == "mind" and PRESETS["brain-mri"].similarity == "lncc"


def test_unknown_overrides_are_refused_in_one_line() -> None:
    """A misspelt keyword of the Python API was a ``TypeError`` from ``dataclasses.replace`` naming ``__init__``."""
    with pytest.raises(InputError, match=r"unknown registration parameter\(s\): alpha\.$"):
        load_parameters("brain-mri", alpha=0.1)


def test_preset_file_round_trip(tmp_path: Path) -> None:
    custom = PRESETS["lung-ct"].replace(alpha_prime=0.031, lambda_max=2.25, level_spacings=(6.0, 3.0, 1.5),
                                        iterations=(10, 20, 30))
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"base": "lung-ct", "parameters": custom.to_dict()}))
    loaded = load_parameters(path)
    assert loaded == custom
    assert isinstance(loaded.level_spacings, tuple) and isinstance(loaded.iterations, tuple)
    # the CT presets hold the velocity on a control grid of at least 4 mm
    assert loaded.working_levels(1.0) == [(6.0, 6.0, 10), (3.0, 4.0, 20), (1.5, 4.0, 30)]
    path.write_text(json.dumps({"parameters": {"level_spacings": [8, 4], "iterations": [20, 20]}}))
    p = load_parameters(path)
    assert p == PRESETS["brain-mri"].replace(level_spacings=(8.0, 4.0), iterations=(20, 20))


@pytest.mark.parametrize("doc, words", [
    ({"parameters": {"level_spacings": [8, 4], "iterations": [10]}}, "same, non-zero length"),
    ({"parameters": {"level_spacings": [], "iterations": []}}, "non-zero length"),
    ({"parameters": {"alpha_prime": -0.1}}, "alpha_prime -0.1 is out of range"),
    ({"parameters": {"lambda_max": -1}}, "lambda_max -1 is out of range"),
    ({"parameters": {"prior": "laplace"}}, "unknown prior"),
    ({"base": "knee-mri", "parameters": {}}, "knee-mri"),
    ({"parameters": []}, "'parameters' object"),
    ({"base": ["x"], "parameters": {}}, 'unknown base preset ["x"]'),  # was a TypeError (unhashable) traceback
    ({"base": None, "parameters": {}}, "unknown base preset null;"),  # in the file's words (was Python's None)
    ({"base": "knee-mri", "parameters": {}}, 'unknown base preset "knee-mri";'),
    ({"parameters": {}, "tuning": {"searched": [["x"]]}}, "tuning.searched must be a list of parameter names"),
    ({"parameters": {}, "tuning": {"searched": "alpha_prime"}}, "tuning.searched must be a list of parameter names"),
])
def test_bad_preset_file(tmp_path: Path, doc, words: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as info:
        load_parameters(path)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_or_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown preset 'brain'"):
        load_parameters("brain")
    bad = tmp_path / "p.json"
    bad.write_text("{'single': quotes}")
    with pytest.raises(InputError, match="not valid JSON"):
        load_parameters(bad)


@pytest.mark.parametrize("values, message", [
    ({"iterations": ["many", 3]}, "iterations must be a whole number, not 'many'"),
    ({"level_spacings": 8}, "level_spacings must be a list of numbers, not 8"),
    ({"level_spacings": ["fine", "coarse"], "iterations": [1, 1]},
     "level_spacings must be a finite number, not 'fine'"),
    ({"pose_search": "yes"}, "pose_search must be true or false, not 'yes'"),
])
def test_wrongly_typed_values_are_input_errors(tmp_path: Path, values: dict, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"parameters": values}))
    with pytest.raises(InputError, match=re.escape(message)):
        load_parameters(path)


def test_unknown_keys_in_from_dict() -> None:
    with pytest.raises(InputError, match="foo"):
        RegistrationParameters.from_dict({"foo": 1})
    with pytest.raises(InputError):
        RegistrationParameters(similarity="cc")


@pytest.mark.parametrize("values, message", [
    ({"lncc_window": 4}, "lncc_window must be an odd number of voxels, not 4."),  # register: ValueError
    ({"iterations": (-3, 4)}, "iterations -3 is out of range"),  # register: UnboundLocalError
    ({"integration_steps": -1}, "integration_steps -1 is out of range"),  # scaling and squaring needs >= 0
    ({"learning_rate": -1.0}, "learning_rate -1 is out of range: it must lie in (0, 100] voxels"),  # said [0, 100]
    ({"spr": "no"}, "spr must be true or false, not 'no'."),  # a string where a bool is needed (register: TypeError)
    ({"level_spacings": (8.0, 0.0)}, "level_spacings 0 is out of range"),  # zero voxel size
    ({"min_control_spacing": 0.0}, "min_control_spacing 0 is out of range"),
    ({"final_learning_rate_fraction": 0.0}, "final_learning_rate_fraction 0 is out of range: it must lie in (0, 1]"),
    ({"learning_rate": 0.0}, "learning_rate 0 is out of range: it must lie in (0, 100] voxels"),  # would not move
    ({"lambda_step": 0.0}, "lambda_step 0 is out of range: it must lie in (0, 1]"),
    ({"final_learning_rate_fraction": 1.5}, "final_learning_rate_fraction 1.5 is out of range"),  # steps would grow
])
def test_invalid_values_are_input_errors(values: dict, message: str) -> None:
    """Each value is refused for its own reason (not by another check that happens to fail first)."""
    with pytest.raises(InputError, match="^" + re.escape(message)):
        RegistrationParameters(**values)


@pytest.mark.parametrize("changes, message", [
    ({"alpha_prime": float("inf")}, "alpha_prime must be a finite number"),
    ({"lambda_max": 1e300}, "lambda_max 1e\\+300 is out of range"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"iterations": (True, 5)}, "iterations must be a whole number"),
    ({"iterations": (2.5, 5)}, "iterations must be a whole number"),
    ({"iterations": (10**12, 5)}, "iterations 1e\\+12 is out of range"),
    ({"integration_steps": 10**6}, "integration_steps 1e\\+06 is out of range"),
    ({"lncc_window": 10**5 + 1}, "lncc_window 100001 is out of range"),
    ({"level_spacings": (4.0, 1e-4)}, "level_spacings 0.0001 is out of range"),
    ({"level_spacings": (2.0, 4.0)}, "level_spacings go from coarse to fine .* not 2 4 mm"),  # would end at 4 mm
    ({"device": 5}, "device must be a name"),
    ({"deterministic": "yes"}, "deterministic must be true or false"),
    ({"symmetric_prediction": 1}, "symmetric_prediction must be true or false"),
    ({"prediction_passes": 0}, "prediction_passes 0 is out of range"),
    ({"network_precision": "float16"}, "unknown network_precision 'float16'"),
    ({"network_precision": 32}, "network_precision must be a name"),
    ({"iterations": "80"}, "iterations must be a list of numbers"),
    ({"refine_codes": (0.1,)}, "refine_codes must be two numbers"),
    ({"refine_codes": "0.1 2"}, "refine_codes must be two numbers"),
    ({"refine_codes": (0.1, float("nan"))}, "refine_codes must be a finite number"),
    ({"refine_codes": (-0.1, 2.0)}, "refine_codes' alpha_prime -0.1 is out of range"),
])
def test_absurd_values_are_refused_before_any_work(changes, message) -> None:
    with pytest.raises(InputError, match=message):
        RegistrationParameters().replace(**changes)


@pytest.mark.parametrize("values", [
    {"iterations": [10**400, 60]}, {"learning_rate": 10**400}, {"refine_codes": [0.1, 10**400]},
])
def test_an_integer_too_large_for_a_float_is_out_of_range(tmp_path: Path, values: dict) -> None:
    """A preset file's integer of 400 digits (JSON reads it exactly) is refused in one line, not an OverflowError."""
    path = tmp_path / "zeros.json"
    path.write_text(json.dumps({"parameters": values}))
    with pytest.raises(InputError, match="out of range: a number of more than 300 digits"):
        load_parameters(path)


def test_preset_file_with_a_misspelled_key_is_refused(tmp_path) -> None:
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"parameter": {"alpha_prime": 0.1}}))
    with pytest.raises(InputError, match="unknown top-level key\\(s\\) 'parameter'"):
        load_parameters(path)


def test_working_levels_follow_the_image() -> None:
    """No level finer than the image's voxel; levels that coincide merge, keeping the larger count."""
    params = RegistrationParameters(level_spacings=(8.0, 4.0, 2.0), iterations=(50, 40, 30), min_control_spacing=2.0)
    assert params.working_levels(1.0) == [(8.0, 8.0, 50), (4.0, 4.0, 40), (2.0, 2.0, 30)]
    assert params.working_levels(3.0) == [(8.0, 8.0, 50), (4.0, 4.0, 40), (3.0, 3.0, 30)]
    assert params.working_levels(6.0) == [(8.0, 8.0, 50), (6.0, 6.0, 40)]
    assert params.working_levels(10.0) == [(10.0, 10.0, 50)]


def test_retired_parameters_are_ignored_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="lambda_learning_rate.*closed-form"):
        params = RegistrationParameters.from_dict({"lambda_learning_rate": 0.05, "lambda_max": 2.0})
    assert params == RegistrationParameters(lambda_max=2.0)


def test_preset_file_of_an_earlier_version_with_a_seed_still_loads(tmp_path: Path) -> None:
    """Registration draws no random numbers, so ``seed`` is retired: a preset file that holds one (written
    by an earlier version) loads with a warning, and the seed is not a 'changed fixed setting'."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"base": "ct", "parameters": {"seed": 7, "alpha_prime": 0.02},
                                "tuning": {"searched": ["alpha_prime"]}}))
    with pytest.warns(UserWarning, match=r"seed \(the pairwise registration is deterministic; seed had no effect\)"):
        params = load_parameters(path)
    assert params == PRESETS["ct"].replace(alpha_prime=0.02) and "seed" not in params.to_dict()
    with pytest.warns(UserWarning, match="seed"):
        assert preset_warning(path) is None
    with pytest.raises(TypeError):
        RegistrationParameters(seed=0)  # gone from the Python API too


def test_deterministic_is_an_execution_setting_like_the_device(tmp_path: Path) -> None:
    """Off in every preset; a preset file may switch it on (and choose the device) without the warning
    about changed fixed settings, since neither changes what is optimised."""
    assert not any(p.deterministic for p in PRESETS.values())
    path = tmp_path / "exact.json"
    path.write_text(json.dumps({"base": "brain-mri", "parameters": {"deterministic": True, "device": "cpu"}}))
    assert load_parameters(path) == PRESETS["brain-mri"].replace(deterministic=True, device="cpu")
    assert preset_warning(path) is None
    path.write_text(json.dumps({"base": "brain-mri", "parameters": {"deterministic": True, "lncc_window": 7}}))
    assert "lncc_window" in (preset_warning(path) or "")


def test_refine_codes_are_a_preset_setting(tmp_path: Path) -> None:
    """brain-mri refines a learned model at its own codes; a preset file may change them without a warning
    (a JSON list becomes a tuple) or set null to refine at alpha_prime and lambda_max."""
    assert PRESETS["brain-mri"].refine_codes == (0.0303, 2.93)
    assert RegistrationParameters().refine_codes is None  # parameters built by hand refine at their own codes
    assert all(PRESETS[name].refine_codes is None for name in ("cardiac-mri", "ct", "lung-ct"))
    assert PRESETS["brain-mri"] == RegistrationParameters(refine_codes=(0.0303, 2.93), learning_rate=3.0,
                                                        integration_steps=3)
    path = tmp_path / "refine.json"
    path.write_text(json.dumps({"base": "brain-mri", "parameters": {"refine_codes": [0.05, 4]}}))
    assert load_parameters(path).refine_codes == (0.05, 4.0)
    assert preset_warning(path) is None
    path.write_text(json.dumps({"base": "brain-mri", "parameters": {"refine_codes": None}}))
    assert load_parameters(path).refine_codes is None


def test_an_mr_preset_on_two_ct_images_gets_one_line() -> None:
    """Only an MR preset with its own similarity, and only when both images read as CT (air at −1000 HU)."""
    ct = np.full((10, 10, 10), 40.0)
    ct[:, :, :3] = -1000.0
    mr = np.abs(ct) / 10.0
    note = preset_modality_warning("brain-mri", "lncc", ct, ct)
    assert note is not None and note.startswith("both images look like CT (Hounsfield units), but the brain-mri "
                                                "preset was tuned on MR: --preset ct (or lung-ct") and "\n" not in note
    assert preset_modality_warning("cardiac-mri", "mse", ct, ct) is not None
    assert preset_modality_warning("ct", "mind", ct, ct) is None
    assert preset_modality_warning("brain-mri", "mind", ct, ct) is None  # MIND chosen: the user knows
    assert preset_modality_warning("brain-mri", "lncc", ct, mr) is None
    assert preset_modality_warning("tuned.json", "lncc", ct, ct) is None


def test_numpy_numbers_are_numbers() -> None:
    """Values computed with NumPy (a sweep over ``np.arange``, a ``float32`` array) were refused with a misleading
    message ("iterations must be a whole number, not np.int64(80)"); they are taken as the Python numbers they
    equal, and stored as those (``to_dict`` stays JSON-able)."""
    params = load_parameters("brain-mri", iterations=np.array([80, 60]), alpha_prime=np.float32(0.25),
                             smoothing_passes=np.int64(2), level_spacings=np.array([4.0, 2.0], np.float32),
                             refine_codes=np.array([0.5, 2.0], np.float32), affine=np.bool_(False))
    assert params == load_parameters("brain-mri", iterations=(80, 60), alpha_prime=0.25, smoothing_passes=2,
                                     level_spacings=(4.0, 2.0), refine_codes=(0.5, 2.0), affine=False)
    json.dumps(params.to_dict())
    with pytest.raises(InputError, match="iterations must be a whole number"):
        RegistrationParameters(iterations=(np.float32(2.5), 5))
    with pytest.raises(InputError, match="spr must be true or false"):
        RegistrationParameters(spr=np.int64(1))


def test_a_one_voxel_lncc_window_is_refused_saying_why() -> None:
    """``lncc_window: 1`` was accepted, and LNCC over one voxel is 1 for any two images (zero gradient): the
    registration returned the identity and reported a perfect match. Refused, saying why."""
    import torch

    from svreg_core.losses import lncc_loss

    fixed, moving = torch.rand(1, 1, 6, 6, 6), torch.rand(1, 1, 6, 6, 6, requires_grad=True)
    loss = lncc_loss(fixed, moving, window=1)
    assert float(loss.detach()) == -1.0 and not torch.autograd.grad(loss, moving)[0].any()  # why it is refused
    with pytest.raises(InputError, match="lncc_window must be at least 3 voxels, not 1: the local correlation over "
                                         "one voxel is 1 for any two images"):
        load_parameters("brain-mri", lncc_window=1)
    assert load_parameters("brain-mri", lncc_window=3).lncc_window == 3
