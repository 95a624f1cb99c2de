"""TrainingConfig: the paper's defaults, YAML/JSON round trips, one-line errors, the learning-rate schedule."""
from __future__ import annotations

import json

import pytest

from svreg_core.errors import InputError
from svreg_core.optim.parameters import RegistrationParameters
from svreg_core.training.config import DataSource, TrainingConfig, ValidationConfig, load_config, save_config


def test_defaults_follow_the_paper() -> None:
    c = TrainingConfig()
    assert (c.architecture, c.network_spacing_mm, c.grid_shape) == ("unet-spr", 2.0, (80, 96, 96))
    assert (c.learning_rate, c.lr_power, c.weight_decay, c.amsgrad) == (1e-4, 0.9, 0.0, True)
    assert (c.integration_steps, c.batch_size, c.num_workers) == (7, 1, 2)
    assert (c.similarity, c.prior, c.spr) == ("lncc", "beta", True)


def test_learning_rate_decays_polynomially_per_epoch() -> None:
    c = TrainingConfig(learning_rate=1e-3, epochs=10, lr_power=0.9)
    assert c.learning_rate_at(0) == 1e-3
    assert c.learning_rate_at(5) == pytest.approx(1e-3 * 0.5 ** 0.9, rel=1e-12)
    assert c.learning_rate_at(9) == pytest.approx(1e-3 * 0.1 ** 0.9, rel=1e-12)


def test_spr_loss_is_the_one_the_pairwise_optimiser_builds() -> None:
    c = TrainingConfig(similarity="mse", lncc_window=7, prior="gaussian", alpha_prime=0.3, lambda_max=2.0, spr=False)
    params = RegistrationParameters(similarity="mse", lncc_window=7, prior="gaussian", alpha_prime=0.3,
                                    lambda_max=2.0, spr=False)
    assert c.spr_loss() == params.spr_loss()
    assert TrainingConfig().spr_loss() != params.spr_loss()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix) -> None:
    c = TrainingConfig(model={"encoder_features": [8, 8]}, grid_shape=(32, 48, 64), epochs=3, steps_per_epoch=5,
                       data={"sources": [{"kind": "folder", "path": "subjects", "atlas": "atlas.nii.gz"},
                                         {"kind": "synthetic", "path": "labels", "weight": 0.5, "length": 20,
                                          "synthesis": {"velocity_std_max": 2.0}}]},
                       validation={"fraction": 0.2, "labels": [2, 3]})
    path = save_config(c, tmp_path / f"config{suffix}")
    assert load_config(path) == c
    assert c.data.sources[1] == DataSource("synthetic", "labels", weight=0.5, length=20,
                                           synthesis={"velocity_std_max": 2.0})
    assert c.validation == ValidationConfig(fraction=0.2, labels=(2, 3))


def test_yaml_file_written_by_hand(tmp_path) -> None:
    path = tmp_path / "train.yml"
    path.write_text("architecture: unet-spr\ngrid_shape: [16, 16, 16]\nlambda_max: 1\n"
                    "data:\n  sources:\n    - {kind: csv, path: pairs.csv}\n")
    c = load_config(path)
    assert c.grid_shape == (16, 16, 16) and c.lambda_max == 1.0 and c.data.sources[0].kind == "csv"


@pytest.mark.parametrize("values, message", [
    ({"epoch": 3, "lr": 1}, "unknown training option(s): epoch, lr"),
    ({"data": {"sources": [{"kind": "folder", "path": "x", "atlass": "a"}]}}, "unknown data source option(s): atlass"),
    ({"validation": {"fraction": 0.1, "pair": 3}}, "unknown validation option(s): pair"),
    ({"data": {"sources": [{"kind": "nifti", "path": "x"}]}}, "unknown data kind 'nifti'"),
    ({"data": {"sources": [{"kind": "templates", "path": "x"}]}}, "takes no path"),
    ({"data": {"sources": [{"kind": "csv"}]}}, "needs a path"),
    ({"data": {"sources": [{"kind": "csv", "path": "p.csv", "atlas": "a"}]}}, "atlas is only meaningful"),
    ({"lncc_window": 4}, "odd number"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"grid_shape": [16, 16]}, "three voxel counts"),
    ({"learning_rate": -1}, "must be positive"),
    ({"lambda_max": 0}, "must be positive"),
    ({"spr": "yes"}, "true or false"),
    ({"label_weight": -0.5}, "label weight must not be negative"),
    ({"batch_size": 1.5}, "whole number"),
    ({"model": {"uniform": True}}, "spr: false"),
    # the options one sets in 'model', not also 'uniform' and 'hyper', which the file sets elsewhere
    ({"model": {"widths": [8]}}, "unknown model option(s) widths for architecture 'unet-spr' (accepted: "
                                 "decoder_features, encoder_features, lambda_features)."),
    ({"architecture": "unet"}, "unknown network architecture 'unet' (known: transmorph-tvf-spr, unet-spr)"),
    ({"validation": {"fraction": 1.0}}, "below 1"),
    ({"init_fresh": ["lambda_head"]}, "set init weights (--init) too"),
    ({"init_weights": "default", "init_fresh": "lambda_head"}, "list of submodule names"),
    # values svreg register refuses: the trained model could never be used
    ({"integration_steps": 24}, "integration steps 24 is outside what svreg register accepts (0 to 20 squarings)"),
    ({"lambda_max": 2000}, "lambda max 2000 is outside what svreg register accepts (0 to 1000)"),
    ({"lncc_window": 53}, "lncc window 53 is outside"),
    ({"hyper": {"alpha_prime": [0.05, 0.5], "lambda_max": [0.5, 5000]}, "lambda_max": 1.0},
     "lambda max 5000 is outside"),
])
def test_bad_values_raise_one_line(tmp_path, values, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(InputError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(InputError, match="configuration file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a mapping"):
        load_config(tmp_path / "list.json")


def test_differences_ignore_runtime_settings() -> None:
    a = TrainingConfig(epochs=3)
    assert a.differences(a.replace(num_workers=0, device="cpu")) == []
    assert a.differences(a.replace(epochs=4, alpha_prime=0.1)) == ["alpha_prime", "epochs"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("c.yaml", "epochs: 300\nlearning_rate: 1.0e-4\nepochs: 5\n",
     r"^configuration file .*c\.yaml is not valid YAML \('epochs' is given twice, on lines 1 and 3; keep one\)"),
    ("c.yaml", "data:\n  prealign: true\n  sources: [{kind: folder, path: a, path: b}]\n",
     r"'path' is given twice, on lines 3 and 3"),
    ("c.json", '{"epochs": 300, "data": {"sources": []}, "epochs": 5}',
     r"^configuration file .*c\.json is not valid JSON \('epochs' is given twice in one object; keep one\)"),
])
def test_a_setting_given_twice_is_refused(tmp_path, name, text, message) -> None:
    """A configuration file giving a setting twice (an edited copy, 'epochs: 5' added at the end) was read with the
    last value and no word; refused in one line naming the setting. YAML merge keys may still be overridden."""
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(tmp_path / name)
    (tmp_path / "merge.yaml").write_text("data: {<<: {prealign: false, augment: false}, augment: true}\n")
    merged = load_config(tmp_path / "merge.yaml").data
    assert (merged.prealign, merged.augment) == (False, True)
