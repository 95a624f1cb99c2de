"""SynthMorph-style synthesis: reproducible per generator seed, images drawn from the deformed labels,
labels deformed like an independent one-hot warp, diffeomorphic random deformations, skull-stripping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from svreg_core.errors import InputError
from svreg_core.metrics import jacobian_determinant
from svreg_core.training.synthesis import (
    SynthesisConfig,
    deform_labels,
    random_deformation,
    random_velocity,
    skull_strip,
    synth_pair,
    synthesize_image,
)
from svreg_core.transforms import warp

SHAPE = (24, 24, 24)

#: No texture, blur, bias, noise or gamma: images are exactly piecewise constant per label.
FLAT = SynthesisConfig(label_std_max=0.0, blur_sigma=(0.0, 0.0), bias_std_max=0.0, noise_std_max=0.0,
                       gamma_std=0.0, skull_strip_probability=0.0)


@pytest.fixture(scope="module")
def labels(make_labels) -> torch.Tensor:
    return torch.from_numpy(make_labels(SHAPE, 0)).long()


def _pair(labels: torch.Tensor, seed: int, config: SynthesisConfig = SynthesisConfig()) -> dict:
    return synth_pair(labels, labels, torch.Generator().manual_seed(seed), config)


def test_pair_is_reproducible_per_seed_and_differs_across_seeds(labels) -> None:
    a, b, c = _pair(labels, 3), _pair(labels, 3), _pair(labels, 4)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.allclose(a["fixed"], c["fixed"])
    assert not torch.equal(a["fixed_labels"], c["fixed_labels"])
    # the two images of one pair have their own deformation and their own intensities
    assert not torch.equal(a["fixed_labels"], a["moving_labels"])
    assert not torch.allclose(a["fixed"], a["moving"])


def test_pair_types_ranges_and_global_rng_untouched(labels) -> None:
    before = torch.get_rng_state()
    pair = _pair(labels, 0)
    assert torch.equal(before, torch.get_rng_state())
    for role in ("fixed", "moving"):
        image = pair[role]
        assert image.shape == (1, *SHAPE) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) == pytest.approx(1.0)
        assert pair[f"{role}_labels"].shape == SHAPE and pair[f"{role}_labels"].dtype == torch.int64


def test_image_is_constant_within_each_deformed_label(labels) -> None:
    pair = _pair(labels, 7, FLAT)
    for role in ("fixed", "moving"):
        image, deformed = pair[role][0], pair[f"{role}_labels"]
        means = []
        for value in deformed.unique():
            inside = image[deformed == value]
            assert float(inside.max() - inside.min()) < 1e-5, (role, int(value))
            means.append(float(inside.mean()))
        assert len(set(np.round(means, 4))) == len(means)  # every label got its own intensity


def test_deformed_labels_equal_an_independent_one_hot_warp(labels) -> None:
    pair = _pair(labels, 11, SynthesisConfig(velocity_std_max=4.0, skull_strip_probability=0.0))
    values = labels.unique()
    one_hot = (labels[None] == values.view(-1, 1, 1, 1)).float()[None]  # (1, L, I, J, K)
    for role in ("fixed", "moving"):
        displacement = pair[f"{role}_displacement"]
        assert float(displacement.abs().max()) > 1.0  # a real deformation
        votes = warp(one_hot, displacement, padding_mode="zeros")[0]
        expected = values[votes.argmax(0)]
        agree = (expected == pair[f"{role}_labels"]).float().mean()
        assert float(agree) > 0.999
        assert torch.equal(deform_labels(labels, displacement), pair[f"{role}_labels"])


def test_random_deformation_is_diffeomorphic_where_the_velocity_itself_folds() -> None:
    config = SynthesisConfig()  # the defaults: velocity std up to 3 voxels, control points 8 voxels apart
    to_world = lambda d: d[0].permute(1, 2, 3, 0).double().numpy()  # noqa: E731 (1 mm identity grid)
    velocity_folds = []
    for seed in range(4):
        displacement = random_deformation(SHAPE, torch.Generator().manual_seed(seed), config)
        assert jacobian_determinant(to_world(displacement), np.eye(4))[1:-1, 1:-1, 1:-1].min() > 0, seed
        # the same draws up to the velocity (std ~ U(0, max), then random_velocity): x + v(x) may fold
        generator = torch.Generator().manual_seed(seed)
        std = config.velocity_std_max * float(torch.rand((), generator=generator))
        velocity = random_velocity(SHAPE, generator, std_voxels=std, control_spacing=config.velocity_spacing)
        velocity_folds.append(jacobian_determinant(to_world(velocity), np.eye(4)).min() < 0)
        if std > 1.0:
            assert float(displacement.abs().max()) > 2.0
    assert any(velocity_folds)


def test_random_velocity_has_the_requested_std_at_its_control_points() -> None:
    velocity = random_velocity((33, 41, 25), torch.Generator().manual_seed(0), std_voxels=2.0, control_spacing=8)
    control = velocity[0, :, ::8, ::8, ::8]  # control points fall on voxels: (n - 1) is a multiple of 8
    assert control.numel() == 3 * 5 * 6 * 4
    assert float(control.std()) == pytest.approx(2.0, rel=0.15)
    # between control points the field is their trilinear interpolation: smooth
    assert float(velocity.diff(dim=2).abs().max()) < float(control.abs().max()) / 2


def test_skull_strip_zeroes_extra_cerebral_labels_and_the_background() -> None:
    labels = torch.tensor([0, 2, 24, 41, 118, 130, 165, 258, 502, 530, 1035, 2035])
    stripped = skull_strip(labels)
    assert stripped.tolist() == [0, 2, 24, 41, 0, 0, 0, 0, 0, 0, 1035, 2035]


def test_stripped_pairs_have_zero_background_and_no_extra_cerebral_labels(labels) -> None:
    pair = _pair(labels, 2, SynthesisConfig(skull_strip_probability=1.0))
    for role in ("fixed", "moving"):
        assert int(pair[f"{role}_labels"].max()) < 500
        assert float(pair[role][0][pair[f"{role}_labels"] == 0].abs().max()) == 0.0
    unstripped = _pair(labels, 2, SynthesisConfig(skull_strip_probability=0.0))
    assert 530 in unstripped["fixed_labels"].unique().tolist()


def test_synthesize_image_gives_background_its_own_intensity_unless_zeroed(labels) -> None:
    generator = torch.Generator().manual_seed(1)
    image = synthesize_image(labels, generator, FLAT)
    background = image[0][labels == 0]
    assert float(background.min()) > 0.0 and float(background.max() - background.min()) < 1e-5
    zeroed = synthesize_image(labels, torch.Generator().manual_seed(1), FLAT, zero_background=True)
    assert float(zeroed[0][labels == 0].max()) == 0.0


def test_config_from_dict_validates() -> None:
    config = SynthesisConfig.from_dict({"blur_sigma": [0.5, 1.5], "velocity_std_max": 2})
    assert config.blur_sigma == (0.5, 1.5) and config.velocity_std_max == 2
    with pytest.raises(InputError, match="unknown synthesis option"):
        SynthesisConfig.from_dict({"velocity_std": 1.0})
    with pytest.raises(InputError, match="non-negative"):
        SynthesisConfig(noise_std_max=-0.1)
    with pytest.raises(InputError, match="at most 1"):
        SynthesisConfig(skull_strip_probability=1.5)
    with pytest.raises(InputError, match="low <= high"):
        SynthesisConfig(blur_sigma=(2.0, 1.0))
    with pytest.raises(InputError, match="integration_steps must be a whole number of at least 1"):
        SynthesisConfig(integration_steps=0)


@pytest.mark.parametrize("shared", [True, False])
def test_pairs_share_the_contrast_only_when_asked(labels, shared) -> None:
    """Mono-modal pairs (the SPR similarities assume them) draw both images from one intensity table."""
    plain = SynthesisConfig(label_std_max=0.0, velocity_std_max=0.0, blur_sigma=(0.0, 0.0), bias_std_max=0.0,
                            noise_std_max=0.0, gamma_std=0.0, skull_strip_probability=0.0, shared_contrast=shared)
    pair = synth_pair(labels, labels, torch.Generator().manual_seed(5), plain)
    fixed, moving = pair["fixed"][0], pair["moving"][0]
    same = [torch.allclose(fixed[pair["fixed_labels"] == v].mean(), moving[pair["moving_labels"] == v].mean(),
                           atol=1e-5) for v in torch.unique(pair["fixed_labels"]).tolist()]
    assert all(same) if shared else not all(same)


def test_unstripped_image_is_min_max_normalised(labels) -> None:
    """SynthMorph min-max normalises before the gamma: the darkest label becomes 0, as the background of a
    robust-normalised real image does, even when the background (label 0) has its own intensity."""
    values = {0: 0.5, 2: 0.6, 17: 0.4, 24: 0.9, 41: 0.8, 530: 0.3}
    means = torch.tensor(list(values.values()))
    contrast = (torch.tensor(list(values)), means, torch.zeros_like(means))
    image = synthesize_image(labels, torch.Generator().manual_seed(0), FLAT, contrast=contrast)
    for value, mean in values.items():
        expected = (mean - 0.3) / (0.9 - 0.3)
        np.testing.assert_allclose(image[0][labels == value].numpy(), expected, atol=1e-6, err_msg=str(value))


@pytest.mark.parametrize("shared", [True, False])
def test_intensities_depend_on_the_labels_present_not_their_values(labels, shared) -> None:
    """One random intensity per label present: renumbering the labels in the same order gives the same pair, and
    identifiers near 2**31 (a table indexed by value would hold 2 billion entries, 17 GB) cost no more."""
    config = SynthesisConfig(skull_strip_probability=0.0, shared_contrast=shared)
    pair = synth_pair(labels, labels, torch.Generator().manual_seed(4), config)
    for renumber in (lambda v: v * 3 + 7, lambda v: v * 4_000_000):
        renumbered = torch.where(labels == 0, 0, renumber(labels))
        other = synth_pair(renumbered, renumbered, torch.Generator().manual_seed(4), config)
        for role in ("fixed", "moving"):
            assert torch.equal(other[role], pair[role]), role
            assert torch.equal(other[f"{role}_labels"], torch.where(pair[f"{role}_labels"] == 0, 0,
                                                                    renumber(pair[f"{role}_labels"]))), role


def test_zeroed_background_is_dark_before_the_blur(labels) -> None:
    """A skull-stripped image's brain edge blurs into black, never into the intensity the background would have had:
    with every brain label at one intensity, no voxel is brighter than the brain's inside."""
    values = torch.tensor([0, 2, 17, 24, 41, 530])
    means = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    blurred = dataclasses.replace(FLAT, blur_sigma=(1.0, 1.0))
    image = synthesize_image(labels, torch.Generator().manual_seed(0), blurred, zero_background=True,
                             contrast=(values, means, torch.zeros_like(means)))[0]
    centre = tuple(n // 2 for n in labels.shape)
    assert float(image[centre]) == pytest.approx(1.0) and float(image.max()) == pytest.approx(1.0)
    assert float(image[labels == 0].max()) == 0.0
    edge = (labels != 0) & (image < 0.99)  # the brain's outer voxels, darkened by the blur
    assert int(edge.sum()) > 100
