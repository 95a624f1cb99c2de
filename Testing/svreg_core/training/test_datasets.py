"""Training datasets: samples land on the RAS training grid at the right world position (oblique and
flipped inputs), affine pre-alignment, flips, reproducibility per (seed, epoch, index), the pair-list
builders, subject-wise splits, DataLoader workers, and real SynthSeg label maps."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from svreg_core.errors import InputError
from svreg_core.image import Image, load_image
from svreg_core.image.network_grid import network_grid
from svreg_core.progress import ProgressEvent
from svreg_core.training.datasets import (
    PairListDataset,
    PairSpec,
    SyntheticPairDataset,
    TemplateAugmentDataset,
    pairs_from_csv,
    pairs_from_dataset_json,
    pairs_from_folder,
    split_pairs,
)
from svreg_core.training.sources import TemplateSpec
from svreg_core.training.synthesis import SynthesisConfig, skull_strip

SYNTHSEG = Path(__file__).resolve().parents[4] / "shared" / "data" / "synthseg_label_maps"

#: Two blobs (RAS mm): a bright one and a dimmer one, so the foreground box is not centred on either.
BLOB_A = np.array([6.0, -10.0, 14.0])
BLOB_B = np.array([-14.0, 12.0, -6.0])
SIGMA_MM = 4.0


def _blobs(points: np.ndarray, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Image of the two blobs at RAS ``points`` ``(..., 3)``, displaced by ``shift`` mm."""
    out = np.zeros(points.shape[:-1])
    for centre, height in ((BLOB_A, 1.0), (BLOB_B, 0.5)):
        out += height * np.exp(-(((points - centre - shift) ** 2).sum(-1)) / (2 * SIGMA_MM ** 2))
    return np.where(out > 0.02, out, 0.0).astype(np.float32)


def _oblique_grid(geo, spacing, degrees: float, flip: int, shape=(26, 24, 22)) -> np.ndarray:
    linear = geo.rotation([1.0, 0.5, -0.3], degrees) @ np.diag([1.0, 1.0, 1.0] if flip < 0 else
                                                             [-1.0 if a == flip else 1.0 for a in range(3)])
    linear = linear @ np.diag(spacing)
    return geo.make_affine(linear, -linear @ ((np.asarray(shape) - 1) / 2.0) + np.array([-3.0, 2.0, 4.0]))


def _write_blob_subject(geo, folder: Path, name: str, affine: np.ndarray, shape=(26, 24, 22),
                        shift=(0.0, 0.0, 0.0)) -> tuple[Path, Path]:
    """Blob image and a label map (5 around blob A, 7 around blob B, 6 mm spheres) on the same grid."""
    points = geo.world_points(shape, affine)
    labels = np.zeros(shape, np.int16)
    labels[np.linalg.norm(points - BLOB_A - shift, axis=-1) <= 6.0] = 5
    labels[np.linalg.norm(points - BLOB_B - shift, axis=-1) <= 6.0] = 7
    image = geo.save_nifti(_blobs(points, shift), affine, folder / f"{name}.nii.gz")
    return image, geo.save_nifti(labels, affine, folder / f"{name}_seg.nii.gz")


