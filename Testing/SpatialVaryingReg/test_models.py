"""The *Method* choice: learned models (shipped or a checkpoint) through the module's GUI-free logic.

* shipped models are found by reading ``model.json`` files of the bundled engine's folder;
* a checkpoint path is checked before anything starts, with one plain line per mistake;
* the child's command line carries ``--model``/``--refine`` for the learned method only, and the
  engine's own parser accepts it;
* a bad checkpoint leaves no process, no temporary folder and an unchanged scene;
* the status line names the method and model from ``report.json`` (and copes without them);
* end to end with a real (untrained, tiny) checkpoint or a shipped model through the child process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from slicer_test_helpers import add_volume, array_ijk, blob_image, write_model

from SpatialVaryingRegLib import geometry, logic, models, runner

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -31.0
SHAPE = (32, 32, 32)
FAST = {"level_spacings": [8.0, 4.0], "iterations": [10, 10], "affine": False, "similarity": "mse"}


@pytest.fixture
def engine(tmp_path):
    """A bundled engine as CMake installs it next to the module: two valid shipped models and two broken."""
    root = tmp_path / "module" / runner.ENGINE_FOLDER
    (root / "svreg_core").mkdir(parents=True)
    (root / "svreg_core" / "__init__.py").write_text("")
    shipped = root / models.SHIPPED_SUBFOLDER
    write_model(shipped / "brain-unet-spr", name="brain-unet-spr")
    write_model(shipped / "abdomen-ct", name="abdomen-ct", architecture="transmorph-tvf-spr")
    write_model(shipped / "no-weights", weights=False)
    (shipped / "broken").mkdir()
    (shipped / "broken" / models.DESCRIPTION_FILE).write_text("{not json", encoding="utf-8")
    (shipped / "README.txt").write_text("not a model")
    return root


@pytest.fixture
def pair(scene):
    x = geometry.grid_points(SHAPE, AFFINE)
    u = np.stack([3.0 * np.sin(x[..., 1] / 12.0), 2.0 * np.cos(x[..., 2] / 15.0), 2.0 * np.sin(x[..., 0] / 11.0)], -1)
    return add_volume(scene, blob_image(x + u), AFFINE, "fixed"), add_volume(scene, blob_image(x), AFFINE, "moving")


def test_shipped_models_are_read_from_the_bundled_engine(engine, caplog):
    # the module finds the bundled engine next to itself, and its models inside it
    assert runner.engine_path(engine.parent) == engine
    found = models.shipped_models(engine)
    assert [m.name for m in found] == ["abdomen-ct", "brain-unet-spr"]  # sorted; incomplete ones skipped
    brain = found[1]
    assert brain.architecture == "unet-spr" and brain.network_spacing_mm == 4.0
    assert brain.folder == engine / models.SHIPPED_SUBFOLDER / "brain-unet-spr"
    assert brain.summary() == "brain-unet-spr: unet-spr, works at 4.0 mm, trained on OASIS, 100 T1 scans"
    assert "no-weights" in caplog.text and "broken" in caplog.text  # skipped with a reason in the log
    # the name of a shipped model is passed on as it is; an unknown one lists the shipped ones
    assert models.resolve_model("brain-unet-spr", engine) == "brain-unet-spr"
    with pytest.raises(models.ModelError, match=r"no shipped model 'brain-v2' \(shipped: abdomen-ct, brain-unet-spr\)"):
        models.resolve_model("brain-v2", engine)


def test_no_shipped_model(tmp_path):
    root = tmp_path / "engine"
    (root / "svreg_core").mkdir(parents=True)
    assert models.shipped_models(root) == []
    with pytest.raises(models.ModelError, match=r"no shipped model 'brain-unet-spr' \(no model is shipped with this "
                                                r"engine\); choose a shipped model or a checkpoint"):
        models.resolve_model(models.DEFAULT_MODEL, root)
    with pytest.raises(models.ModelError, match="choose a learned model"):
        models.resolve_model("  ", root)


def test_the_source_checkout_engine_and_its_models_are_found():
    assert models.shipped_models_folder() == runner.engine_path() / models.SHIPPED_SUBFOLDER
    for info in models.shipped_models():  # the models that ship (if any) are complete and readable
        assert models.checkpoint_folder(info.folder) == info.folder


def test_checkpoint_paths_are_checked_with_plain_messages(tmp_path, monkeypatch):
    ckpt = write_model(tmp_path / "run1" / "checkpoint", name="mine")
    for given in (ckpt, ckpt / models.DESCRIPTION_FILE, ckpt / models.WEIGHTS_FILE):
        assert models.checkpoint_folder(given) == ckpt
        assert models.resolve_model(str(given), tmp_path) == str(ckpt)  # a path, whatever the shipped models
    # relative to Slicer's working folder (the README's "runs/hyper/best"): made absolute, since the engine
    # child runs in its own folder
    monkeypatch.chdir(tmp_path)
    assert models.checkpoint_folder("run1/checkpoint") == ckpt.resolve()
    assert Path(models.resolve_model("run1/checkpoint", tmp_path)).is_absolute()
    no_weights = write_model(tmp_path / "no-weights", weights=False)
    no_json = write_model(tmp_path / "no-json")
    (no_json / models.DESCRIPTION_FILE).unlink()
    (tmp_path / "weights.pt").write_bytes(b"")
    bad_json = write_model(tmp_path / "bad-json")
    (bad_json / models.DESCRIPTION_FILE).write_text("{", encoding="utf-8")
    other = write_model(tmp_path / "other", format="something-else")
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "run1" / "missing" / "model.json": "does not exist",
        no_weights: "has no model.safetensors",
        no_json: "has no model.json",
        no_json / models.WEIGHTS_FILE: "has no model.json",
        tmp_path / "weights.pt": "weights.pt is not a checkpoint file",
        bad_json: "cannot be read as JSON",
        other: 'is not a model description \\(it needs "format": "svreg-checkpoint"\\)',
        "": "choose a checkpoint",
    }
    for given, expected in cases.items():
        with pytest.raises(models.ModelError, match=expected) as info:
            models.checkpoint_folder(given)
        assert "\n" not in str(info.value)


def test_command_line_has_model_and_refine_for_the_learned_method_only(tmp_path):
    base = dict(fixed=tmp_path / "f.nii.gz", moving=tmp_path / "m.nii.gz", output=tmp_path / "out")
    pairwise = runner.RegisterRequest(**base).arguments()
    assert "--model" not in pairwise and "--refine" not in pairwise
    learned = runner.RegisterRequest(**base, model="brain-unet-spr", refine=20).arguments()
    i = learned.index("--model")
    assert learned[i:i + 4] == ["--model", "brain-unet-spr", "--refine", "20"]
    assert learned[-2:] == ["--progress", "json"]

    from svreg_core.cli import build_parser

    parser, _ = build_parser()
    if not hasattr(parser.parse_args(["register", "f", "m", "-o", "o"]), "model"):
        pytest.skip("this engine's 'register' has no --model yet")
    ns = parser.parse_args(learned[2:])
    assert ns.model == "brain-unet-spr" and ns.refine == 20
    ns = parser.parse_args(pairwise[2:])
    assert ns.model is None and not ns.refine


def test_the_job_passes_the_chosen_model_to_the_engine(scene, pair, tmp_path):
    fixed, moving = pair
    ckpt = write_model(tmp_path / "ckpt")
    for settings, expected in (
            (logic.RegistrationSettings(), None),
            (logic.RegistrationSettings(method="learned", model=str(ckpt / "model.safetensors")), [str(ckpt), "20"]),
            (logic.RegistrationSettings(method="learned", model=str(ckpt), refine_steps=0), [str(ckpt), "0"])):
        job = logic.RegistrationJob(fixed, moving, settings=settings)
        job.validate()
        workdir = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
        workdir.mkdir()
        args = job.export_inputs(workdir).arguments()
        if expected is None:
            assert "--model" not in args and "--refine" not in args
        else:
            i = args.index("--model")
            assert [args[i + 1], args[i + 3]] == expected and args[i + 2] == "--refine"


def test_a_bad_checkpoint_stops_before_anything_starts(scene, pair, tmp_path):
    fixed, moving = pair
    temp_root = tmp_path / "temp"
    nodes_before = scene.GetNumberOfNodes()
    no_json = tmp_path / "empty-run"
    no_json.mkdir()
    for model, expected in ((str(tmp_path / "nowhere" / "model.json"), "does not exist"),
                            (str(no_json), "has no model.json"),
                            ("no-such-model", "no shipped model 'no-such-model'")):
        settings = logic.RegistrationSettings(method="learned", model=model, temp_root=str(temp_root))
        job = logic.RegistrationJob(fixed, moving, settings=settings)
        with pytest.raises(logic.RegistrationError, match=expected) as info:
            job.start()
        assert "\n" not in str(info.value)
        assert job.child is None and job.workdir is None
    for settings, expected in ((logic.RegistrationSettings(method="learned", refine_steps=501), "from 0 to 500"),
                               (logic.RegistrationSettings(method="learned", refine_steps=2.5), "whole number"),
                               (logic.RegistrationSettings(method="deep"), "use pairwise or learned"),
                               # the console's parameters: svreg register refuses them with --model, a preset file's
                               # are ignored (the model's own are used): refused before anything runs
                               (logic.RegistrationSettings(method="learned", overrides={"similarity": "mse"}),
                                "^the similarity cannot be chosen for a learned model"),
                               (logic.RegistrationSettings(method="learned", overrides={"spr": False, "affine": True}),
                                r"^a uniform regulariser \(spr off\) cannot be chosen for a learned model")):
        with pytest.raises(logic.RegistrationError, match=expected):
            logic.RegistrationJob(fixed, moving, settings=settings).start()
    assert not temp_root.exists()
    assert scene.GetNumberOfNodes() == nodes_before
    assert moving.GetParentTransformNode() is None


def test_status_line_names_the_method_and_model():
    base = {"metrics": {"folding_percent": 0.0}, "device": "cpu", "timing": {"total_s": 3.2}}
    learned = dict(base, method="learned", model={"name": "brain-unet-spr", "architecture": "unet-spr"},
                   refine_steps=20)
    assert logic.status_text("m to f (SVReg 1)", learned) == (
        "m to f (SVReg 1): learned model 'brain-unet-spr' (unet-spr) + 20 refinement steps, done in 3 s on cpu, "
        "folding (det J <= 0) 0.000 % of voxels.")
    assert logic.method_text(dict(learned, refine_steps=0)) == "learned model 'brain-unet-spr' (unet-spr)"
    assert logic.method_text(dict(base, method="learned")) == "learned model"
    assert logic.status_text("r", dict(base, method="pairwise")).startswith("r: pairwise optimisation, done in 3 s")
    assert logic.status_text("r", base).startswith("r: done in 3 s on cpu")  # a report without the keys
    warned = dict(base, warnings=["the images' orientations disagree by about 120°."])
    assert logic.status_text("r", warned, more=["TRE 1.20 mm"]) == (
        "r: done in 3 s on cpu, folding (det J <= 0) 0.000 % of voxels, TRE 1.20 mm. Warning: the images' "
        "orientations disagree by about 120°.")


def _learned_model(tmp_path) -> str:
    """A shipped model's name, else a freshly saved untrained tiny checkpoint (needs the engine's models)."""
    shipped = models.shipped_models()
    if shipped:
        return shipped[0].name
    checkpoint = pytest.importorskip("svreg_core.models.checkpoint",
                                     reason="no shipped model and the engine cannot write checkpoints")
    from svreg_core.models.registry import build_model

    network = build_model("unet-spr", {"encoder_features": [4, 4], "decoder_features": [4, 4, 4],
                                       "lambda_features": []})
    info = checkpoint.ModelInfo(architecture=network.architecture, config=network.config, network_spacing_mm=4.0,
                                size_multiple=network.size_multiple, normalization="robust_normalize",
                                similarity="mse", lncc_window=5, prior="beta", alpha_prime=0.1, lambda_max=1.0,
                                spr=True, integration_steps=5, svreg_version="test",
                                training={"data": "untrained (test)"}, name="tiny-test")
    return str(checkpoint.save_checkpoint(tmp_path / "tiny-test", network, info))


@pytest.mark.skipif(os.name == "nt", reason="process-group checks are POSIX-only here")
def test_learned_method_end_to_end(scene, pair, tmp_path):
    fixed, moving = pair
    model = _learned_model(tmp_path)
    lines = []
    # the model brings its similarity (FAST's would be refused, as svreg register refuses --similarity)
    learned = {key: value for key, value in FAST.items() if key != "similarity"}
    settings = logic.RegistrationSettings(overrides=learned, method="learned", model=model, refine_steps=3,
                                          device="cpu", temp_root=str(tmp_path / "temp"))
    out = logic.RegistrationJob(fixed, moving, settings=settings, on_log=lines.append).run(timeout=300)

    assert out.report["method"] == "learned" and out.report["model"]["architecture"] == "unet-spr"
    assert out.report.get("refine_steps") == 3
    name = out.report["model"].get("name") or Path(model).name
    assert f"learned model '{name}'" in out.status_text and "3 refinement steps" in out.status_text
    assert any(line.startswith("Learned model ") for line in lines)
    stored = json.loads(out.transform.GetAttribute(logic.REPORT_ATTRIBUTE))
    assert stored["method"] == "learned" and stored["model"]["architecture"] == "unet-spr"
    # the λ overlay is the network's (refined) map, on the fixed grid like every output
    assert moving.GetParentTransformNode() is out.transform
    lam = array_ijk(out.lambda_map)
    assert lam.shape == SHAPE and lam.min() > 0 and lam.max() <= 1.0 + 1e-6
    assert np.allclose(geometry.world_ijk_to_ras(out.lambda_map), AFFINE, atol=1e-4)
    assert out.report["metrics"]["folding_percent"] < 1.0
    assert list((tmp_path / "temp").iterdir()) == []
