"""Registration with a learned SPR network: geometry through the RAS network grid, refinement, CLI.

A network whose velocity head is a known constant (weights zero, bias ``c``) predicts a constant
velocity on the RAS network grid, i.e. a translation by ``c`` network voxels along R, A, S. Whatever the
fixed image's orientation (LAS, oblique, anisotropic), the result must be that same world translation
on the fixed grid — checked in the engine's arrays and, independently, with SimpleITK reading the
written ``displacement.nii.gz``. These geometry tests predict one way in one pass
(``symmetric_prediction=False``, ``prediction_passes=1``): the symmetric prediction of a constant network
is zero, ``(c − c)/2``, and each further pass adds ``c`` again (tested below). Tests that check λ to
float32 rounding pin ``network_precision="float32"`` (``"auto"`` runs the network in bfloat16 on CPUs
that have it).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from svreg_core import Image, InputError, RegistrationParameters, load_image, register, write_outputs
from svreg_core.cli import main
from svreg_core.models import ModelInfo, build_model, save_checkpoint
from svreg_core.registration import load_model

TINY = {"encoder_features": [4, 4], "decoder_features": [4, 4, 4], "lambda_features": [4]}
SPACING = 6.0  # network grid voxel size (mm)
SHIFT_VOXELS = (0.5, -0.25, 0.75)  # constant velocity = translation in network voxels along R, A, S
LAMBDA_LOGIT = 0.4


def _info(model) -> ModelInfo:
    return ModelInfo(architecture=model.architecture, config=model.config, network_spacing_mm=SPACING,
                     size_multiple=model.size_multiple, normalization="robust_normalize", similarity="lncc",
                     lncc_window=5, prior="beta", alpha_prime=0.175, lambda_max=1.0, spr=True,
                     integration_steps=5, svreg_version="test", training={"data": "none (constant test net)"},
                     name="constant-test")


@pytest.fixture(scope="module")
def constant_checkpoint(tmp_path_factory) -> Path:
    model = build_model("unet-spr", TINY)
    with torch.no_grad():
        model.velocity_head.weight.zero_()
        model.velocity_head.bias.copy_(torch.tensor(SHIFT_VOXELS))
        last = model.lambda_head[-1]
        last.weight.zero_()
        last.bias.fill_(LAMBDA_LOGIT)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "constant", model, _info(model))


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    model = build_model("unet-spr", TINY)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "untrained", model, _info(model))


def _pair(tiny_pair):
    return load_image(tiny_pair.paths.fixed), load_image(tiny_pair.paths.moving)


def _expected_world_shift() -> np.ndarray:
    return np.asarray(SHIFT_VOXELS) * SPACING  # RAS mm: the network grid's axes are R, A, S


def test_constant_network_gives_the_world_translation_on_any_fixed_grid(constant_checkpoint, tiny_pair, tmp_path) \
        -> None:
    fixed, moving = _pair(tiny_pair)  # fixed: LAS 6 mm; moving: oblique, j-flipped, anisotropic
    params = RegistrationParameters(affine=False, symmetric_prediction=False, prediction_passes=1, device="cpu",
                                    network_precision="float32")
    result = register(fixed, moving, params, model=constant_checkpoint)
    assert result.method == "learned" and result.model.name == "constant-test"
    expected = _expected_world_shift()
    inner = result.deformable_displacement[3:-3, 3:-3, 3:-3]
    np.testing.assert_allclose(inner.reshape(-1, 3).mean(0), expected, atol=0.02)
    np.testing.assert_allclose(inner, np.broadcast_to(expected, inner.shape), atol=0.05)
    lam = result.regularization_map().data
    np.testing.assert_allclose(lam, 1 / (1 + np.exp(-LAMBDA_LOGIT)), atol=1e-5)
    # the same through SimpleITK reading the written file (LPS vectors in the ITK convention)
    report = write_outputs(result, tmp_path / "out")
    assert report["method"] == "learned" and report["model"]["architecture"] == "unet-spr"
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "displacement.nii.gz")))
    lps = expected * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(field[3:-3, 3:-3, 3:-3].reshape(-1, 3).mean(0), lps, atol=0.02)


def test_network_grid_follows_a_reoriented_fixed_image(constant_checkpoint, tiny_pair) -> None:
    """The same fixed image stored with flipped/permuted axes gives the same world result."""
    fixed, moving = _pair(tiny_pair)
    flipped = Image(np.ascontiguousarray(fixed.data[::-1].transpose(2, 0, 1)),
                    fixed.affine @ np.array([[-1, 0, 0, fixed.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                             [0, 0, 0, 1.0]]) @ np.array([[0, 1, 0, 0], [0, 0, 1, 0],
                                                                          [1, 0, 0, 0], [0, 0, 0, 1.0]]))
    params = RegistrationParameters(affine=False, symmetric_prediction=False, prediction_passes=1, device="cpu")
    a = register(fixed, moving, params, model=constant_checkpoint)
    b = register(flipped, moving, params, model=constant_checkpoint)
    points = np.array([[0.0, 0.0, 0.0], [10.0, -20.0, 5.0], [-15.0, 12.0, 20.0]])
    np.testing.assert_allclose(a.transform_points(points), b.transform_points(points), atol=0.05)
    np.testing.assert_allclose(a.transform_points(points) - points, np.broadcast_to(_expected_world_shift(),
                                                                                    points.shape), atol=0.05)


def test_a_field_of_view_larger_than_the_trained_one_is_warned_about(tiny_pair, tmp_path) -> None:
    """A checkpoint recording its training grid warns when the fixed image needs a network grid of more than twice
    its voxels (in mm, naming the model and what to do instead), and stays silent up to twice; and down to an
    eighth of them: less (a mouse brain given a human brain model) was not warned about."""
    import warnings

    from svreg_core.image.network_grid import network_grid

    fixed, moving = _pair(tiny_pair)
    model = build_model("unet-spr", TINY)
    needed = list(network_grid(fixed, SPACING, model.size_multiple).shape)
    params = RegistrationParameters(affine=False, symmetric_prediction=False, prediction_passes=1, device="cpu")
    for name, trained in (("fits", needed), ("half", [needed[0], needed[1], needed[2] // 2]),
                          ("smaller", [needed[0], needed[1], needed[2] // 2 - 1]),
                          ("eight", [2 * n for n in needed]), ("larger", [2 * n + 1 for n in needed])):
        info = _info(model)
        info.training = {"grid_shape": trained}
        info.name = name
        path = save_checkpoint(tmp_path / name, model, info)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            register(fixed, moving, params, model=path)
        messages = [str(w.message) for w in caught if "field of view" in str(w.message)]
        mm = lambda shape: " x ".join(f"{n * SPACING:g}" for n in shape)  # noqa: E731
        if name == "smaller":
            (message,) = messages
            assert f"a network grid of {mm(needed)} mm (R x A x S), more than twice the {mm(trained)} mm model " \
                   "smaller was trained on" in message and "register without --model" in message
        elif name == "larger":
            (message,) = messages
            assert f"a network grid of {mm(needed)} mm (R x A x S), less than an eighth of the {mm(trained)} mm " \
                   "model larger was trained on" in message and "for a small animal with finer grids" in message
        else:
            assert messages == []


def test_symmetric_prediction_of_a_constant_network_is_the_identity(constant_checkpoint, tiny_pair) -> None:
    """Both directions predict the same constant ``c``: ``(c − c)/2 = 0``; λ is the first pass's."""
    fixed, moving = _pair(tiny_pair)
    params = RegistrationParameters(affine=False, device="cpu", network_precision="float32")
    result = register(fixed, moving, params, model=constant_checkpoint)
    assert result.parameters.symmetric_prediction
    assert float(result.velocity.abs().max()) == 0.0
    np.testing.assert_allclose(result.deformable_displacement, 0.0, atol=1e-6)
    np.testing.assert_allclose(result.regularization_map().data, 1 / (1 + np.exp(-LAMBDA_LOGIT)), atol=1e-5)


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_each_pass_of_a_constant_network_adds_its_translation(constant_checkpoint, tiny_pair, passes) -> None:
    """One way, a constant network predicts ``c`` again on the warped image: ``passes · c`` in all."""
    fixed, moving = _pair(tiny_pair)
    params = RegistrationParameters(affine=False, symmetric_prediction=False, prediction_passes=passes, device="cpu")
    result = register(fixed, moving, params, model=constant_checkpoint)
    inner = result.deformable_displacement[3:-3, 3:-3, 3:-3]
    np.testing.assert_allclose(inner.reshape(-1, 3).mean(0), passes * _expected_world_shift(), atol=0.02 * passes)


