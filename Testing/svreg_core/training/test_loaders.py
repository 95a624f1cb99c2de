"""The epoch plan, the per-rank batches, the step count and the collation of training samples."""
from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from svreg_core.training.loaders import collate_pairs, epoch_plan, load_alignments, prepare_alignments, rank_batches


def test_epoch_plan_mixes_the_sources_by_weight_and_visits_each_in_a_fresh_order() -> None:
    sizes, weights = [10, 30], [1.0, 3.0]
    plan = epoch_plan(sizes, weights, 4000, seed=5)
    assert len(plan) == 4000 and all(0 <= i < 40 for i in plan)
    share = sum(i >= 10 for i in plan) / len(plan)
    assert abs(share - 0.75) < 0.03  # weights 1 : 3 (binomial standard deviation 0.007)
    # within a source, every index is used once before any is used again
    first = [i for i in plan if i < 10]
    for start in range(0, len(first) - 10 + 1, 10):
        assert sorted(first[start:start + 10]) == list(range(10))
    second = [i - 10 for i in plan if i >= 10]
    assert sorted(second[:30]) == list(range(30)) and second[:30] != second[30:60]  # a new order each cycle
    assert plan == epoch_plan(sizes, weights, 4000, seed=5) != epoch_plan(sizes, weights, 4000, seed=6)


def test_a_single_source_is_always_picked_whatever_its_weight() -> None:
    plan = epoch_plan([7], [0.2], 21, seed=0)
    assert Counter(plan) == {i: 3 for i in range(7)}


def test_rank_batches_hand_computed() -> None:
    plan = list(range(13))
    # global batch 2 x 3 = 6: steps take plan[0:6] and plan[6:12]; the last, incomplete step is dropped
    assert rank_batches(plan, 2, 0, 3) == [[0, 1], [6, 7]]
    assert rank_batches(plan, 2, 2, 3) == [[4, 5], [10, 11]]
    assert rank_batches(plan, 6, 0, 1) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]


def test_collate_stacks_images_and_keeps_labels_only_when_every_sample_has_them() -> None:
    def sample(name: str, labels: bool) -> dict:
        out = {"fixed": torch.zeros(1, 4, 5, 6), "moving": torch.ones(1, 4, 5, 6), "name": name,
               "velocity": torch.zeros(3, 4, 5, 6)}  # anything else a dataset returns is dropped
        if labels:
            out["fixed_labels"] = out["moving_labels"] = torch.zeros(4, 5, 6, dtype=torch.long)
        return out

    batch = collate_pairs([sample("a", True), sample("b", True)])
    assert batch["fixed"].shape == (2, 1, 4, 5, 6) and batch["fixed_labels"].shape == (2, 4, 5, 6)
    assert batch["name"] == ["a", "b"] and "velocity" not in batch
    mixed = collate_pairs([sample("a", True), sample("b", False)])
    assert "fixed_labels" not in mixed and "moving_labels" not in mixed and mixed["moving"].shape[0] == 2


def test_alignment_cache_round_trip_and_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    """The pre-alignments of the real pairs are saved for a resumed run; a write that fails (a full disk) leaves
    neither a cache nor a hidden temporary file."""
    matrix = np.diag([1.0, 2.0, 3.0, 1.0])
    dataset = SimpleNamespace(prealign=True, registrations=1,
                              precompute_alignments=lambda progress: {("f.nii", "m.nii"): matrix})
    data = SimpleNamespace(pair_datasets=[dataset])
    cache = tmp_path / "alignments.json"
    prepare_alignments(data, cache, write=True)  # type: ignore[arg-type]  # the pairs' part of TrainingData
    assert list(load_alignments(cache)) == [("f.nii", "m.nii")]
    assert np.array_equal(load_alignments(cache)[("f.nii", "m.nii")], matrix)
    cache.unlink()

    def full_disk(source, target) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("svreg_core.atomic.os.replace", full_disk)  # the rename into place
    with pytest.raises(OSError, match="No space left"):
        prepare_alignments(data, cache, write=True)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def _cases(geo, folder: Path, count: int) -> list[str]:
    """``count`` tiny images with label maps in ``folder`` (imagesTr/, labelsTr/), as dataset.json entries."""
    entries = []
    for i in range(1, count + 1):
        for kind in ("imagesTr", "labelsTr"):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            geo.save_nifti(np.ones((3, 3, 3), np.float32), np.eye(4), folder / kind / f"case_{i:04d}.nii.gz")
        entries.append({"image": f"./imagesTr/case_{i:04d}.nii.gz", "label": f"./labelsTr/case_{i:04d}.nii.gz"})
    return entries


