"""The ``transmorph-tvf-spr`` network: the paper's size, window attention locality, the TVF recursion
checked against scipy, any input size, gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from svreg_core.errors import InputError
from svreg_core.models import TransMorphTVFSPR, build_model, count_parameters
from svreg_core.models.base import LAMBDA_MIN
from svreg_core.models.transmorph import SwinBlock


def test_default_is_the_papers_size() -> None:
    model = build_model("transmorph-tvf-spr")
    total = count_parameters(model)
    print(f"transmorph-tvf-spr default: {total:,} parameters")
    assert 17_000_000 < total < 18_500_000  # METHOD §3: about 17.7 M
    # λ head, METHOD §3 "about 84k": 3x3x3 convs 16->48 and 48->48 without bias (instance norm follows),
    # then 48->1 with bias
    assert count_parameters(model.lambda_head) == 16 * 48 * 27 + 48 * 48 * 27 + 48 * 27 + 1 == 84_241
    assert model.size_multiple == 32  # 2 (pooling) * 4 (patches) * 2 * 2 (two patch mergings)
    assert model.config["window_size"] == [5, 6, 7] and model.config["time_steps"] == 7
    uniform = build_model("transmorph-tvf-spr", {"uniform": True})
    assert count_parameters(uniform) == total - 84_241


def test_odd_sizes_give_outputs_on_the_input_grid(nets) -> None:
    model = nets.build("transmorph-tvf-spr", nets.TINY_TRANSMORPH)
    with torch.no_grad():
        velocity, weight = model(*nets.pair((17, 23, 29)))
    assert velocity.shape == (1, 3, 17, 23, 29)
    assert weight.shape == (1, 1, 17, 23, 29)
    assert float(weight.min()) >= LAMBDA_MIN and float(weight.max()) <= 1.0


def test_untrained_network_is_near_identity_with_high_lambda(nets) -> None:
    model = nets.build("transmorph-tvf-spr", nets.TINY_TRANSMORPH)
    with torch.no_grad():
        velocity, weight = model(*nets.pair((32, 32, 32)))
    assert float(velocity.abs().max()) < 1e-2
    expected = 1.0 / (1.0 + math.exp(-2.2))
    assert float((weight - expected).abs().max()) < 0.01


def test_every_parameter_gets_a_gradient_with_shifted_and_padded_windows(nets) -> None:
    # 64^3 input -> token grids 8^3, 4^3, 2^3; windows of 3 are padded (to 9 and 6) and shifted
    # in stages 0 and 1, shrunk to 2 without shift in stage 2
    config = {**nets.TINY_TRANSMORPH, "depths": [2, 2, 2], "window_size": [3, 3, 3], "time_steps": 2}
    model = nets.build("transmorph-tvf-spr", config)
    assert nets.parameters_without_gradient(model, *nets.pair((64, 64, 64))) == []


def test_uniform_network_has_unit_weight(nets) -> None:
    model = nets.build("transmorph-tvf-spr", {**nets.TINY_TRANSMORPH, "uniform": True, "time_steps": 2})
    with torch.no_grad():
        velocity, weight = model(*nets.pair((20, 16, 12)))
    assert torch.equal(weight, torch.ones(1, 1, 20, 16, 12))
    assert velocity.shape == (1, 3, 20, 16, 12)
    assert model.lambda_head is None


def test_batch_entries_are_independent(nets) -> None:
    model = nets.build("transmorph-tvf-spr", {**nets.TINY_TRANSMORPH, "time_steps": 2})
    fixed, moving = nets.pair((32, 32, 32), batch=2)
    with torch.no_grad():
        velocity, weight = model(fixed, moving)
        for b in range(2):
            v, w = model(fixed[b:b + 1], moving[b:b + 1])
            torch.testing.assert_close(velocity[b:b + 1], v, rtol=1e-4, atol=1e-8)
            torch.testing.assert_close(weight[b:b + 1], w, rtol=1e-4, atol=1e-7)


def _block(shifted: bool, seed: int = 0) -> SwinBlock:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SwinBlock(dim=8, heads=2, window=(2, 2, 2), shifted=shifted)


def _changed_tokens(block: SwinBlock, x: torch.Tensor, token: tuple[int, int, int]) -> set[tuple[int, int, int]]:
    """Tokens whose output changes when the input at ``token`` changes."""
    with torch.no_grad():
        before = block(x)
        x = x.clone()
        x[(0, *token)] += torch.linspace(-1.0, 1.0, x.shape[-1])  # not constant: LayerNorm would remove it
        diff = (block(x) - before).abs().amax(-1)[0]
    return {tuple(int(i) for i in idx) for idx in torch.nonzero(diff > 1e-6)}


def test_window_attention_is_local_to_its_window() -> None:
    block = _block(shifted=False)
    x = torch.randn(1, 4, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    cube = {(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)}
    assert _changed_tokens(block, x, (0, 0, 0)) == cube
    assert _changed_tokens(block, x, (1, 1, 0)) == cube


def test_shifted_windows_mix_neighbours_but_not_across_the_wrap() -> None:
    block = _block(shifted=True)
    x = torch.randn(1, 4, 4, 4, 8, generator=torch.Generator().manual_seed(1))
    # shift 1: windows are {1, 2} and {3, 0} along each axis; 3 and 0 only meet by the cyclic wrap,
    # which the mask forbids
    assert _changed_tokens(block, x, (1, 1, 1)) == {(i, j, k) for i in (1, 2) for j in (1, 2) for k in (1, 2)}
    assert _changed_tokens(block, x, (0, 0, 0)) == {(0, 0, 0)}
    assert _changed_tokens(block, x, (3, 0, 1)) == {(3, 0, k) for k in (1, 2)}


def test_padding_tokens_are_masked_out() -> None:
    """In a 3^3 grid with windows of 2, token (2, 2, 2) shares its window with padding only: its
    output equals that of a one-token grid."""
    block = _block(shifted=False)
    x = torch.randn(1, 3, 3, 3, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(block(x)[0, 2, 2, 2], block(x[:, 2:, 2:, 2:])[0, 0, 0, 0])


def test_tvf_steps_compose_increments_as_in_the_paper(nets) -> None:
    """F_t = F_(t-1) + v_t(x + F_(t-1)(x)), the moving image re-warped by F_t, and the returned velocity
    2 * (F_T upsampled 2x), all recomputed with scipy (trilinear, border clamping)."""
    model = nets.build("transmorph-tvf-spr", {**nets.TINY_TRANSMORPH, "time_steps": 3})
    gen = torch.Generator().manual_seed(3)
    for head in model.flow_heads:  # increments of about a voxel instead of the near-zero initial ones
        head.weight.data = 0.05 * torch.randn(head.weight.shape, generator=gen)
    increments, step_inputs = [], []
    for t in range(3):
        model.flow_heads[t].register_forward_hook(lambda m, i, out: increments.append(out[0].double().numpy()))
        model.step_convs[t].register_forward_hook(lambda m, i, out: step_inputs.append(i[0][0].double().numpy()))
    fixed, moving = nets.pair((32, 32, 32))
    with torch.no_grad():
        velocity, _ = model(fixed, moving)

    def sample(volume: np.ndarray, field: np.ndarray) -> np.ndarray:
        coords = np.indices(volume.shape, dtype=np.float64) + field
        return ndimage.map_coordinates(volume, coords, order=1, mode="nearest")

    moving_half = moving[0, 0].double().numpy().reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))
    field = np.zeros((3, 16, 16, 16))
    for t in range(3):
        np.testing.assert_allclose(step_inputs[t][0], sample(moving_half, field), atol=1e-5)
        field = field + np.stack([sample(increments[t][c], field) for c in range(3)])
    assert np.abs(field).max() > 0.5  # the check is not about an identity
    expected = np.stack([2.0 * ndimage.zoom(field[c], 2, order=1, grid_mode=True, mode="nearest") for c in range(3)])
    np.testing.assert_allclose(velocity[0].double().numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("config, message", [
    ({"num_heads": [8, 8]}, "num_heads"),
    ({"embed_dim": 12, "num_heads": [5, 5, 5]}, "not divisible"),
    ({"window_size": [5, 6]}, "window_size"),
    ({"drop_path_rate": 1.5}, "drop_path_rate"),
    ({"embed_dim": 13, "num_heads": [1, 1, 1]}, "even"),
])
def test_invalid_configurations_are_input_errors(config: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_model("transmorph-tvf-spr", config)
    assert TransMorphTVFSPR.architecture == "transmorph-tvf-spr"