class _SwappedInputs(torch.nn.Module):
    """A network with its two image inputs swapped."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, *codes: torch.Tensor):
        return self.network(moving, fixed, *codes)


def test_symmetric_prediction_is_antisymmetric_in_the_networks_inputs(tiny_checkpoints, tiny_pair) -> None:
    """``(v(f, m) − v(m, f))/2`` changes sign when the network's inputs are swapped; one way it does not
    (one pass: a second one starts from a different warped image)."""
    fixed, moving = _pair(tiny_pair)
    network, info = load_model(tiny_checkpoints.plain)
    for symmetric in (True, False):
        params = RegistrationParameters(affine=False, symmetric_prediction=symmetric, prediction_passes=1,
                                        device="cpu")
        v = register(fixed, moving, params, model=(network, info)).velocity
        v_swapped = register(fixed, moving, params, model=(_SwappedInputs(network), info)).velocity
        assert float(v.abs().max()) > 0.05
        if symmetric:
            assert torch.equal(v_swapped, -v)
        else:
            assert float((v_swapped + v).abs().max()) > 0.05


def test_bfloat16_prediction_is_close_to_float32_and_returns_float32(tiny_checkpoints, tiny_pair) -> None:
    """``network_precision="bfloat16"``: the network runs under autocast, its velocity and λ come back in
    float32 within bfloat16's rounding of the float32 prediction (8 bits of mantissa: about 1 %)."""
    fixed, moving = _pair(tiny_pair)
    network, info = load_model(tiny_checkpoints.plain)
    results = {precision: register(fixed, moving, RegistrationParameters(affine=False, device="cpu",
                                                                         network_precision=precision),
                                   model=(network, info))
               for precision in ("float32", "bfloat16")}
    v32, v16 = results["float32"].velocity, results["bfloat16"].velocity
    assert v16.dtype == torch.float32 and results["bfloat16"].weight.dtype == torch.float32
    scale = float(v32.abs().max())
    assert scale > 0.05 and not torch.equal(v16, v32)  # it did run in bfloat16
    assert float((v16 - v32).abs().max()) < 0.05 * scale
    np.testing.assert_allclose(results["bfloat16"].weight.numpy(), results["float32"].weight.numpy(), atol=0.01)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)])