def _world_centroid(values: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(values > 0).astype(np.float64)
    weights = values[values > 0].astype(np.float64)
    return nib.affines.apply_affine(affine, (ijk * weights[:, None]).sum(0) / weights.sum())


def test_pairs_land_on_the_ras_grid_at_their_world_position(geo, tmp_path) -> None:
    fixed, fixed_seg = _write_blob_subject(geo, tmp_path, "a", _oblique_grid(geo, (2.0, 2.2, 1.8), 25.0, 1))
    moving, moving_seg = _write_blob_subject(geo, tmp_path, "b", _oblique_grid(geo, (1.7, 2.0, 2.4), -40.0, 0),
                                             shape=(30, 26, 22))
    shape = (24, 28, 20)
    dataset = PairListDataset([PairSpec(fixed, moving, fixed_seg, moving_seg)], 2.0, shape, prealign=False)
    sample = dataset[0]
    assert sample["fixed"].shape == (1, *shape) and sample["fixed"].dtype == torch.float32
    assert sample["fixed_labels"].shape == shape and sample["fixed_labels"].dtype == torch.int64
    assert 0.0 <= float(sample["fixed"].min()) and float(sample["fixed"].max()) <= 1.0
    grid = network_grid(load_image(fixed), 2.0, shape=shape)
    assert np.allclose(grid.affine[:3, :3], 2.0 * np.eye(3))  # RAS-aligned, isotropic
    for role in ("fixed", "moving"):
        image = sample[role][0].numpy()
        bright = np.where(image > 0.6 * image.max(), image, 0.0)
        np.testing.assert_allclose(_world_centroid(bright, grid.affine), BLOB_A, atol=0.8)
        for value, centre in ((5, BLOB_A), (7, BLOB_B)):
            mask = (sample[f"{role}_labels"] == value).numpy().astype(float)
            np.testing.assert_allclose(_world_centroid(mask, grid.affine), centre, atol=0.8)
    assert sample["name"] == f"{tmp_path.name}/a<-{tmp_path.name}/b"


def test_prealignment_brings_the_moving_image_onto_the_fixed_one(geo, tmp_path) -> None:
    shift = np.array([5.0, -4.0, 3.0])
    shape = (34, 32, 30)
    fixed, _ = _write_blob_subject(geo, tmp_path, "a", _oblique_grid(geo, (2.0, 2.0, 2.0), 10.0, -1, shape), shape)
    moving, moving_seg = _write_blob_subject(geo, tmp_path, "b", _oblique_grid(geo, (2.0, 2.0, 2.0), -20.0, 2, shape),
                                             shape, shift=shift)
    dataset = PairListDataset([PairSpec(fixed, moving, None, moving_seg)], 2.0, (24, 24, 24))
    assert dataset.alignments == {}
    sample = dataset[0]
    matrix = dataset.alignments[(str(fixed), str(moving))]
    np.testing.assert_allclose(matrix[:3, 3] + (matrix[:3, :3] - np.eye(3)) @ BLOB_A, shift, atol=1.0)
    grid = network_grid(load_image(fixed), 2.0, shape=(24, 24, 24))
    mask = (sample["moving_labels"] == 5).numpy().astype(float)
    np.testing.assert_allclose(_world_centroid(mask, grid.affine), BLOB_A, atol=1.0)
    assert "fixed_labels" not in sample
    # the cached matrix is reused (and can be handed to a new dataset)
    again = PairListDataset(dataset.pairs, 2.0, (24, 24, 24), alignments=dataset.alignments)
    assert torch.equal(again[0]["moving"], sample["moving"])


def test_inter_subject_pairs_are_aligned_through_one_hub_image(geo, tmp_path) -> None:
    """N subjects' N (N - 1) inter-subject pairs take N - 1 affine registrations (each image to the hub, the first
    by path), the pairs' matrices composed from them; atlas-to-subject pairs (as many as the images less one) are
    aligned each; a pair's own matrix from an earlier run's cache is used as it is."""
    shape = (34, 32, 30)
    shifts = {"a": np.zeros(3), "b": np.array([5.0, -4.0, 3.0]), "c": np.array([-3.0, 4.0, 2.0])}
    files = {name: _write_blob_subject(geo, tmp_path, name, _oblique_grid(geo, (2.0, 2.0, 2.0), angle, -1, shape),
                                       shape, shift=shift)[0]
             for (name, shift), angle in zip(shifts.items(), (10.0, -20.0, 30.0))}
    pairs = [PairSpec(files[f], files[m]) for f in "abc" for m in "abc" if f != m]
    dataset = PairListDataset(pairs, 2.0, (24, 24, 24))
    assert dataset.hub == str(files["a"]) and dataset.registrations == 2
    events: list[ProgressEvent] = []
    assert set(dataset.precompute_alignments(events.append)) == {(str(files["a"]), str(files[m])) for m in "bc"}
    assert [(e.step, e.total) for e in events] == [(1, 2), (2, 2)]
    assert "/b to " in events[0].message and events[0].message.endswith("/a")
    for index, pair in enumerate(pairs):  # fixed-world to moving-world: the moving blob's shift less the fixed one's
        matrix = dataset.alignment(index)
        expected = shifts[Path(pair.moving).name[0]] - shifts[Path(pair.fixed).name[0]]
        np.testing.assert_allclose(matrix[:3, 3] + (matrix[:3, :3] - np.eye(3)) @ BLOB_A, expected, atol=1.0)
    assert set(dataset.alignments) == {(str(files["a"]), str(files[m])) for m in "bc"}  # nothing else computed
    earlier = {(str(files["b"]), str(files["c"])): np.eye(4)}  # a run that began with per-pair alignments
    assert np.array_equal(PairListDataset(pairs, 2.0, (24, 24, 24), alignments=earlier).alignment(3), np.eye(4))
    atlas = PairListDataset([PairSpec(files["a"], files[m]) for m in "bc"], 2.0, (24, 24, 24))
    assert atlas.hub is None and atlas.registrations == 2


def test_pairs_of_unconnected_groups_are_not_aligned_through_a_hub(tmp_path) -> None:
    """A pair list of two cohorts (inter-subject pairs within each, none between them) has no image every other one
    can be aligned to: a hub from one cohort would register the other cohort's images to it (another anatomy or
    contrast). Each pair is aligned on its own, as before the hub; one cohort still goes through its hub."""
    group = {cohort: [tmp_path / f"{cohort}{i}.nii.gz" for i in range(3)] for cohort in ("brain", "lung")}
    pairs = [PairSpec(f, m) for files in group.values() for f in files for m in files if f != m]
    both = PairListDataset(pairs, 2.0, (8, 8, 8))  # no file is read: the hub is chosen from the paths
    assert both.hub is None and both.registrations == 12
    brain = PairListDataset(pairs[:6], 2.0, (8, 8, 8))
    assert brain.hub == str(group["brain"][0]) and brain.registrations == 2


def test_flips_apply_the_same_axes_to_both_images_and_labels(geo, tmp_path) -> None:
    fixed, fixed_seg = _write_blob_subject(geo, tmp_path, "a", _oblique_grid(geo, (2.0, 2.0, 2.0), 5.0, -1))
    moving, moving_seg = _write_blob_subject(geo, tmp_path, "b", _oblique_grid(geo, (2.0, 2.0, 2.0), 5.0, 0))
    pairs = [PairSpec(fixed, moving, fixed_seg, moving_seg)]
    plain = PairListDataset(pairs, 2.0, (20, 20, 20), prealign=False)[0]
    augmented = PairListDataset(pairs, 2.0, (20, 20, 20), prealign=False, augment=True, seed=3)
    seen = set()
    for epoch in range(6):
        augmented.set_epoch(epoch)
        sample = augmented[0]
        matches = [axes for axes in ([], [0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2])
                   if torch.equal(sample["fixed"], plain["fixed"].flip([a + 1 for a in axes]))]
        assert len(matches) == 1
        axes = matches[0]
        seen.add(tuple(axes))
        assert torch.equal(sample["moving"], plain["moving"].flip([a + 1 for a in axes]))
        assert torch.equal(sample["moving_labels"], plain["moving_labels"].flip(axes))
        assert torch.equal(sample["fixed_labels"], plain["fixed_labels"].flip(axes))
        assert torch.equal(sample["fixed"], augmented[0]["fixed"])  # same epoch and index: same draws
    assert len(seen) > 1


@pytest.fixture
def label_maps(geo, make_labels, tmp_path) -> list[Path]:
    """Three head-like label maps on oblique 2 mm grids of different orientations."""
    paths = []
    for seed, (degrees, flip) in enumerate(((20.0, 1), (-15.0, 0), (0.0, 2))):
        affine = _oblique_grid(geo, (2.0, 2.0, 2.0), degrees, flip, (26, 28, 24))
        paths.append(geo.save_nifti(make_labels((26, 28, 24), seed), affine, tmp_path / f"map{seed}.nii.gz"))
    return paths


def test_synthetic_pairs_are_reproducible_and_centred_on_the_brain(geo, label_maps) -> None:
    still = SynthesisConfig(velocity_std_max=0.0, skull_strip_probability=0.0, same_map_probability=0.0)
    dataset = SyntheticPairDataset(label_maps, 2.0, (24, 24, 24), length=5, synthesis=still, seed=1)
    sample = dataset[2]
    assert sample["fixed"].shape == (1, 24, 24, 24) and sample["moving_labels"].dtype == torch.int64
    first, second = sample["name"].removeprefix("synth:").split("<-")
    assert first != second
    # no deformation: the fixed labels are the map on the grid centred on its brain (labels 2, 41, 17)
    source = load_image(label_maps[[p.name for p in label_maps].index(f"{first}.nii.gz")], labels=True)
    brain = np.isin(source.data, (2, 41, 17))
    grid = network_grid(Image(brain.astype(np.float32), source.affine), 2.0, shape=(24, 24, 24))
    inner = (sample["fixed_labels"] == 17).numpy().astype(float)
    expected = _world_centroid((source.data == 17).astype(float), source.affine)
    np.testing.assert_allclose(_world_centroid(inner, grid.affine), expected, atol=1.0)
    assert set(sample["fixed_labels"].unique().tolist()) <= {0, 2, 17, 24, 41, 530}

    fresh = SyntheticPairDataset(label_maps, 2.0, (24, 24, 24), length=5, synthesis=still, seed=1)
    assert torch.equal(fresh[2]["fixed"], sample["fixed"]) and fresh[2]["name"] == sample["name"]
    fresh.set_epoch(1)
    assert not torch.equal(fresh[2]["fixed"], sample["fixed"])
    same = SyntheticPairDataset(label_maps[:2], 2.0, (24, 24, 24), length=3,
                                synthesis=SynthesisConfig(same_map_probability=1.0))
    first, second = same[0]["name"].removeprefix("synth:").split("<-")
    assert first == second
    with pytest.raises(IndexError):
        same[3]


def test_an_unusable_label_map_is_named(geo, label_maps, tmp_path) -> None:
    """Among a folder of label maps, the one that cannot be used is named in the one-line error."""
    bad = geo.save_nifti(np.zeros((8, 8, 8, 2), np.int16), np.eye(4), tmp_path / "map_4d.nii.gz")
    with pytest.raises(InputError, match=r"label map map_4d\.nii\.gz must be a 3-D image"):
        SyntheticPairDataset([*label_maps, bad], 2.0, (24, 24, 24), length=2)


def test_an_intensity_image_among_the_label_maps_is_refused(geo, label_maps, tmp_path) -> None:
    """A T1 stored as int16 (a cohort folder of images and their label maps) passes as whole numbers, but it is no
    label map: synthesis from it would train on noise."""
    rng = np.random.default_rng(0)
    t1 = rng.normal(600.0, 80.0, (26, 28, 24))
    t1[:5] = 0.0  # some background
    path = geo.save_nifti(t1.astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "sub01.nii.gz")
    with pytest.raises(InputError, match=r"label map sub01\.nii\.gz looks like an intensity image"):
        SyntheticPairDataset([*label_maps, path], 2.0, (24, 24, 24), length=2)


def _template(geo, tmp_path) -> TemplateSpec:
    """A piecewise-constant template (intensity by label) on an LAS 2 mm grid, with its label map."""
    shape = (26, 28, 24)
    affine = geo.make_affine(np.diag([-2.0, 2.0, 2.0]), [25.0, -27.0, -23.0])
    labels = np.zeros(shape, np.int16)
    points = geo.world_points(shape, affine)
    for value, radius in ((3, 18.0), (4, 11.0), (9, 5.0)):
        labels[np.linalg.norm((points - [2.0, -1.0, 0.0]) * [1.0, 0.8, 1.1], axis=-1) <= radius] = value
    intensity = np.select([labels == 3, labels == 4, labels == 9], [0.4, 0.7, 1.0], 0.0).astype(np.float32)
    return TemplateSpec(geo.save_nifti(intensity, affine, tmp_path / "tpl.nii.gz"),
                        geo.save_nifti(labels, affine, tmp_path / "tpl_labels.nii.gz"), "tpl")


def test_template_pairs_deform_images_and_labels_together(geo, tmp_path) -> None:
    template = _template(geo, tmp_path)
    quiet = SynthesisConfig(bias_std_max=0.0, noise_std_max=0.0, gamma_std=0.0, velocity_std_max=3.0)
    dataset = TemplateAugmentDataset([template], 2.0, (24, 24, 24), length=4, synthesis=quiet,
                                     swap_probability=0.0)
    sample = dataset[1]
    assert sample["name"] == "template:tpl" and sample["fixed"].shape == (1, 24, 24, 24)
    assert not torch.equal(sample["fixed_labels"], sample["moving_labels"])
    for role in ("fixed", "moving"):
        image, labels = sample[role][0], sample[f"{role}_labels"]
        scale = 1.0 / float(image.max())
        for value, level in ((3, 0.4), (4, 0.7)):
            inside = image[labels == value] * scale
            assert float(((inside - level).abs() < 0.05).float().mean()) > 0.75, (role, value)
    swapped = TemplateAugmentDataset([template], 2.0, (24, 24, 24), length=4, synthesis=quiet,
                                     swap_probability=1.0)[1]
    assert torch.equal(swapped["fixed"], sample["moving"]) and torch.equal(swapped["moving"], sample["fixed"])
    assert torch.equal(swapped["moving_labels"], sample["fixed_labels"])


def test_template_pairs_refuse_synthesis_options_they_do_not_use(geo, tmp_path) -> None:
    template = _template(geo, tmp_path)
    with pytest.raises(InputError, match=r"do not apply to augmented templates: blur_sigma, skull_strip_probability "):
        TemplateAugmentDataset([template], 2.0, (24, 24, 24), length=2,
                               synthesis=SynthesisConfig(blur_sigma=(1.0, 2.0), skull_strip_probability=0.0))


def test_dataloader_workers_reproduce_the_samples(geo, label_maps, tmp_path) -> None:
    fixed, fixed_seg = _write_blob_subject(geo, tmp_path, "a", _oblique_grid(geo, (2.0, 2.0, 2.0), 5.0, 1))
    moving, moving_seg = _write_blob_subject(geo, tmp_path, "b", _oblique_grid(geo, (2.0, 2.0, 2.0), -5.0, 0))
    pairs = PairListDataset([PairSpec(fixed, moving, fixed_seg, moving_seg)], 4.0, (12, 12, 12), prealign=False,
                            augment=True)
    synthetic = SyntheticPairDataset(label_maps, 4.0, (12, 12, 12), length=3)
    dataset = ConcatDataset([synthetic, pairs])
    loader = DataLoader(dataset, batch_size=1, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 4
    for index, batch in enumerate(batches):
        direct = dataset[index]
        assert batch["name"] == [direct["name"]]
        for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
            assert torch.equal(batch[key][0], direct[key]), (index, key)


# ------------------------------------------------------------------------------------- builders


def _touch(geo, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return geo.save_nifti(np.ones((3, 3, 3), np.float32), np.eye(4), path)


def test_pairs_from_folder_flat_subfolders_and_atlas(geo, tmp_path) -> None:
    flat = tmp_path / "flat"
    for name in ("sub1", "sub1_seg", "sub10", "sub2", "sub2_labels"):
        _touch(geo, flat / f"{name}.nii.gz")
    pairs = pairs_from_folder(flat)
    assert len(pairs) == 6
    labels = {p.fixed.name: p.fixed_labels and p.fixed_labels.name for p in pairs}
    assert labels == {"sub1.nii.gz": "sub1_seg.nii.gz", "sub10.nii.gz": None, "sub2.nii.gz": "sub2_labels.nii.gz"}
    assert all(p.fixed != p.moving for p in pairs)

    mixed = tmp_path / "mixed"  # 3D Slicer's NRRD and MetaImage next to NIfTI; a detached header's data is no image
    for name in ("sub1.nrrd", "sub1_seg.nrrd", "sub2.mha", "sub3.nii.gz", "sub3.raw"):
        (mixed / name).parent.mkdir(parents=True, exist_ok=True)
        (mixed / name).write_bytes(b"x")
    labels = {p.fixed.name: p.fixed_labels and p.fixed_labels.name for p in pairs_from_folder(mixed)}
    assert labels == {"sub1.nrrd": "sub1_seg.nrrd", "sub2.mha": None, "sub3.nii.gz": None}

    nested = tmp_path / "nested"
    for sub in ("sub-01", "sub-02"):
        _touch(geo, nested / sub / "t1.nii.gz")
        _touch(geo, nested / sub / "labels.nii.gz")
    pairs = pairs_from_folder(nested)
    assert [(p.fixed.parent.name, p.moving.parent.name) for p in pairs] == [("sub-01", "sub-02"), ("sub-02", "sub-01")]
    assert pairs[0].moving_labels == nested / "sub-02" / "labels.nii.gz"

    atlas = _touch(geo, tmp_path / "atlas" / "mni.nii.gz")
    atlas_seg = _touch(geo, tmp_path / "atlas" / "mni_aseg.nii.gz")
    pairs = pairs_from_folder(nested, atlas=atlas)
    assert [(p.fixed, p.fixed_labels, p.moving.parent.name) for p in pairs] == [
        (atlas, atlas_seg, "sub-01"), (atlas, atlas_seg, "sub-02")]

    _touch(geo, tmp_path / "one" / "only.nii.gz")
    with pytest.raises(InputError, match="at least 2"):
        pairs_from_folder(tmp_path / "one")
    with pytest.raises(InputError, match="not found"):
        pairs_from_folder(tmp_path / "absent")
    _touch(geo, nested / "sub-03" / "t1.nii.gz")
    _touch(geo, nested / "sub-03" / "t2.nii.gz")
    with pytest.raises(InputError, match="sub-03 must hold one image"):
        pairs_from_folder(nested)


def test_pairs_from_dataset_json(geo, tmp_path) -> None:
    for i in range(1, 5):
        _touch(geo, tmp_path / "imagesTr" / f"case_{i:04d}_0000.nii.gz")
        _touch(geo, tmp_path / "labelsTr" / f"case_{i:04d}_0000.nii.gz")
    doc = {"training": [{"image": f"./imagesTr/case_{i:04d}_0000.nii.gz",
                         "label": f"./labelsTr/case_{i:04d}_0000.nii.gz"} for i in range(1, 5)],
           "registration_val": [{"fixed": "./imagesTr/case_0003_0000.nii.gz",
                                 "moving": "./imagesTr/case_0004_0000.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    train, val = pairs_from_dataset_json(tmp_path / "dataset.json")
    assert len(train) == 2 and len(val) == 1
    assert {p.fixed.name for p in train} == {"case_0001_0000.nii.gz", "case_0002_0000.nii.gz"}
    assert val[0].fixed_labels == tmp_path / "labelsTr" / "case_0003_0000.nii.gz"

    lists = {"imagesTr": [f"imagesTr/case_{i:04d}_0000.nii.gz" for i in (1, 2, 3)],
             "labelsTr": [f"labelsTr/case_{i:04d}_0000.nii.gz" for i in (1, 2, 3)]}
    (tmp_path / "lists.json").write_text(json.dumps(lists))
    train, val = pairs_from_dataset_json(tmp_path / "lists.json")
    assert len(train) == 6 and val == [] and train[0].moving_labels is not None

    doc["training"][1]["image"] = "./imagesTr/missing.nii.gz"
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="missing.nii.gz"):
        pairs_from_dataset_json(tmp_path / "broken.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        pairs_from_dataset_json(tmp_path / "bad.json")


def test_pairs_from_csv(geo, tmp_path) -> None:
    for name in ("f", "m", "fl", "ml"):
        _touch(geo, tmp_path / "data" / f"{name}.nii.gz")
    (tmp_path / "pairs.csv").write_text("fixed,moving,fixed_labels,moving_labels\n"
                                        "data/f.nii.gz,data/m.nii.gz,data/fl.nii.gz,data/ml.nii.gz\n"
                                        f"{tmp_path}/data/m.nii.gz,data/f.nii.gz,,\n")
    pairs = pairs_from_csv(tmp_path / "pairs.csv")
    assert pairs == [PairSpec(tmp_path / "data" / "f.nii.gz", tmp_path / "data" / "m.nii.gz",
                              tmp_path / "data" / "fl.nii.gz", tmp_path / "data" / "ml.nii.gz"),
                     PairSpec(tmp_path / "data" / "m.nii.gz", tmp_path / "data" / "f.nii.gz")]
    (tmp_path / "missing.csv").write_text("fixed,moving\ndata/f.nii.gz,data/nope.nii.gz\n")
    with pytest.raises(InputError, match="nope.nii.gz"):
        pairs_from_csv(tmp_path / "missing.csv")
    (tmp_path / "header.csv").write_text("a,b\ndata/f.nii.gz,data/m.nii.gz\n")
    with pytest.raises(InputError, match="header"):
        pairs_from_csv(tmp_path / "header.csv")
    (tmp_path / "empty.csv").write_text("fixed,moving\n")
    with pytest.raises(InputError, match="no image pairs"):
        pairs_from_csv(tmp_path / "empty.csv")
    # a misspelt label column left the label maps out (no validation Dice) without a word; a column another
    # command reads (a tuning list's landmarks) is only ignored
    (tmp_path / "misspelt.csv").write_text("fixed,moving,fixed_label,moving_landmarks\ndata/f.nii.gz,data/m.nii.gz,"
                                           "data/fl.nii.gz,p.csv\n")
    with pytest.raises(InputError, match=r"misspelt.csv: the column 'fixed_label' is not one svreg reads; did you "
                                         r"mean fixed_labels\? \(columns: fixed, moving, fixed_labels, moving_labels;"):
        pairs_from_csv(tmp_path / "misspelt.csv")
    (tmp_path / "other.csv").write_text("fixed,moving,moving_landmarks\ndata/f.nii.gz,data/m.nii.gz,p.csv\n")
    assert pairs_from_csv(tmp_path / "other.csv") == [PairSpec(tmp_path / "data" / "f.nii.gz",
                                                               tmp_path / "data" / "m.nii.gz")]


def test_split_pairs_keeps_validation_subjects_out_of_training() -> None:
    subjects = [Path(f"s{i}.nii.gz") for i in range(10)]
    pairs = [PairSpec(a, b) for a in subjects for b in subjects if a != b]
    train, val = split_pairs(pairs, val_fraction=0.2, seed=4)
    val_subjects = {p for pair in val for p in (pair.fixed, pair.moving)}
    train_subjects = {p for pair in train for p in (pair.fixed, pair.moving)}
    assert len(val_subjects) == 2 and len(train_subjects) == 8 and not val_subjects & train_subjects
    assert len(val) == 2 and len(train) == 56
    assert split_pairs(pairs, val_fraction=0.2, seed=4) == (train, val)
    # one held-out subject forms no inter-subject pair: a second one is taken, now with a word (it was silent)
    with pytest.warns(UserWarning, match=r"^2 of 10 subjects are held out for validation, not the 1 that val_count 1 "
                                         r"asks for: fewer formed no validation pair"):
        assert len(split_pairs(pairs, val_count=1, seed=0)[1]) == 2
    with pytest.warns(UserWarning, match="not the 1 that val_fraction 0.1 asks for"):
        split_pairs(pairs, val_fraction=0.1, seed=0)

    atlas = Path("atlas.nii.gz")
    atlas_pairs = [PairSpec(atlas, s) for s in subjects]
    train, val = split_pairs(atlas_pairs, val_count=3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert not {p.moving for p in val} & {p.moving for p in train}
    with pytest.raises(InputError, match=r"from 1 pair of 2 images \(2 of them in every pair, never held out\) "
                                         r"and keep both training and validation pairs; add subjects, or give "
                                         r"validation data of its own \(--val-data\)"):
        split_pairs(atlas_pairs[:1], val_count=1)
    two = subjects[:2]  # two images, both in both pairs: nothing can be held out
    with pytest.raises(InputError, match=r"from 2 pairs of 2 images \(2 of them in every pair"):
        split_pairs([PairSpec(two[0], two[1]), PairSpec(two[1], two[0])], val_fraction=0.2)


# ----------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not SYNTHSEG.is_dir(), reason=f"SynthSeg label maps not found at {SYNTHSEG}")
def test_real_synthseg_label_maps_at_4mm() -> None:
    maps = sorted(SYNTHSEG.glob("*.nii.gz"))[:2]
    dataset = SyntheticPairDataset(maps, 4.0, (40, 48, 48), length=2, seed=0,
                                   synthesis=SynthesisConfig(skull_strip_probability=1.0))
    sample = dataset[0]
    for role in ("fixed", "moving"):
        labels = sample[f"{role}_labels"]
        present = set(labels.unique().tolist())
        assert {2, 3, 41, 42, 17, 53} <= present and max(present) < 500
        brain = labels != 0
        assert 0.05 < float(brain.float().mean()) < 0.6
        image = sample[role][0]
        assert float(image[~brain].abs().max()) == 0.0 and float(image[brain].std()) > 0.05
    for labels in dataset.maps:  # before deformation, the grid holds the whole brain; CSF leaves it at -S
        brain = skull_strip(torch.from_numpy(labels).long()) != 0
        assert not brain[[0, -1]].any() and not brain[:, [0, -1]].any() and not brain[:, :, -1].any()
        assert set(labels[:, :, 0][brain[:, :, 0].numpy()].tolist()) <= {16, 24}


def test_a_pair_prealigned_from_a_rotated_pose_is_named(geo, tmp_path) -> None:
    """A cohort image whose header is turned 130°: the pre-alignment's warning names the two files. It named
    neither (a cohort has many pairs) and advised ``--no-pose-search``, which ``svreg train`` does not have."""
    shape, affine = geo.brain_grid(4.0)
    brain = geo.sample_template(geo.world_points(shape, affine), 2.0).astype(np.float32)
    centre = geo.grid_centre(shape, affine)
    turned = geo.make_affine(geo.rotation([1.0, -0.5, 0.3], 130.0), centre - geo.rotation([1.0, -0.5, 0.3], 130.0)
                             @ centre)
    fixed = geo.save_nifti(brain, affine, tmp_path / "upright.nii.gz")
    moving = geo.save_nifti(brain, turned @ affine, tmp_path / "turned.nii.gz")
    dataset = PairListDataset([PairSpec(fixed, moving)], 4.0, (16, 16, 16))
    with pytest.warns(UserWarning) as warned:
        dataset.alignment(0)
    message = str(warned[0].message)
    assert message.startswith(f"{moving} and {fixed}: their orientations disagree by about 130°"), message
    assert "pose-search" not in message
