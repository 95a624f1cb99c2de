"""Registration with a HyperSPR model: the regularisation chosen at test time (API and CLI), refused
outside the trained ranges before any work, recorded in report.json; a plain model's codes only
steer its refinement; a refinement without chosen codes regularises with the parameters' (the preset's)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from svreg_core import InputError, RegistrationParameters, load_image, register
from svreg_core.registration import load_model, summarize

PARAMS = RegistrationParameters(affine=False, device="cpu", level_spacings=(6.0,), iterations=(5,))


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoints) -> tuple[Path, Path]:
    return tiny_checkpoints.hyper, tiny_checkpoints.plain


def _pair(tiny_pair):
    return load_image(tiny_pair.paths.fixed), load_image(tiny_pair.paths.moving)


def test_a_hyper_model_predicts_for_the_chosen_codes(checkpoints, tiny_checkpoints, tiny_pair) -> None:
    fixed, moving = _pair(tiny_pair)
    model = load_model(checkpoints[0])
    default = register(fixed, moving, PARAMS, model=model)
    own = register(fixed, moving, PARAMS, model=model, codes=(0.175, 1.0))
    other = register(fixed, moving, PARAMS, model=model, codes=(0.5, 10.0))
    assert default.codes == own.codes == (0.175, 1.0) and other.codes == (0.5, 10.0)
    assert np.array_equal(default.deformable_displacement, own.deformable_displacement)
    change = np.abs(other.deformable_displacement - own.deformable_displacement).max()
    assert change > 0.05 * np.abs(own.deformable_displacement).max() > 0
    assert not np.array_equal(other.weight.numpy(), own.weight.numpy())
    summary = summarize(other)  # what report.json holds
    assert summary["codes"] == {"alpha_prime": 0.5, "lambda_max": 10.0, "conditioned": True}
    assert summary["model"]["hyper"] == tiny_checkpoints.ranges and summary["parameters"]["lambda_max"] == 10.0


def test_a_hyper_models_refinement_uses_the_parameters_codes_unless_codes_are_chosen(checkpoints,
                                                                                     tiny_pair) -> None:
    """Without codes the network predicts at its own and the refinement regularises with the parameters'
    (here α′ 0.01, outside the trained range: it only sets the refinement's loss); chosen codes set both."""
    fixed, moving = _pair(tiny_pair)
    model = load_model(checkpoints[0])
    params = PARAMS.replace(alpha_prime=0.01, lambda_max=2.5)
    default = register(fixed, moving, params, model=model, refine=2)
    assert default.codes == (0.175, 1.0)  # the network: the model's own codes
    assert (default.parameters.alpha_prime, default.parameters.lambda_max) == (0.01, 2.5)  # the refinement's
    assert summarize(default)["codes"] == {"alpha_prime": 0.175, "lambda_max": 1.0, "conditioned": True}
    chosen = register(fixed, moving, params, model=model, refine=2, codes=(0.2, 5.0))
    assert chosen.codes == (chosen.parameters.alpha_prime, chosen.parameters.lambda_max) == (0.2, 5.0)
    assert not np.array_equal(chosen.deformable_displacement, default.deformable_displacement)


@pytest.mark.parametrize("codes, message", [
    ((0.6, 1.0), r"alpha_prime 0.6 is outside the range this model was trained on \[0.05, 0.5\]"),
    ((0.175, 0.1), r"lambda_max 0.1 is outside the range this model was trained on \[0.5, 10\]"),
    ((0.175,), "codes must be two non-negative numbers"),
    (("a", 1.0), "codes must be two non-negative numbers"),
])
def test_codes_outside_the_trained_ranges_are_refused_before_any_work(checkpoints, tiny_pair, codes, message) \
        -> None:
    fixed, moving = _pair(tiny_pair)
    events = []
    with pytest.raises(InputError, match=message) as err:
        register(fixed, moving, PARAMS, model=checkpoints[0], codes=codes, progress=events.append)
    assert "\n" not in str(err.value) and events == []  # not even the intensities were normalised


def test_a_plain_models_codes_only_set_its_refinement(checkpoints, tiny_pair) -> None:
    fixed, moving = _pair(tiny_pair)
    model = load_model(checkpoints[1])
    events = []
    with pytest.raises(InputError, match="is not a hyper model.*only set the loss of a refinement") as err:
        register(fixed, moving, PARAMS, model=model, codes=(0.3, 5.0), progress=events.append)
    assert "\n" not in str(err.value) and events == []
    assert register(fixed, moving, PARAMS, model=model, codes=(0.175, 1.0)).codes is None  # its own: fine
    loose = register(fixed, moving, PARAMS, model=model, refine=5, codes=(0.175, 0.01))
    stiff = register(fixed, moving, PARAMS, model=model, refine=5, codes=(0.175, 100.0))
    assert (stiff.parameters.alpha_prime, stiff.parameters.lambda_max) == (0.175, 100.0) and stiff.codes is None
    assert summarize(stiff)["codes"] == {"alpha_prime": 0.175, "lambda_max": 100.0, "conditioned": False}

    def energy(result) -> float:
        return float(sum(np.square(np.diff(result.deformable_displacement, axis=a)).mean() for a in range(3)))

    assert energy(stiff) < energy(loose)  # the refinement minimised the loss at the given λ_max
    with pytest.raises(InputError, match="codes choose a learned model's regularisation"):
        register(fixed, moving, PARAMS, codes=(0.175, 1.0))


def _run(geo, *argv, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(geo.svreg_command(*argv), cwd=str(cwd), env=geo.child_env(), capture_output=True,
                          text=True, timeout=300)


def test_cli_registers_with_a_hyper_models_codes_and_records_them(geo, tiny_pair, fast_preset, checkpoints,
                                                                  tiny_checkpoints, tmp_path) -> None:
    p = tiny_pair.paths
    out = tmp_path / "out"
    proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--model", checkpoints[0], "--lambda-max", "5",
                "--preset", fast_preset, "--no-affine", "--device", "cpu", "--progress", "none",
                "--outputs", "regularization", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model hyper-test at alpha_prime 0.175, lambda_max 5" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["codes"] == {"alpha_prime": 0.175, "lambda_max": 5.0, "conditioned": True}
    assert report["model"]["hyper"] == tiny_checkpoints.ranges


def test_cli_refines_a_plain_model_at_the_presets_codes(geo, tiny_pair, checkpoints, tmp_path) -> None:
    """A plain model's --refine regularises with the preset's α′ (cardiac-mri: 0.493, the model's 0.175)
    and --lambda-max where given, not with the model's training values."""
    p = tiny_pair.paths
    out = tmp_path / "out"
    proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--model", checkpoints[1], "--refine", "2",
                "--preset", "cardiac-mri", "--lambda-max", "2.5", "--level-spacings", "6",
                "--no-affine", "--device", "cpu", "--progress", "none", "--outputs", "regularization", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["model"]["alpha_prime"], report["model"]["lambda_max"]) == (0.175, 1.0)
    assert report["codes"] == {"alpha_prime": 0.493, "lambda_max": 2.5, "conditioned": False}


@pytest.mark.parametrize("flags, codes", [((), (0.0303, 2.93)), (("--lambda-max", "2.5"), (0.0303, 2.5))])
def test_cli_refines_a_plain_model_at_the_brain_presets_refinement_codes(geo, tiny_pair, checkpoints, tmp_path,
                                                                         flags, codes) -> None:
    """brain-mri refines at its refine_codes, not at its pairwise α′ and λ_max; a flag replaces its code."""
    p = tiny_pair.paths
    out = tmp_path / "out"
    proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--model", checkpoints[1], "--refine", "2", *flags,
                "--level-spacings", "6", "--no-affine", "--device", "cpu", "--progress", "none",
                "--outputs", "regularization", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["codes"] == {"alpha_prime": codes[0], "lambda_max": codes[1], "conditioned": False}
    assert (report["parameters"]["alpha_prime"], report["parameters"]["lambda_max"]) == codes


@pytest.mark.parametrize("which, argv, message", [
    (0, ("--lambda-max", "50"), "svreg: error: lambda_max 50.0 is outside the range this model was trained on "
                                "[0.5, 10]; choose a value inside it."),
    (1, ("--alpha-prime", "0.3"), "svreg: error: model plain-test is not a hyper model"),
])
def test_cli_refuses_codes_a_model_cannot_use_before_any_work(geo, tiny_pair, checkpoints, tmp_path, which, argv,
                                                              message) -> None:
    p = tiny_pair.paths
    proc = _run(geo, "register", p.fixed, p.moving, "-o", tmp_path / "out", "--model", checkpoints[which], *argv,
                "--progress", "none", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_codes_computed_with_numpy_are_numbers(checkpoints) -> None:
    """Codes from a NumPy sweep (``np.float32`` numbers, an array) were refused as "codes must be two non-negative
    numbers"; they are the numbers they hold."""
    from svreg_core.registration import model_codes

    info = load_model(checkpoints[0])[1]
    assert model_codes(info, (np.float32(0.5), np.int64(10))) == (0.5, 10.0)
    assert model_codes(info, np.array([0.5, 10.0], np.float32)) == (0.5, 10.0)
    with pytest.raises(InputError, match="codes must be two non-negative numbers"):
        model_codes(info, np.array([[0.5, 10.0]]))
    with pytest.raises(InputError, match="codes must be two non-negative numbers"):
        model_codes(info, (np.bool_(True), 10.0))