def test_auto_precision_uses_bfloat16_only_on_a_cpu_that_has_it(monkeypatch, avx512_bf16, amx, expected) -> None:
    from svreg_core.registration import network_autocast
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu = torch.device("cpu")
    assert network_autocast("auto", cpu) == expected
    assert network_autocast("float32", cpu) is None and network_autocast("bfloat16", cpu) == torch.bfloat16
    assert network_autocast("auto", torch.device("cuda")) is None  # GPUs: float32 unless asked (no probe runs)


def test_refinement_improves_an_untrained_network(untrained_checkpoint, tiny_pair) -> None:
    fixed, moving = _pair(tiny_pair)
    params = RegistrationParameters(level_spacings=(8.0, 6.0), affine=False, device="cpu")
    loaded = load_model(untrained_checkpoint)
    one_pass = register(fixed, moving, params, model=loaded)
    refined = register(fixed, moving, params, model=loaded, refine=30)
    assert np.abs(one_pass.deformable_displacement).max() < 0.5  # untrained: about the identity
    assert refined.refine_steps == 30 and "refine_s" in refined.timing
    # the refinement runs the whole pyramid, 30 iterations per level, from the prediction
    assert [level["spacing_mm"] for level in refined.losses] == [8.0, 6.0]
    assert refined.parameters.iterations == (30, 30)
    truth = tiny_pair.truth
    brain = tiny_pair.interior
    err_one = np.linalg.norm(one_pass.displacement - truth, axis=-1)[brain].mean()
    err_refined = np.linalg.norm(refined.displacement - truth, axis=-1)[brain].mean()
    assert err_refined < 0.8 * err_one


def test_the_prediction_integrates_with_the_models_steps_a_refinement_with_the_engines(constant_checkpoint,
                                                                                       tiny_pair) -> None:
    """The network was trained with its own squarings (5 here); a refinement optimises with the engine's and
    the parameters' Adam step, and regularises with the parameters' codes (the preset's) rather than the
    model's."""
    fixed, moving = _pair(tiny_pair)
    params = RegistrationParameters(level_spacings=(6.0,), iterations=(1,), affine=False, integration_steps=3,
                                    alpha_prime=0.3, lambda_max=2.5, similarity="mse", device="cpu",
                                    learning_rate=1.5)
    one_pass = register(fixed, moving, params, model=constant_checkpoint)
    refined = register(fixed, moving, params, model=constant_checkpoint, refine=1)
    assert one_pass.parameters.integration_steps == 5
    assert refined.parameters.integration_steps == 3
    assert (refined.parameters.learning_rate, refined.parameters.iterations) == (1.5, (1,))
    model = (one_pass.model.alpha_prime, one_pass.model.lambda_max)
    assert (one_pass.parameters.alpha_prime, one_pass.parameters.lambda_max) == model != (0.3, 2.5)
    assert (refined.parameters.alpha_prime, refined.parameters.lambda_max) == (0.3, 2.5)
    assert refined.parameters.similarity == one_pass.parameters.similarity == "lncc"  # the model's similarity


