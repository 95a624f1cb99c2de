"""The project's one call into ``grid_sample``, parallel on multi-core CPUs.

PyTorch's CPU kernel for 3-D ``grid_sample`` (forward and backward) parallelises over the batch
dimension only, so a single volume (``N = 1``) runs on one core. :func:`grid_sample` splits the
sampling points of a single volume into batch entries (the source is broadcast, not copied) and
reassembles the result: forward values are bitwise those of one call, and on 2 cores forward and
backward take about 0.6x the time. When the source's gradient is recorded, the number of entries depends
on the number of points only, never on the thread count: the backward pass sums the entries' gradients
of the source, and a split that followed the threads made results differ between machines (the
optimiser amplified last-bit differences to millimetres between 1 and 2 threads). Otherwise nothing is
summed and the entries follow the threads. On CUDA, or with ``N > 1``, it is a plain
``grid_sample`` call, except in PyTorch's deterministic mode (``torch.use_deterministic_algorithms``)
when a gradient is needed: torch's CUDA backward accumulates the source's gradient with atomic adds, in
an order that changes from run to run (and refuses to run in that mode), so the sampling is then done
by :func:`gather_sample`, whose backward is deterministic there.

Coordinates follow :mod:`svreg_core.conventions`: normalised, ``align_corners=True``, channel order
``(k, j, i)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from svreg_core.conventions import ALIGN_CORNERS

#: Fewest sampling points per chunk worth a thread of their own.
MIN_POINTS_PER_CHUNK = 16384

#: Chunks of a large volume when the source's gradient is recorded, whatever the thread count: in the backward
#: pass each chunk holds its own gradient copy of the source, and the copies are summed, so the number of chunks
#: sets the rounding of that sum (fixed: bitwise the same gradients with any number of threads). Brain pair,
#: 2 threads: deformable stage 29.8 s with 4, 31.7 s with 8.
MAX_CHUNKS = 4


def _chunks(source: torch.Tensor, coords: torch.Tensor) -> int:
    """How many batch items ``grid_sample`` splits the points into on a CPU.

    torch's 3-D ``grid_sample`` on a CPU runs in parallel over the batch only (one item: one thread, 0.9–1.2 s
    for 5 M points with 1 or 2 threads, 0.5 s as two items on 2 threads; torch 2.13, 2026-11-28). When the
    source's gradient is recorded: :data:`MAX_CHUNKS`. Otherwise nothing is summed (values, and gradients with
    respect to the points, are computed point by point), so the split cannot change a value: as many chunks as
    torch has threads (at least :data:`MAX_CHUNKS`), which lets a machine with more cores use them for the
    optimiser's image warps and for the outputs' fields and warps.
    """
    if source.device.type != "cpu" or source.shape[0] != 1:
        return 1
    points = math.prod(coords.shape[1:-1])
    summed = torch.is_grad_enabled() and source.requires_grad
    most = MAX_CHUNKS if summed else max(MAX_CHUNKS, torch.get_num_threads())
    return max(1, min(most, points // MIN_POINTS_PER_CHUNK))


def grid_sample(source: torch.Tensor, coords: torch.Tensor, *, mode: str = "bilinear",
                padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``source`` ``(N, C, I, J, K)`` at normalised ``coords`` ``(N, *S, 3)``; returns ``(N, C, *S)``.

    Args:
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
        padding_mode: value outside the source grid: ``"zeros"``, ``"border"`` or ``"reflection"``.
    """
    if _needs_gather(source, coords):
        return gather_sample(source, coords, mode=mode, padding_mode=padding_mode)
    chunks = _chunks(source, coords)
    if chunks == 1:
        return F.grid_sample(source, coords, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    out_shape = coords.shape[1:-1]
    flat = coords.reshape(-1, 3)
    points = flat.shape[0]
    per_chunk = -(-points // chunks)
    extra = per_chunk * chunks - points
    if extra:
        flat = torch.cat((flat, flat[-1:].expand(extra, 3)))
    batched = F.grid_sample(source.expand(chunks, *source.shape[1:]), flat.view(chunks, per_chunk, 1, 1, 3),
                            mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    channels = source.shape[1]
    out = batched.view(chunks, channels, per_chunk).transpose(0, 1).reshape(channels, chunks * per_chunk)
    return out[:, :points].reshape(1, channels, *out_shape)


#: The eight neighbours of a point: offsets ``(di, dj, dk)`` from its lower corner.
_CORNERS = tuple((di, dj, dk) for di in (0, 1) for dj in (0, 1) for dk in (0, 1))


def _needs_gather(source: torch.Tensor, coords: torch.Tensor) -> bool:
    """Whether torch's ``grid_sample`` would be differentiated on CUDA in deterministic mode."""
    return (source.device.type == "cuda" and torch.are_deterministic_algorithms_enabled()
            and torch.is_grad_enabled() and (source.requires_grad or coords.requires_grad))


def _voxel(coord: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """Normalised coordinate (``align_corners=True``) -> voxel index along an axis of ``size`` voxels.

    ``"border"`` clips to ``[0, size - 1]``; as in torch's ``grid_sample``, the clip bounds themselves
    count as outside for the gradient (zero there).
    """
    voxel = (coord + 1) / 2 * (size - 1)
    if padding_mode == "zeros":
        return voxel
    inside = (voxel > 0) & (voxel < size - 1)
    return torch.where(inside, voxel, voxel.detach().clamp(0, size - 1))


def gather_sample(source: torch.Tensor, coords: torch.Tensor, *, mode: str = "bilinear",
                  padding_mode: str = "zeros") -> torch.Tensor:
    """:func:`grid_sample` computed with explicit gathers of the neighbours (same arguments and result).

    Values equal torch's ``grid_sample`` to rounding, and so do the gradients with respect to
    ``source`` and ``coords``. The neighbours are read with ``index_select``, whose backward
    (``index_add``) PyTorch's deterministic mode runs deterministically on CUDA, unlike
    ``grid_sample``'s atomic adds; it costs more memory and time. ``padding_mode`` ``"zeros"`` or
    ``"border"`` (the ones the engine uses).
    """
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"gather_sample supports padding_mode 'zeros' and 'border', not {padding_mode!r}.")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"gather_sample supports mode 'bilinear' and 'nearest', not {mode!r}.")
    n, channels, *sizes = source.shape
    volume = sizes[0] * sizes[1] * sizes[2]
    # (C, N * voxels): one 1-D index reaches every item of the batch (a view when N = 1)
    flat_source = source.transpose(0, 1).reshape(channels, n * volume)
    batch_offset = torch.arange(n, device=source.device)[:, None] * volume
    # normalised (k, j, i) -> voxel (i, j, k), align_corners=True as in svreg_core.conventions
    points = coords.reshape(n, -1, 3).flip(-1)
    voxel = [_voxel(points[..., axis], size, padding_mode) for axis, size in enumerate(sizes)]
    corners: list[tuple[list[torch.Tensor], torch.Tensor | None]]  # neighbour positions and weights (None: weight 1)
    if mode == "nearest":
        corners = [([v.round() for v in voxel], None)]
    else:
        low = [v.floor() for v in voxel]
        # per axis, (weight of the lower neighbour, weight of the upper one), written as torch writes them
        weights = [(lo + 1 - v, v - lo) for v, lo in zip(voxel, low)]
        corners = [([lo + o for lo, o in zip(low, offset)],
                    weights[2][offset[2]] * weights[1][offset[1]] * weights[0][offset[0]]) for offset in _CORNERS]
    out: torch.Tensor | None = None
    for position, weight in corners:
        index = [p.detach().long() for p in position]
        inside = (index[0] >= 0) & (index[0] < sizes[0]) & (index[1] >= 0) & (index[1] < sizes[1]) \
            & (index[2] >= 0) & (index[2] < sizes[2])
        clamped = [i.clamp(0, size - 1) for i, size in zip(index, sizes)]
        linear = (clamped[0] * sizes[1] + clamped[1]) * sizes[2] + clamped[2] + batch_offset
        values = flat_source.index_select(1, linear.reshape(-1)).view(channels, n, -1).transpose(0, 1)
        weight = inside.to(values.dtype) if weight is None else weight * inside
        term = values * weight[:, None]
        out = term if out is None else out + term
    assert out is not None  # corners is never empty
    return out.reshape(n, channels, *coords.shape[1:-1])


#: How label maps are warped: ``"linear"`` (each label's indicator trilinearly, then the largest: :func:`sample_labels`,
#: the TransMorph/MIR convention) or ``"nearest"`` (nearest neighbour).
LABEL_INTERPOLATIONS = ("linear", "nearest")

#: Sampling points handled at once by :func:`sample_labels`: its temporaries are about 200 bytes per point
#: (≈ 50 MB; 1 mm brain labels take as long as with four times as many).
_LABEL_SLAB = 1 << 18


def sample_labels(labels: torch.Tensor, coords: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """Label map ``(I, J, K)`` (integers) sampled at normalised ``coords`` ``(1, *S, 3)``.

    ``mode="linear"``, trilinear voting: equal to interpolating every label's indicator trilinearly (zeros
    outside the grid) and taking the argmax, background included, with ties going to the smaller label value;
    a point whose eight neighbours all lie outside the grid gets 0. Only the eight neighbours of each point are
    visited, so the cost does not grow with the number of labels, and only points whose neighbours disagree
    are voted on: a point in a *uniform cell* (its eight neighbours inside the grid and of one label, found
    once for the whole map by :func:`_uniform_cells`) takes that label from one lookup.

    ``mode="nearest"``: the label of the nearest voxel (halves rounded to even, as ``grid_sample``), 0 where
    that voxel lies outside the grid. Labels are looked up, never interpolated as floats: identifiers above
    2**24 (e.g. the Allen atlas') stay exact.

    Returns:
        ``(*S)`` int64 labels.
    """
    if mode not in LABEL_INTERPOLATIONS:
        raise ValueError(f"unknown label interpolation {mode!r}")
    sizes = labels.shape
    scale = torch.tensor([(n - 1) * 0.5 for n in sizes], dtype=torch.float64, device=coords.device)
    # gathered in their own integer type (int32 neighbours: half the memory of int64)
    flat_labels = labels.reshape(-1) if not labels.is_floating_point() else labels.reshape(-1).long()
    uniform_cells = _uniform_cells(flat_labels.view(sizes)).reshape(-1) if mode == "linear" else None
    flat = coords.reshape(-1, 3)
    out = torch.zeros(flat.shape[0], dtype=torch.long, device=coords.device)
    for start in range(0, flat.shape[0], _LABEL_SLAB):
        # normalised (k, j, i) -> voxel (i, j, k), align_corners=True as in svreg_core.conventions
        voxel = (flat[start:start + _LABEL_SLAB].flip(-1).double() + 1.0) * scale
        if uniform_cells is None:
            out[start:start + _LABEL_SLAB] = _nearest(flat_labels, sizes, voxel)
            continue
        base = voxel.floor()
        frac = voxel - base
        base = base.long()
        # the cell of the lower neighbour (clamped), and whether all eight neighbours lie inside the grid
        cell_inside = torch.ones_like(base[:, 0], dtype=torch.bool)
        cell = torch.zeros_like(base[:, 0])
        for axis, n in enumerate(sizes):
            cell_inside &= (base[:, axis] >= 0) & (base[:, axis] < n - 1)
            cell = cell * n + base[:, axis].clamp(0, n - 1)
        result = flat_labels[cell].long()
        todo = torch.nonzero(~(cell_inside & uniform_cells[cell])).squeeze(1)
        base, frac = base[todo], frac[todo]
        # per axis: the lower / upper neighbour index (clamped), and whether it lies inside the grid
        index, inside = [], []
        for axis, n in enumerate(sizes):
            low = base[:, axis]
            index.append((low.clamp(0, n - 1), (low + 1).clamp(0, n - 1)))
            inside.append(((low >= 0) & (low < n), (low >= -1) & (low < n - 1)))
        neighbours = torch.stack([flat_labels[(index[0][di] * sizes[1] + index[1][dj]) * sizes[2] + index[2][dk]]
                                  for di, dj, dk in _CORNERS], 1)  # (P, 8)
        corner_inside = torch.stack([inside[0][di] & inside[1][dj] & inside[2][dk] for di, dj, dk in _CORNERS], 1)
        weights = torch.stack([torch.stack([frac[:, a] if o else 1.0 - frac[:, a] for a, o in enumerate(offset)],
                                           1).prod(1) for offset in _CORNERS], 1)
        weights = torch.where(corner_inside, weights, torch.zeros_like(weights))
        result[todo] = _vote(neighbours, weights).long()
        out[start:start + _LABEL_SLAB] = result
    return out.reshape(coords.shape[1:-1])


def _nearest(flat_labels: torch.Tensor, sizes: torch.Size, voxel: torch.Tensor) -> torch.Tensor:
    """The labels (int64) of the voxels nearest to the ``(P, 3)`` voxel coordinates; 0 outside the grid."""
    index = torch.round(voxel).long()
    inside = torch.ones_like(index[:, 0], dtype=torch.bool)
    cell = torch.zeros_like(index[:, 0])
    for axis, n in enumerate(sizes):
        inside &= (index[:, axis] >= 0) & (index[:, axis] < n)
        cell = cell * n + index[:, axis].clamp(0, n - 1)
    return torch.where(inside, flat_labels[cell].long(), 0)


def _uniform_cells(labels: torch.Tensor) -> torch.Tensor:
    """``(I, J, K)`` bool: whether the eight voxels ``(i..i+1, j..j+1, k..k+1)`` of ``labels`` all carry one label
    (False on the last slice of each axis, whose cells reach beyond the grid)."""
    first = labels[:-1, :-1, :-1]
    same = torch.ones_like(first, dtype=torch.bool)
    for di, dj, dk in _CORNERS[1:]:
        same &= labels[di:labels.shape[0] - 1 + di, dj:labels.shape[1] - 1 + dj, dk:labels.shape[2] - 1 + dk] == first
    uniform = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    uniform[:-1, :-1, :-1] = same
    return uniform


def _vote(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per row of ``(P, 8)`` neighbour labels and trilinear weights: the label of largest total weight.

    Ties go to the smaller label; a row without positive weight gives 0.
    """
    best_label = torch.zeros_like(labels[:, 0])
    best_score = torch.zeros_like(weights[:, 0])
    for corner in range(labels.shape[1]):
        label = labels[:, corner:corner + 1]
        score = (weights * (labels == label)).sum(1)
        label = label[:, 0]
        better = (weights[:, corner] > 0) & ((score > best_score) | ((score == best_score) & (label < best_label)))
        best_label = torch.where(better, label, best_label)
        best_score = torch.where(better, score, best_score)
    return best_label
