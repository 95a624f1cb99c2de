"""Data-parallel training (PyTorch DDP) when launched by ``torchrun``.

``torchrun --nproc_per_node N -m svreg_core.cli train ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set; each joins the process group (``nccl`` on CUDA, ``gloo`` on CPU),
uses GPU ``LOCAL_RANK`` when training on CUDA, trains on its own share of every epoch's samples (see
:mod:`svreg_core.training.loaders`) and averages gradients through
:class:`~torch.nn.parallel.DistributedDataParallel`. Only rank 0 writes files and reports progress;
all ranks meet at a barrier after every epoch. Without those variables everything runs in one process.

A rank whose peer stops (rank 0 refusing an input that it alone reads, before training) while it waits for it at a
barrier or a sum raises :class:`PeerStopped`, which ``svreg train`` ends quietly: the peer reports why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from svreg_core.errors import InputError, SvregError

#: How long a rank waits for the others at a barrier. Rank 0 pre-aligns every real pair (2–6 s each on a CPU)
#: while the others wait before the first epoch: hours for a large cohort, far beyond PyTorch's default (10 min
#: for NCCL, 30 min for gloo), which would end the job; the alignments are cached, so a restart resumes them.
BARRIER_TIMEOUT = timedelta(hours=12)


class PeerStopped(SvregError):
    """Another process of the torchrun job stopped while this one waited for it (that process reports why)."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the group.

    Attributes:
        rank: global rank (0 writes files).
        world_size: number of processes (1: not distributed).
        local_rank: rank on this machine (the GPU it uses).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise InputError(f"environment variable {name}={os.environ[name]!r} is not a whole number.") from None


def launched_by_torchrun() -> bool:
    """Whether the torchrun variables describe a group of more than one process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and _env_int("WORLD_SIZE") > 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, 0 outside torchrun)."""
    return _env_int("LOCAL_RANK") if launched_by_torchrun() and "LOCAL_RANK" in os.environ else 0


def is_main_process() -> bool:
    """Whether this process writes files and reports progress (rank 0, or not launched by torchrun)."""
    return not launched_by_torchrun() or _env_int("RANK") == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; CUDA uses GPU ``local_rank``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was requested but no CUDA GPU is available; use --device cpu.")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group (if launched by torchrun) and return this process's place in it."""
    if not launched_by_torchrun():
        return DistributedContext()
    ctx = DistributedContext(_env_int("RANK"), _env_int("WORLD_SIZE"), local_rank())
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    return ctx


def wrap_model(model: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """``model`` in a DDP wrapper when distributed (gradients averaged over ranks), else itself."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _peer_stopped(exc: RuntimeError) -> PeerStopped:
    """A collective's failure (gloo: "Connection closed by peer"; NCCL: ``DistBackendError``, a ``RuntimeError``) as
    :class:`PeerStopped`."""
    reason = " ".join(str(exc).split())[:200]
    return PeerStopped(f"another process of the torchrun job stopped ({reason}); its own message says why.")


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank arrives (no-op in one process); :class:`PeerStopped` when a rank stops instead."""
    if ctx.enabled:
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise _peer_stopped(exc) from None


def all_reduce_sum(values: list[float], ctx: DistributedContext, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (``values`` itself in one process); :class:`PeerStopped` when a
    rank stops instead."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    except RuntimeError as exc:
        raise _peer_stopped(exc) from None
    return tensor.tolist()


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