def test_refine_and_model_errors(tiny_pair, constant_checkpoint, tmp_path) -> None:
    fixed, moving = _pair(tiny_pair)
    with pytest.raises(InputError, match="refine needs a learned model"):
        register(fixed, moving, RegistrationParameters(device="cpu"), refine=5)
    with pytest.raises(InputError, match="neither a shipped model"):
        register(fixed, moving, RegistrationParameters(device="cpu"), model=tmp_path / "missing")
    with pytest.raises(InputError, match="whole number"):
        register(fixed, moving, RegistrationParameters(device="cpu"), model=tmp_path, refine=-1)
    # more refinement iterations than a level may run: refused before the affine stage and the network ran
    events: list = []
    with pytest.raises(InputError, match=r"refine 200000: iterations 200000 is out of range"):
        register(fixed, moving, RegistrationParameters(device="cpu", level_spacings=(8.0,), iterations=(1,)),
                 model=constant_checkpoint, refine=200000, progress=events.append)
    assert events == []


def _run(geo, *argv, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(geo.svreg_command(*argv), cwd=str(cwd), env=geo.child_env(), capture_output=True,
                          text=True, timeout=300)


def test_cli_register_with_a_model_and_refinement(geo, tiny_pair, fast_preset, constant_checkpoint, tmp_path) \
        -> None:
    p = tiny_pair.paths
    out = tmp_path / "learned"
    proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--model", constant_checkpoint, "--refine", "3",
                "--preset", fast_preset, "--no-affine", "--device", "cpu", "--progress", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model constant-test + 3 refinement steps" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "learned" and report["refine_steps"] == 3
    assert report["model"]["network_spacing_mm"] == SPACING
    # --level-spacings sets the refinement's pyramid, without --iterations (which --refine sets)
    assert main(["register", str(p.fixed), str(p.moving), "-o", str(tmp_path / "one_level"), "--model",
                 str(constant_checkpoint), "--refine", "2", "--level-spacings", "8", "--preset", str(fast_preset),
                 "--no-affine", "--device", "cpu", "--threads", "1", "--outputs", "displacement", "--progress",
                 "none"]) == 0
    parameters = json.loads((tmp_path / "one_level" / "report.json").read_text())["parameters"]
    assert (parameters["level_spacings"], parameters["iterations"]) == ([8.0], [2])


def test_cli_one_way_predicts_in_one_direction(geo, tiny_pair, constant_checkpoint, tmp_path) -> None:
    """``--one-way``: the constant network's translation (symmetric by default: none); it and ``--precision``
    are recorded in the report."""
    p = tiny_pair.paths
    for flags, shift in (((), np.zeros(3)), (("--one-way", "--passes", "1", "--precision", "float32"),
                                             _expected_world_shift())):
        out = tmp_path / f"out{len(flags)}"
        proc = _run(geo, "register", p.fixed, p.moving, "-o", out, "--model", constant_checkpoint, *flags,
                    "--no-affine", "--device", "cpu", "--progress", "none", "--outputs", "displacement", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        parameters = json.loads((out / "report.json").read_text())["parameters"]
        assert parameters["symmetric_prediction"] is (not flags)
        assert parameters["network_precision"] == ("float32" if flags else "auto")
        field = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "displacement.nii.gz")))
        lps = shift * np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(field[3:-3, 3:-3, 3:-3].reshape(-1, 3).mean(0), lps, atol=0.02)


