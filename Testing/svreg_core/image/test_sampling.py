"""Chunked grid_sample and the gather sampling of deterministic mode against torch's own call, and label
voting against one-hot interpolation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from svreg_core.conventions import ALIGN_CORNERS, identity_grid
from svreg_core.image import sampling
from svreg_core.image.sampling import _uniform_cells, gather_sample, grid_sample, sample_labels


@pytest.fixture
def two_threads():
    """Two torch threads (the chunks do not depend on it; the kernels run in parallel)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _problem(seed: int, shape=(23, 19, 17), points=(41, 37, 29)):
    gen = torch.Generator().manual_seed(seed)
    source = torch.randn(1, 3, *shape, generator=gen, dtype=torch.float64)
    coords = torch.rand(1, *points, 3, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # some outside
    return source, coords


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_chunked_forward_is_bitwise_torch(two_threads, mode, padding_mode) -> None:
    source, coords = _problem(0)
    assert sampling._chunks(source, coords) == 2  # 41*37*29 points, not a multiple of 2
    ours = grid_sample(source, coords, mode=mode, padding_mode=padding_mode)
    ref = F.grid_sample(source, coords, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    assert ours.shape == ref.shape == (1, 3, 41, 37, 29)
    assert torch.equal(ours, ref)


def test_chunked_gradients_match_torch(two_threads) -> None:
    source, coords = _problem(1)
    weights = torch.randn(1, 3, *coords.shape[1:-1], dtype=torch.float64)
    grads = []
    for sample in (grid_sample, lambda s, c: F.grid_sample(s, c, align_corners=ALIGN_CORNERS)):
        s = source.clone().requires_grad_(True)
        c = coords.clone().requires_grad_(True)
        (sample(s, c) * weights).sum().backward()
        grads.append((s.grad, c.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


def test_gradients_are_bitwise_the_same_with_any_thread_count() -> None:
    """The split follows the number of points only: 1, 2 and 3 threads give bitwise equal gradients."""
    source, coords = _problem(3, points=(50, 45, 40))
    weights = torch.randn(1, 3, 50, 45, 40, dtype=torch.float64)
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert sampling._chunks(source, coords) == sampling.MAX_CHUNKS  # 90,000 points
            s = source.float().clone().requires_grad_(True)
            c = coords.float().clone().requires_grad_(True)
            (grid_sample(s, c) * weights.float()).sum().backward()
            grads.append((s.grad, c.grad))
    finally:
        torch.set_num_threads(before)
    for s_grad, c_grad in grads[1:]:
        assert torch.equal(s_grad, grads[0][0]) and torch.equal(c_grad, grads[0][1])


def test_point_gradients_are_bitwise_the_same_with_every_thread_count() -> None:
    """Without the source's gradient the split follows the threads; each point's gradient is its own (nothing is
    summed), so 1, 6 and 16 threads give torch's one-call gradient bit for bit."""
    source, coords = _problem(5, points=(60, 50, 40))
    weights = torch.randn(1, 3, 60, 50, 40, dtype=torch.float64)
    c = coords.clone().requires_grad_(True)
    (F.grid_sample(source, c, align_corners=ALIGN_CORNERS) * weights).sum().backward()
    reference = c.grad
    before = torch.get_num_threads()
    try:
        for threads, chunks in ((1, sampling.MAX_CHUNKS), (6, 6), (16, 7)):
            torch.set_num_threads(threads)
            c = coords.clone().requires_grad_(True)
            assert sampling._chunks(source, c) == chunks
            (grid_sample(source, c) * weights).sum().backward()
            assert torch.equal(c.grad, reference)
    finally:
        torch.set_num_threads(before)


def test_forward_only_sampling_uses_every_thread_and_is_bitwise_torch() -> None:
    """Without a gradient the points are split into as many chunks as threads (at least MAX_CHUNKS); nothing is
    summed, so any split gives torch's values bit for bit."""
    source, coords = _problem(4, points=(60, 50, 40))  # 120,000 points: up to 7 chunks
    ref = F.grid_sample(source, coords, align_corners=ALIGN_CORNERS)
    before = torch.get_num_threads()
    try:
        for threads, chunks in ((1, sampling.MAX_CHUNKS), (6, 6), (16, 7)):
            torch.set_num_threads(threads)
            assert sampling._chunks(source, coords) == chunks
            assert torch.equal(grid_sample(source, coords), ref)
            with torch.no_grad():
                assert sampling._chunks(source.requires_grad_(True), coords) == chunks
            assert sampling._chunks(source, coords) == sampling.MAX_CHUNKS  # a gradient is recorded
            source = source.detach()
    finally:
        torch.set_num_threads(before)


def test_small_or_batched_inputs_use_one_call(two_threads) -> None:
    source, coords = _problem(2, points=(10, 10, 10))
    assert sampling._chunks(source, coords) == 1
    batched = source.expand(2, -1, -1, -1, -1)
    assert sampling._chunks(batched, torch.zeros(2, 64, 64, 64, 3)) == 1


def _values_and_gradients(sample, source: torch.Tensor, coords: torch.Tensor, weights: torch.Tensor, **kwargs):
    """``sample``'s output and the gradients of ``sum(output * weights)`` for source and coords (none: 0)."""
    s = source.clone().requires_grad_(True)
    c = coords.clone().requires_grad_(True)
    out = sample(s, c, **kwargs)
    (out * weights).sum().backward()
    return out.detach(), s.grad, torch.zeros_like(c) if c.grad is None else c.grad


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("batch", [1, 2])
def test_gather_sample_matches_torch(mode, padding_mode, batch) -> None:
    """Values and both gradients equal torch's grid_sample, for points inside, outside, on the grid's
    voxel centres and exactly on its faces (where "border" clipping stops the coordinate gradient)."""
    gen = torch.Generator().manual_seed(5)
    source = torch.randn(batch, 3, 7, 6, 5, generator=gen, dtype=torch.float64)
    scattered = torch.rand(batch, 9, 8, 7, 3, generator=gen, dtype=torch.float64) * 2.6 - 1.3  # some outside
    on_voxels = identity_grid((7, 6, 5), dtype=torch.float64).expand(batch, -1, -1, -1, -1)
    for coords in (scattered, on_voxels):
        weights = torch.randn(batch, 3, *coords.shape[1:-1], generator=gen, dtype=torch.float64)
        ours = _values_and_gradients(gather_sample, source, coords, weights, mode=mode, padding_mode=padding_mode)
        ref = _values_and_gradients(F.grid_sample, source, coords, weights, mode=mode, padding_mode=padding_mode,
                                    align_corners=ALIGN_CORNERS)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert ref[1].abs().max() > 0 and (mode == "nearest" or ref[2].abs().max() > 0)


def test_gather_sample_float32_within_rounding() -> None:
    gen = torch.Generator().manual_seed(6)
    source = torch.randn(1, 3, 12, 11, 10, generator=gen)
    coords = torch.rand(1, 10, 9, 8, 3, generator=gen) * 2.4 - 1.2
    weights = torch.randn(1, 3, 10, 9, 8, generator=gen)
    ours = _values_and_gradients(gather_sample, source, coords, weights, padding_mode="border")
    ref = _values_and_gradients(F.grid_sample, source, coords, weights, padding_mode="border",
                                align_corners=ALIGN_CORNERS)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gather_sample_refuses_reflection() -> None:
    source, coords = _problem(7, shape=(4, 4, 4), points=(2, 2, 2))
    with pytest.raises(ValueError, match="padding_mode 'zeros' and 'border'"):
        gather_sample(source, coords, padding_mode="reflection")


def test_deterministic_mode_keeps_torch_on_cpu() -> None:
    """CPU grid_sample is deterministic already: deterministic mode does not switch the CPU to gathers."""
    source, coords = _problem(8, shape=(5, 5, 5), points=(3, 3, 3))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not sampling._needs_gather(source.requires_grad_(True), coords)
    finally:
        torch.use_deterministic_algorithms(before)


def _one_hot_reference(labels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Each label's indicator interpolated (zeros outside), argmax with ties to the smaller label."""
    values = torch.unique(labels)  # ascending
    best = torch.full(coords.shape[1:-1], -1.0, dtype=torch.float64)
    result = torch.zeros(coords.shape[1:-1], dtype=torch.long)
    for value in values:
        p = F.grid_sample((labels == value).double()[None, None], coords, align_corners=ALIGN_CORNERS)[0, 0]
        better = p > best + 1e-12
        best = torch.where(better, p, best)
        result[better] = value
    result[best <= 0] = 0  # no neighbour inside the grid
    return result


def test_sample_labels_matches_one_hot_interpolation() -> None:
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (9, 8, 7), generator=gen) * 10
    labels[:, :, :3] = 70  # a large region: most points are unanimous
    coords = torch.rand(1, 20, 21, 22, 3, generator=gen, dtype=torch.float64) * 2.6 - 1.3
    out = sample_labels(labels, coords)
    assert out.shape == (20, 21, 22) and out.dtype == torch.long
    assert torch.equal(out, _one_hot_reference(labels, coords))


def test_sample_labels_hand_computed() -> None:
    # a 2 x 1 x 1 grid: labels 5 (i = 0) and 9 (i = 1); voxel positions i = 0.3, 0.5, 0.7, 1.4 (outside half)
    labels = torch.tensor([5, 9]).view(2, 1, 1)
    i = torch.tensor([0.3, 0.5, 0.7, 1.4, 2.5], dtype=torch.float64)
    coords = torch.zeros(1, 5, 1, 1, 3, dtype=torch.float64)
    coords[..., 2] = (i * 2.0 - 1.0).view(1, 5, 1, 1)  # normalised i, last channel
    # 0.3 -> 5 (0.7 vs 0.3); 0.5 -> tie -> 5; 0.7 -> 9; 1.4 -> only voxel 1 inside (weight 0.6) -> 9; 2.5 -> none -> 0
    assert sample_labels(labels, coords).flatten().tolist() == [5, 5, 9, 9, 0]


def test_sample_labels_identity_keeps_the_map() -> None:
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 50, (12, 11, 10), generator=gen)
    assert torch.equal(sample_labels(labels, identity_grid(labels.shape, dtype=torch.float64)), labels)


def test_sample_labels_nearest_hand_computed_and_exact_for_large_identifiers() -> None:
    """Nearest: halves to even, 0 beyond half a voxel outside; identifiers above 2**24 (float32 cannot hold
    them: 614454277 became 614454272 through a float grid_sample) come back exactly."""
    big = [16_777_217, 614_454_277]
    labels = torch.tensor(big).view(2, 1, 1)
    i = torch.tensor([-0.6, -0.4, 0.3, 0.5, 0.7, 1.4, 1.6], dtype=torch.float64)
    coords = torch.zeros(1, 7, 1, 1, 3, dtype=torch.float64)
    coords[..., 2] = (i * 2.0 - 1.0).view(1, 7, 1, 1)
    assert sample_labels(labels, coords, "nearest").flatten().tolist() == [0, big[0], big[0], big[0], big[1],
                                                                            big[1], 0]


def test_sample_labels_nearest_matches_grid_sample_on_small_labels() -> None:
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 40, (9, 8, 7), generator=gen)
    coords = torch.rand(1, 15, 16, 17, 3, generator=gen, dtype=torch.float64) * 2.6 - 1.3
    reference = F.grid_sample(labels.double()[None, None], coords, mode="nearest", padding_mode="zeros",
                              align_corners=ALIGN_CORNERS)[0, 0].long()
    assert torch.equal(sample_labels(labels, coords, "nearest"), reference)
    with pytest.raises(ValueError, match="unknown label interpolation"):
        sample_labels(labels, coords, "cubic")


def test_uniform_cells_hand_computed() -> None:
    """A cell is uniform when its eight voxels carry one label; cells reaching beyond the grid never are."""
    labels = torch.full((3, 2, 2), 4)
    expected = torch.zeros((3, 2, 2), dtype=torch.bool)
    expected[0, 0, 0] = expected[1, 0, 0] = True  # the cells of voxels (0..1) and (1..2) along i
    assert torch.equal(_uniform_cells(labels), expected)
    labels[2, 1, 1] = 5  # a corner of the second cell only
    expected[1, 0, 0] = False
    assert torch.equal(_uniform_cells(labels), expected)
