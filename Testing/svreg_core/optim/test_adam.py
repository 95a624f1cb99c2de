"""The thread-count-invariant Adam against torch.optim.Adam, and its invariance."""
from __future__ import annotations

import torch

from svreg_core.optim.adam import Adam


def _quadratic_steps(make, steps: int = 25) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(1000, generator=gen, dtype=torch.float64)
    x = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
    y = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt, step = make([x, y])
    path = []
    for it in range(steps):
        opt.zero_grad()
        ((x - target).pow(4).sum() + (y * target[:3]).sin().sum()).backward()
        step(opt, it)
        path.append(torch.cat((x.detach(), y.detach())).clone())
    return path


def test_matches_torch_adam_with_two_step_sizes_and_a_decay() -> None:
    decay = [1.0 - 0.03 * it for it in range(25)]
    ours = _quadratic_steps(lambda p: (Adam(p, [0.1, 0.5]), lambda o, it: o.step(decay[it])))

    def torch_adam(p):
        opt = torch.optim.Adam([{"params": [p[0]], "lr": 0.1}, {"params": [p[1]], "lr": 0.5}])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: decay[min(it, 24)])

        def step(o, it):
            o.step()
            sched.step()
        return opt, step

    ref = _quadratic_steps(torch_adam)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_update_is_bitwise_the_same_with_any_thread_count() -> None:
    """A tensor long enough to be split between threads, with a length that is no multiple of a vector."""
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3 * 70001, generator=gen) for _ in range(5)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            p = torch.zeros(3 * 70001, requires_grad=True)
            opt = Adam([p], [0.7])
            for g in grads:
                p.grad = g.clone()
                opt.step(0.9)
            results.append(p.detach().clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])