@pytest.mark.parametrize("argv, message", [
    (("--refine", "5"), "--refine needs --model"),
    (("--one-way",), "--one-way needs --model"),
    (("--passes", "2"), "--passes needs --model"),
    (("--precision", "float32"), "--precision needs --model"),
    (("--model", "no-such-model"), "neither a shipped model"),
    (("--model", "brain-unet-spr", "--refine", "200000"), "refine 200000: iterations 200000 is out of range"),
    (("--model", "brain-unet-spr", "--refine", "5", "--no-spr"), "--no-spr does not apply with --model"),
    (("--model", "brain-unet-spr", "--refine", "5", "--similarity", "mse"), "--similarity does not apply with --model"),
    (("--model", "brain-unet-spr", "--refine", "5", "--iterations", "5"), "--iterations does not apply with --model"),
    (("--model", "brain-unet-spr", "--level-spacings", "4"), "--level-spacings only applies to a refinement"),
    (("--model", "brain-unet-spr", "--control-spacing", "1"), "--control-spacing only applies to a refinement"),
    (("--model", "brain-unet-spr", "--moving-mask", "mask.nii.gz", "--no-affine"),
     "--moving-mask restricts the similarity of the affine stage and of a refinement"),
    (("--model", "brain-unet-spr", "--fixed-mask", "f.nii.gz", "--moving-mask", "m.nii.gz", "--no-affine"),
     "--fixed-mask and --moving-mask restrict the similarity of the affine stage and of a refinement"),
])
def test_cli_model_errors_come_before_any_work(tiny_pair, tmp_path, capsys, argv, message) -> None:
    """In process (the command line's own entry point): exit status 2, one plain line, no output folder."""
    p = tiny_pair.paths
    argv = [str(tmp_path / a) if a.endswith(".nii.gz") else a for a in argv]
    assert main(["register", str(p.fixed), str(p.moving), "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_batch_refuses_pairs_file_masks_the_network_would_not_use(tiny_pair, tmp_path, capsys) -> None:
    """``svreg register-batch --model --no-affine`` with a pairs file naming masks: the network alone ignores them,
    and they were taken without a word (``--fixed-mask`` was refused); refused the same way, before any pair."""
    p = tiny_pair.paths
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"fixed,moving,moving_mask\n{p.fixed},{p.moving},{p.moving_labels}\n")
    assert main(["register-batch", "--pairs", str(pairs), "-o", str(tmp_path / "out"), "--model", "brain-unet-spr",
                 "--no-affine", "--device", "cpu", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "moving_mask (pairs file) restricts the similarity of the affine stage" in err and "Traceback" not in err
    assert not any((tmp_path / "out").glob("*/report.json"))


def test_cli_a_bad_model_description_is_refused_before_the_images_are_read(tiny_pair, constant_checkpoint, tmp_path,
                                                                          capsys) -> None:
    """A checkpoint whose model.json the loss refuses is named first, not after reading (here: failing on) an image."""
    model = tmp_path / "model"
    shutil.copytree(constant_checkpoint, model)
    info = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**info, "similarity": "ncc"}))
    damaged = tmp_path / "fixed.nii.gz"
    damaged.write_bytes(b"not an image")
    assert main(["register", str(damaged), str(tiny_pair.paths.moving), "-o", str(tmp_path / "out"),
                 "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert "unknown similarity 'ncc'" in err and "cannot read" not in err and "Traceback" not in err


def test_cli_models_lists_shipped_models_name_first(geo, tmp_path) -> None:
    from svreg_core.models.zoo import shipped_models

    proc = _run(geo, "models", cwd=tmp_path)
    assert proc.returncode == 0
    names = list(shipped_models())
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == names
    listed = json.loads(_run(geo, "models", "--json", cwd=tmp_path).stdout)
    assert sorted(listed) == sorted(names)


def test_cli_models_describes_the_checkpoints_given(tiny_checkpoints, tmp_path, capsys) -> None:
    """``svreg models`` listed the shipped models only: a user's checkpoint (svreg train's RUN/best) could not be
    described without opening its model.json by hand. Checkpoints given are described instead, one line each, name
    first, with the hyper ranges; a folder that is no checkpoint is one plain line."""
    assert main(["models", str(tiny_checkpoints.plain), str(tiny_checkpoints.hyper / "model.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["plain-test", "hyper-test"], lines
    assert "architecture=unet-spr  grid=6.0 mm RAS" in lines[0] and "hyper alpha_prime=" not in lines[0]
    assert "hyper alpha_prime=" in lines[1] and "alpha_prime=0.175" in lines[1], lines[1]
    assert main(["models", "--json", str(tiny_checkpoints.hyper)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert list(listed) == ["hyper-test"] and listed["hyper-test"]["network_spacing_mm"] == 6.0
    assert main(["models", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"svreg: error: checkpoint {tmp_path}: model.json is missing\n"