def test_validation_on_a_dataset_json_uses_its_own_validation_pairs(geo, tmp_path: Path) -> None:
    """``--val-data dataset.json`` evaluates the pairs the file designates for validation (it took the file's
    first training pairs), and only the pairs evaluated are built, so only they are pre-aligned."""
    import json

    from svreg_core.training.config import TrainingConfig
    from svreg_core.training.loaders import build_data

    doc = {"training": _cases(geo, tmp_path, 6),
           "registration_val": [{"fixed": "./imagesTr/case_0005.nii.gz", "moving": "./imagesTr/case_0006.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    source = {"kind": "dataset_json", "path": str(tmp_path / "dataset.json")}
    data = build_data(TrainingConfig.from_dict({"data": {"sources": [source]},
                                                "validation": {"sources": [source], "pairs": 16}}))
    assert data.validation is not None and len(data.validation) == 1
    (validation_set,) = data.pair_datasets[1:]
    assert [(p.fixed.name, p.moving.name) for p in validation_set.pairs] == [("case_0005.nii.gz", "case_0006.nii.gz")]
    # without designated pairs: ``pairs`` of the file's 30 inter-subject pairs spread over the list (the first 3
    # all had case 1 as the fixed image), and no more are built
    del doc["registration_val"]
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    data = build_data(TrainingConfig.from_dict({"data": {"sources": [source]},
                                                "validation": {"sources": [source], "pairs": 3}}))
    assert data.validation is not None and len(data.validation) == 3 and len(data.pair_datasets[1].pairs) == 3
    everything = data.pair_datasets[0].pairs
    assert len(everything) == 30 and data.pair_datasets[1].pairs == [everything[0], everything[10], everything[20]]
    assert len({p.fixed for p in data.pair_datasets[1].pairs}) == 3


def test_spread_picks_evenly_in_order() -> None:
    from svreg_core.training.loaders import spread

    assert spread(list(range(10)), 4) == [0, 2, 5, 7] and spread(list(range(3)), 16) == [0, 1, 2]
    assert spread(list(range(90)), 16)[:3] == [0, 5, 11]


def test_label_weight_without_labels_is_refused_before_training(geo, tmp_path: Path) -> None:
    """``label_weight > 0`` with a pair that has no label maps stops before the first step (it stopped at that
    pair's step, after a lost epoch when the pair was a validation pair); with labels everywhere it builds."""
    from svreg_core.errors import InputError
    from svreg_core.training.config import TrainingConfig
    from svreg_core.training.loaders import build_data

    _cases(geo, tmp_path, 4)
    rows = ["fixed,moving,fixed_labels,moving_labels",
            "imagesTr/case_0001.nii.gz,imagesTr/case_0002.nii.gz,labelsTr/case_0001.nii.gz,labelsTr/case_0002.nii.gz",
            "imagesTr/case_0003.nii.gz,imagesTr/case_0004.nii.gz,labelsTr/case_0003.nii.gz,labelsTr/case_0004.nii.gz"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text("\n".join([rows[0], "imagesTr/case_0002.nii.gz,imagesTr/case_0001.nii.gz,,"]))
    values = {"label_weight": 1.0, "data": {"sources": [{"kind": "csv", "path": str(tmp_path / "train.csv")}]}}
    build_data(TrainingConfig.from_dict({**values, "validation": {"fraction": 0.0}}))
    with pytest.raises(InputError, match=r"label_weight > 0 needs label maps .* the pair .*case_0002.nii.gz / "
                                         r".*case_0001.nii.gz has none"):
        build_data(TrainingConfig.from_dict({**values, "validation": {"sources": [
            {"kind": "csv", "path": str(tmp_path / "val.csv")}]}}))


def test_alignment_cache_is_saved_while_aligning(tmp_path: Path, monkeypatch) -> None:
    """A run killed while pre-aligning a large cohort keeps the alignments finished before the last save (here:
    a save after every pair); a resumed run starts from them."""
    from svreg_core.progress import ProgressEvent
    from svreg_core.training import loaders

    monkeypatch.setattr(loaders, "ALIGNMENT_SAVE_INTERVAL_S", 0.0)
    done: dict = {}

    def precompute(progress):
        for i in range(5):
            if i == 3:
                raise KeyboardInterrupt  # Ctrl-C while aligning the fourth pair
            done[(f"f{i}.nii", f"m{i}.nii")] = np.eye(4) * (i + 1)
            progress(ProgressEvent("prealign", i + 1, 5, (i + 1) / 5))
        return done

    dataset = SimpleNamespace(prealign=True, registrations=5, alignments=done, precompute_alignments=precompute)
    cache = tmp_path / "alignments.json"
    with pytest.raises(KeyboardInterrupt):
        prepare_alignments(SimpleNamespace(pair_datasets=[dataset]), cache, write=True)  # type: ignore[arg-type]
    saved = load_alignments(cache)
    assert sorted(saved) == [("f0.nii", "m0.nii"), ("f1.nii", "m1.nii"), ("f2.nii", "m2.nii")]
    assert np.array_equal(saved[("f2.nii", "m2.nii")], np.eye(4) * 3)
    # Ctrl-C before the next save was due lost every alignment since the last one: they are saved when it stops
    monkeypatch.setattr(loaders, "ALIGNMENT_SAVE_INTERVAL_S", 3600.0)
    done.clear()
    cache.unlink()
    with pytest.raises(KeyboardInterrupt):
        prepare_alignments(SimpleNamespace(pair_datasets=[dataset]), cache, write=True)  # type: ignore[arg-type]
    assert sorted(load_alignments(cache)) == [("f0.nii", "m0.nii"), ("f1.nii", "m1.nii"), ("f2.nii", "m2.nii")]


def test_an_epoch_longer_than_a_generated_source_draws_new_pairs(geo, sphere_label_maps, tmp_path: Path) -> None:
    """A synthetic source of 2 pairs per epoch in an epoch of 3 passes over it (``steps_per_epoch`` beyond its
    length, or several DDP ranks: 4 ranks did that to the default length of 100) gave each pair 3 times, identical;
    each pass now draws new pairs. A real pair is the same pair in every pass."""
    from svreg_core.training.config import TrainingConfig
    from svreg_core.training.loaders import build_data, epoch_loader

    sphere_label_maps(geo, tmp_path / "maps", split=True)
    (tmp_path / "pairs.csv").write_text("fixed,moving\nmaps/a_seg.nii.gz,maps/b_seg.nii.gz\n")
    config = TrainingConfig.from_dict({
        "network_spacing_mm": 4.0, "grid_shape": [16, 16, 16], "batch_size": 3, "num_workers": 0,
        "data": {"sources": [{"kind": "synthetic", "path": str(tmp_path / "maps"), "length": 2},
                             {"kind": "csv", "path": str(tmp_path / "pairs.csv")}], "prealign": False},
        "validation": {"fraction": 0.0}})
    data = build_data(config)
    samples = [(name, image) for batch in epoch_loader(data, config, epoch=1, steps=6)
               for name, image in zip(batch["name"], batch["fixed"])]
    synthetic = [image for name, image in samples if name.startswith("synth:")]
    real = [image for name, image in samples if not name.startswith("synth:")]
    assert len(synthetic) > 2 * len(data.train.datasets[0]) and len(real) > 2  # several passes over both sources
    assert not any(torch.equal(a, b) for n, a in enumerate(synthetic) for b in synthetic[n + 1:])
    assert all(torch.equal(image, real[0]) for image in real)
    plan = [index for batch in epoch_loader(data, config, epoch=1, steps=6).batch_sampler for index in batch]
    first_pass = [(image, index) for (_, image), index in zip(samples, plan) if index < len(data.train)]
    assert len(first_pass) == 3  # the source's own samples, as before
    assert all(torch.equal(image, data.train[index]["fixed"]) for image, index in first_pass)


def test_synthesis_label_maps_are_read_once_with_progress(geo, sphere_label_maps, tmp_path: Path) -> None:
    """The label maps of ``--synthetic`` were read once for the training pairs and again for the validation pairs
    generated from them, without a word: a SynthSeg folder of a thousand maps kept the command silent for minutes
    before the first line. They are read once, one progress event each, and both datasets share them."""
    from svreg_core.progress import ProgressEvent
    from svreg_core.training.config import TrainingConfig
    from svreg_core.training.loaders import build_data

    sphere_label_maps(geo, tmp_path / "maps", split=False)
    config = TrainingConfig.from_dict({
        "network_spacing_mm": 4.0, "grid_shape": [16, 16, 16],
        "data": {"sources": [{"kind": "synthetic", "path": str(tmp_path / "maps"), "length": 3}]},
        "validation": {"pairs": 2}})
    events: list[ProgressEvent] = []
    data = build_data(config, progress=events.append)
    assert [(e.stage, e.step, e.total, e.message) for e in events] == [
        ("label maps", 1, 2, "read a_seg.nii.gz"), ("label maps", 2, 2, "read b_seg.nii.gz")]
    training, validation = data.train.datasets[0], data.validation.dataset
    assert validation.maps is training.maps and (len(training), len(validation)) == (3, 2)
    assert validation.seed != training.seed  # pairs of their own
    assert not torch.equal(validation[0]["fixed"], training[0]["fixed"])
