"""The thread-count-invariant Adam against torch.optim.Adam, its invariance, and the probed ε."""
from __future__ import annotations

import torch

from svreg_core.optim.adam import EPSILON_PER_PROBE_GRADIENT, Adam, probe_epsilon


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
    ours = _quadratic_steps(lambda p: (Adam(p, [0.1, 0.5], [1e-8, 1e-8]), lambda o, it: o.step(decay[it])))

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
            opt = Adam([p], [0.7], [1e-8])
            for g in grads:
                p.grad = g.clone()
                opt.step(0.9)
            results.append(p.detach().clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_probe_epsilon_is_the_gradient_change_of_the_probe_step() -> None:
    """Hand-computed: for L = Σ a_i x_i² the gradient changes by 2 a_i d_i under a probe step d."""
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    x = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    y = torch.tensor([7.0], dtype=torch.float64)

    def gradient(values):
        return [2 * a * values[0], 6 * values[1]]  # L = Σ a x² + 3 y²

    eps = probe_epsilon(gradient, [x, y], [torch.full_like(x, 0.5), torch.tensor([2.0], dtype=torch.float64)])
    rms = float((2 * a * 0.5).square().mean().sqrt())  # sqrt((1 + 4 + 9 + 16) / 4)
    assert eps == [EPSILON_PER_PROBE_GRADIENT * rms, EPSILON_PER_PROBE_GRADIENT * 12.0]


def test_noise_gradient_at_the_optimum_moves_nothing_with_probed_eps() -> None:
    """At the minimum of a quadratic, gradient noise 1e-6 of the probe's gradient: torch's ε (1e-8)
    normalises the noise into steps of the step size's order; the probed ε leaves it at its own size."""
    gen = torch.Generator().manual_seed(2)
    curvature = torch.rand(5000, generator=gen, dtype=torch.float64) + 0.5

    def run(eps: float) -> float:
        x = torch.zeros(5000, dtype=torch.float64, requires_grad=True)
        opt = Adam([x], [0.5], [eps])
        for _ in range(50):
            noise = 1e-6 * torch.randn(5000, generator=gen, dtype=torch.float64)
            x.grad = 2 * curvature * x.detach() + noise
            opt.step()
        return float(x.detach().abs().max())

    probed = probe_epsilon(lambda v: [2 * curvature * v[0]], [torch.zeros(5000, dtype=torch.float64)],
                           [torch.ones(5000, dtype=torch.float64)])[0]
    assert run(1e-8) > 0.01  # measured 0.03: 30 000 times the noise's own equilibrium
    assert run(probed) < 1e-5  # measured 6e-7
