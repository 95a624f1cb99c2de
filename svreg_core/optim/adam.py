"""Adam whose update does not depend on the CPU thread count.

PyTorch's Adam updates with fused multiply-adds (``addcmul_``, ``addcdiv_``). Its CPU kernels compute
them with vector instructions and finish each thread's share with scalar code, which rounds a fused
multiply-add differently; where a share ends depends on the thread count, so the same registration
gave different fields with 1 and 2 threads. Here every operation is a separate multiply, add, divide
or square root — each correctly rounded whatever the code path — in the same order as
``torch.optim.Adam`` (β₁ 0.9, β₂ 0.999, bias correction).

ε is set from the problem (:func:`probe_epsilon`), not fixed at 1e-8: Adam's step ``lr · m / (√v + ε)``
is about ``lr`` whatever the gradient's size once ``√v ≫ ε``, so gradient noise at an optimum (an image
registered to a copy of itself) moved the parameters by whole steps. With ε the size of the gradient that
a misalignment of about one probe step produces, steps are Adam's normalised ones far from the optimum
and shrink with the gradient near it, as in gradient descent.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: ε of each tensor in units of the RMS gradient change a probe step produces (:func:`probe_epsilon`).
#: Chosen on images registered to copies of themselves (MNI152 at 3 and 6 mm): 1 left |u| up to 0.26 mm,
#: 3 up to 0.11 mm (MIND in flat background), 5 up to 0.04 mm; on a synthetic known warp (5 mm) the error
#: was the same within 1 % for 1, 3 and 5 and 3 % higher for 10.
EPSILON_PER_PROBE_GRADIENT = 5.0


def probe_epsilon(gradient: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]],
                  params: Sequence[torch.Tensor], probes: Sequence[torch.Tensor]) -> list[float]:
    """Adam's ε for each tensor: :data:`EPSILON_PER_PROBE_GRADIENT` × the RMS change of its gradient
    when ``params`` move by ``probes`` (e.g. one voxel), i.e. the gradient a misalignment that size makes.

    Args:
        gradient: the loss's gradient with respect to each tensor, at the given values.
        params: the current values.
        probes: a displacement of each tensor, in its units.
    """
    with torch.no_grad():
        at = [p.detach() for p in params]
        moved = [p + d for p, d in zip(at, probes)]
    base, shifted = gradient(at), gradient(moved)
    return [max(EPSILON_PER_PROBE_GRADIENT * float((s - b).square().mean().sqrt()), torch.finfo(torch.float32).tiny)
            for b, s in zip(base, shifted)]


class Adam:
    """Adam on a few tensors, each with its own step size (``lr``), scaled per step by ``lr_factor``.

    A step is :meth:`prepare` (host arithmetic: the step count, the bias corrections) then :meth:`update`
    (device work only, reading this step's scalars from tensors on the parameters' device), so a CUDA
    graph can record :meth:`update` once and replay it every step; :meth:`step` does both.

    Args:
        params: the tensors it moves, in place (with a ``.grad`` for :meth:`step`).
        lr: step size per tensor (units of the tensor).
        eps: ε per tensor (units of its gradient), e.g. from :func:`probe_epsilon`.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: Sequence[float], eps: Sequence[float], *,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        if not len(params) == len(lr) == len(eps):
            raise ValueError("give one step size and one ε per parameter tensor.")
        self.params = list(params)
        self.lr = [float(v) for v in lr]
        self.eps = [float(v) for v in eps]
        self.betas = betas
        self.steps = 0
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]
        # this step's lr · lr_factor / (1 − β₁ᵗ) and √(1 − β₂ᵗ), per tensor, on its device and in its dtype
        self._scale = [p.new_zeros(()) for p in self.params]
        self._root_correction2 = [p.new_zeros(()) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def prepare(self, lr_factor: float = 1.0) -> None:
        """Count a step and set its scalars for :meth:`update` (step sizes ``lr · lr_factor``); on a GPU
        this launches fills and never waits for the device."""
        self.steps += 1
        b1, b2 = self.betas
        correction1 = 1.0 - b1 ** self.steps
        root_correction2 = math.sqrt(1.0 - b2 ** self.steps)
        for scale, root, lr in zip(self._scale, self._root_correction2, self.lr):
            scale.fill_(lr * lr_factor / correction1)
            root.fill_(root_correction2)

    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor | None]) -> None:
        """Move each tensor by the step :meth:`prepare` set, given its gradient (``None``: left alone)."""
        b1, b2 = self.betas
        for p, g, m, v, eps, scale, root in zip(self.params, grads, self.first, self.second, self.eps,
                                                self._scale, self._root_correction2):
            if g is None:
                continue
            m.mul_(b1).add_(g * (1.0 - b1))
            v.mul_(b2).add_((g * g) * (1.0 - b2))
            denominator = v.sqrt().div_(root).add_(eps)
            p.sub_((m / denominator).mul_(scale))

    def step(self, lr_factor: float = 1.0) -> None:
        """One update from the tensors' ``.grad`` with step sizes ``lr · lr_factor``; tensors without a
        gradient are left alone."""
        self.prepare(lr_factor)
        self.update([p.grad for p in self.params])
