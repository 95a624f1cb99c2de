"""Replaying an optimiser iteration as one CUDA graph.

On a GPU one iteration of the pairwise optimiser is a few hundred small kernels (scaling and squaring,
warping, LNCC, their backward passes, Adam); launching them one by one from Python takes longer than
running them (brain pair on an H200: about 8 ms per iteration). A CUDA graph records the kernels of one
iteration once and replays them with a single launch.

The recorded function must be device work only — no host synchronisation, no tensor made from host
numbers — with the same shapes every call, reading its inputs from and writing its results to tensors
that stay where they are (parameters updated in place); what it returns is then overwritten by every
replay. Scalars that change between iterations (step sizes) live in device tensors set before each
replay (:meth:`svreg_core.optim.adam.Adam.prepare`).

While a graph is recorded (once per pyramid level, a few milliseconds) no other thread of the process may
use the GPU: PyTorch records in its default, process-wide capture mode. ``svreg register`` runs one
registration per process; callers of the API that register on one GPU from several threads at once
should serialise the calls.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")

#: Eager calls before recording: the first calls fill caches (band matrices, sampling grids) and let
#: cuBLAS set up its workspace, which must not happen during a recording.
WARMUP_CALLS = 2


class GraphedIteration(Generic[T]):
    """Call ``iteration`` eagerly :data:`WARMUP_CALLS` times, then record it as a CUDA graph and replay that.

    Off the GPU, or with ``enabled`` false, every call runs ``iteration`` eagerly. If the recording fails
    (an operation a graph cannot hold), a warning says so and the calls stay eager; the failed recording
    ran nothing, so no iteration is lost or repeated.
    """

    def __init__(self, iteration: Callable[[], T], device: torch.device, *, enabled: bool = True) -> None:
        self._iteration = iteration
        self._device = device
        self._eager = not (enabled and device.type == "cuda")
        self._calls = 0
        self._recorded: tuple[torch.cuda.CUDAGraph, T] | None = None  # the graph and its outputs

    @property
    def replaying(self) -> bool:
        """Whether calls now replay a recorded graph."""
        return self._recorded is not None

    def __call__(self) -> T:
        self._calls += 1
        if self._eager:
            return self._iteration()
        if self._recorded is None and self._calls <= WARMUP_CALLS:
            return self._warmup()
        if self._recorded is None:
            self._record()
            if self._recorded is None:
                return self._iteration()
        graph, outputs = self._recorded
        graph.replay()
        return outputs

    def _warmup(self) -> T:
        # on a side stream, as PyTorch asks before a recording (autograd then sets up its streams there)
        current = torch.cuda.current_stream(self._device)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = self._iteration()
        current.wait_stream(side)
        return out

    def _record(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self._iteration()
        except RuntimeError as exc:
            warnings.warn(f"could not record the optimiser iteration as a CUDA graph ({exc}); "
                          "running it step by step (slower, same result).", stacklevel=3)
            self._eager = True
            return
        self._recorded = graph, outputs
