"""Adam whose update does not depend on the CPU thread count.

PyTorch's Adam updates with fused multiply-adds (``addcmul_``, ``addcdiv_``). Its CPU kernels compute
them with vector instructions and finish each thread's share with scalar code, which rounds a fused
multiply-add differently; where a share ends depends on the thread count, so the same registration
gave different fields with 1 and 2 threads. Here every operation is a separate multiply, add, divide
or square root — each correctly rounded whatever the code path — in the same order as
``torch.optim.Adam`` (β₁ 0.9, β₂ 0.999, ε 1e-8, bias correction).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class Adam:
    """Adam on a few tensors, each with its own step size (``lr``), scaled per step by ``lr_factor``.

    Args:
        params: leaf tensors with ``requires_grad``.
        lr: step size per tensor (units of the tensor).
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: Sequence[float], *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if len(params) != len(lr):
            raise ValueError("give one step size per parameter tensor.")
        self.params = list(params)
        self.lr = [float(v) for v in lr]
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One update with step sizes ``lr · lr_factor``; tensors without a gradient are left alone."""
        self.steps += 1
        b1, b2 = self.betas
        correction1 = 1.0 - b1 ** self.steps
        root_correction2 = math.sqrt(1.0 - b2 ** self.steps)
        for p, m, v, lr in zip(self.params, self.first, self.second, self.lr):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(b1).add_(g * (1.0 - b1))
            v.mul_(b2).add_((g * g) * (1.0 - b2))
            denominator = v.sqrt().div_(root_correction2).add_(self.eps)
            p.sub_((m / denominator).mul_(lr * lr_factor / correction1))
