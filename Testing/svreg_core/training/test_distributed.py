"""Data-parallel training: 2 torchrun processes with batch 1 equal 1 process with batch 2 on the same samples."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from svreg_core.training.config import TrainingConfig, save_config
from svreg_core.training.loaders import epoch_plan, rank_batches
from svreg_core.training.trainer import build_network, train

TINY = {"encoder_features": [4, 8], "decoder_features": [8, 8, 4], "lambda_features": [4]}


def test_ranks_share_out_exactly_the_single_process_batches() -> None:
    plan = epoch_plan([5, 7], [1.0, 3.0], 24, seed=11)
    assert plan == epoch_plan([5, 7], [1.0, 3.0], 24, seed=11) != epoch_plan([5, 7], [1.0, 3.0], 24, seed=12)
    assert all(0 <= i < 12 for i in plan) and sum(i >= 5 for i in plan) > sum(i < 5 for i in plan)
    single = rank_batches(plan, 4, 0, 1)
    ranks = [rank_batches(plan, 2, r, 2) for r in range(2)]
    assert len(single) == 6 and all(len(b) == 2 for b in ranks[0] + ranks[1])
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == single
    # one source: every sample once before any repeats
    once = epoch_plan([6], [1.0], 12, seed=0)
    assert sorted(once[:6]) == list(range(6)) and sorted(once[6:]) == list(range(6))


def test_two_gloo_processes_match_one_process_with_the_double_batch(geo, sphere_label_maps, tmp_path) -> None:
    sphere_label_maps(geo, tmp_path / "labels", split=False)
    # the paper's learning rate (1e-4): much larger steps let AdamW amplify float rounding differences
    # between the two summation orders chaotically within a few steps
    config = TrainingConfig(model=TINY, grid_shape=(16, 16, 16), network_spacing_mm=4.0, learning_rate=1e-4,
                            epochs=2, steps_per_epoch=2, batch_size=1, num_workers=0, seed=3, device="cpu",
                            validation={"pairs": 3},
                            data={"sources": [{"kind": "synthetic", "path": str(tmp_path / "labels"), "length": 8}]})
    config_file = save_config(config, tmp_path / "train.yaml")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "svreg_core.cli", "train", "--config", str(config_file), "-o", str(tmp_path / "ddp"),
                          "--progress", "none"], capture_output=True, text=True, env=geo.child_env(), timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("Trained 2 epoch(s)") == 1  # rank 0 alone reports

    single = train(config.replace(batch_size=2), tmp_path / "single")
    assert single.steps == 4
    a = load_file(str(tmp_path / "ddp" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    # Adam turns gradients at rounding level into whole steps of either sign, so single weights may differ
    # by ~lr between the two summation orders; the updates as a whole must agree. Measured: cosine 0.9999995,
    # relative difference 0.06 % since the convolutions call oneDNN at any batch size (2026-11-28; before, a
    # batch of one ran torch's reference kernel: 0.99923 and 3.9 %); without the second rank's batches (one
    # process, batch 1) 0.85 and 54 %.
    initial = build_network(config).state_dict()
    update_ddp = torch.cat([(a[k] - initial[k]).flatten() for k in a])
    update_single = torch.cat([(b[k] - initial[k]).flatten() for k in a])
    assert torch.nn.functional.cosine_similarity(update_ddp, update_single, dim=0).item() > 0.9999
    assert ((update_ddp - update_single).norm() / update_single.norm()).item() < 0.01
    # training moved the weights (the comparison is not between two untouched initialisations)
    assert update_single.abs().max().item() > 1e-4
    # validation pairs were shared out over the ranks and summed back: the same metrics
    rows = [list(csv.DictReader((tmp_path / run / "metrics.csv").open())) for run in ("ddp", "single")]
    # the second epoch after the updates' small divergence; its regularisation term is ~1e-7 and differed
    # by 2.6e-9 (1.7 %) with He-initialised convolutions
    for epoch, rel, tiny in ((0, 1e-4, 1e-9), (-1, 2e-3, 1e-8)):
        for key in ("train_total", "val_regularization", "val_prior", "val_dice", "val_dice_identity",
                    "val_folding_percent"):
            assert float(rows[0][epoch][key]) == pytest.approx(float(rows[1][epoch][key]), rel=rel, abs=tiny), key
    # (LNCC is ill-conditioned in the flat background: a 1e-7 weight difference moves it by ~1e-4, and the
    # validation similarity differed by 0.0015-0.0021 between the runs whether the updates agreed to 3.9 % or
    # to 0.06 %, 2026-11-28)
    assert float(rows[0][-1]["val_total"]) == pytest.approx(float(rows[1][-1]["val_total"]), abs=5e-3)


@pytest.mark.parametrize("where", ["every rank", "rank 0 alone"])
def test_an_input_error_under_torchrun_is_printed_once(geo, sphere_label_maps, tmp_path, where) -> None:
    """Every process of a torchrun job printed the same error (a missing data folder), and when rank 0 alone found it
    (a label map holding fractions, read by rank 0 before training) the others printed a traceback of the barrier they
    waited at ('Connection closed by peer'): rank 0 prints the one line, the others stop quietly."""
    sphere_label_maps(geo, tmp_path / "labels", split=False)
    data = tmp_path / "missing"
    if where == "rank 0 alone":
        data = tmp_path / "labels"  # a_seg and b_seg as two subjects' images, and a label map of fractions for b
        geo.save_nifti(np.full((16, 16, 16), 0.25, np.float32), np.eye(4), data / "b_seg_labels.nii.gz")
        (data / "a_seg.nii.gz").rename(data / "a.nii.gz")
        (data / "b_seg.nii.gz").rename(data / "b.nii.gz")
        (data / "b_seg_labels.nii.gz").rename(data / "b_seg.nii.gz")
    config = TrainingConfig(model=TINY, grid_shape=(16, 16, 16), network_spacing_mm=4.0, epochs=1, steps_per_epoch=1,
                            num_workers=0, device="cpu", validation={"pairs": 0},
                            data={"sources": [{"kind": "folder", "path": str(data)}], "prealign": False})
    config_file = save_config(config, tmp_path / "train.yaml")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "svreg_core.cli", "train", "--config", str(config_file), "-o", str(tmp_path / "ddp"),
                          "--progress", "none"], capture_output=True, text=True, env=geo.child_env(), timeout=300)
    assert ddp.returncode != 0
    ours = [line for line in ddp.stderr.splitlines() if line.startswith(("svreg:", "[rank"))]
    expected = "training folder not found" if where == "every rank" else "holds values that are not whole numbers"
    assert len(ours) == 1 and ours[0].startswith("svreg: error: ") and expected in ours[0], ddp.stderr[-3000:]


def test_an_error_of_another_rank_alone_is_printed(geo, sphere_label_maps, tmp_path) -> None:
    """Ranks other than 0 keep their errors to themselves while rank 0 reports the same one; an input error only rank 1
    meets (its node lacks the data) is still printed, by rank 1, once rank 0 has not ended the job for it."""
    sphere_label_maps(geo, tmp_path / "labels", split=False)
    config = TrainingConfig(model=TINY, grid_shape=(16, 16, 16), network_spacing_mm=4.0, epochs=1, steps_per_epoch=1,
                            num_workers=0, device="cpu", validation={"pairs": 0},
                            data={"sources": [{"kind": "synthetic", "path": str(tmp_path / "labels")}]})
    config_file = save_config(config, tmp_path / "train.yaml")
    script = tmp_path / "rank_1_without_data.py"  # svreg train, with a label folder rank 1 cannot find
    script.write_text("import os, sys\n"
                      "import svreg_core.training.cli\n"
                      "from svreg_core.cli import main\n"
                      "svreg_core.training.cli.PEER_REPORT_DELAY_S = 1.0\n"
                      "*argv, missing = sys.argv[1:]\n"
                      "sys.exit(main(argv + ['--synthetic', missing] if os.environ['RANK'] == '1' else argv))\n")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), "train", "--config", str(config_file), "-o", str(tmp_path / "ddp"),
                          "--progress", "none", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=geo.child_env(), timeout=300)
    assert ddp.returncode != 0
    assert f"svreg: error: label map folder not found: {tmp_path / 'missing'}" in ddp.stderr.splitlines(), \
        ddp.stderr[-3000:]
