"""The ``unet-spr`` network: layout and size, any input size, initial near-identity, gradients, learning."""
from __future__ import annotations

import math

import pytest
import torch

from svreg_core.losses.spr import SPRLoss
from svreg_core.models import UNetSPR, count_parameters
from svreg_core.models.base import LAMBDA_MIN


def test_default_layout_has_the_hand_counted_parameters(nets) -> None:
    model = nets.build("unet-spr")
    # 3x3x3 convolutions, weights c_in*c_out*27 plus c_out biases:
    encoder = (2 * 16 + 16 * 32 + 32 * 32 + 32 * 32) * 27 + (16 + 32 + 32 + 32)
    # 1/16: 32->32, then three (32 upsampled + 32 skip)->32, (32 + 16 full-res skip)->16, 16->16
    decoder = (32 * 32 + 3 * 64 * 32 + 48 * 16 + 16 * 16) * 27 + (32 * 4 + 16 + 16)
    velocity_head = 16 * 3 * 27 + 3
    lambda_head = 16 * 16 * 27 + 16 + 16 * 1 * 27 + 1
    assert count_parameters(model) == encoder + decoder + velocity_head + lambda_head == 300_100
    assert count_parameters(model) <= 1_000_000
    assert model.size_multiple == 16
    uniform = nets.build("unet-spr", {"uniform": True})
    assert count_parameters(uniform) == 300_100 - lambda_head
    assert UNetSPR(encoder_features=[8, 8, 8]).size_multiple == 8


def test_odd_sizes_give_outputs_on_the_input_grid(nets) -> None:
    model = nets.build("unet-spr")
    fixed, moving = nets.pair((17, 23, 29))
    with torch.no_grad():
        velocity, weight = model(fixed, moving)
    assert velocity.shape == (1, 3, 17, 23, 29)
    assert weight.shape == (1, 1, 17, 23, 29)
    assert torch.isfinite(velocity).all()
    assert float(weight.min()) >= LAMBDA_MIN and float(weight.max()) <= 1.0


def test_untrained_network_is_near_identity_with_high_lambda(nets) -> None:
    model = nets.build("unet-spr")
    with torch.no_grad():
        velocity, weight = model(*nets.pair((16, 24, 32)))
    assert float(velocity.abs().max()) < 1e-3
    expected = 1.0 / (1.0 + math.exp(-2.2))  # sigmoid of the λ head's initial bias, ≈ 0.90
    assert float((weight - expected).abs().max()) < 0.01


def test_every_parameter_gets_a_gradient(nets) -> None:
    model = nets.build("unet-spr", nets.SMALL_UNET)
    assert nets.parameters_without_gradient(model, *nets.pair((16, 16, 24))) == []


def test_uniform_network_has_unit_weight_and_no_lambda_head(nets) -> None:
    model = nets.build("unet-spr", {**nets.SMALL_UNET, "uniform": True})
    velocity, weight = model(*nets.pair((9, 10, 11)))
    assert torch.equal(weight, torch.ones(1, 1, 9, 10, 11))
    assert velocity.shape == (1, 3, 9, 10, 11)
    assert not any("lambda" in name for name, _ in model.named_parameters())
    assert model.config["uniform"] is True


def test_batch_entries_are_independent(nets) -> None:
    model = nets.build("unet-spr", nets.SMALL_UNET)
    fixed, moving = nets.pair((12, 16, 8), batch=2)
    velocity, weight = model(fixed, moving)
    for b in range(2):
        v, w = model(fixed[b:b + 1], moving[b:b + 1])
        torch.testing.assert_close(velocity[b:b + 1], v, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(weight[b:b + 1], w, rtol=1e-5, atol=1e-7)


def test_mismatched_inputs_are_refused(nets) -> None:
    model = nets.build("unet-spr", nets.SMALL_UNET)
    fixed, moving = nets.pair((8, 8, 8))
    with pytest.raises(ValueError, match="N, 1, I, J, K"):
        model(fixed, moving[..., :7])
    with pytest.raises(ValueError, match="N, 1, I, J, K"):
        model(torch.cat((fixed, moving), 1), torch.cat((fixed, moving), 1))


def test_a_few_training_steps_reduce_the_spr_loss(nets) -> None:
    """The network can learn: Adam on one translated blob pair lowers the SPR loss."""
    shape = (16, 16, 16)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij"))

    def blob(centre: tuple[float, float, float]) -> torch.Tensor:
        d2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
        return torch.exp(-d2 / (2 * 3.0 ** 2))[None, None]

    fixed, moving = blob((7.5, 7.5, 7.5)), blob((8.5, 7.0, 7.5))
    model = nets.build("unet-spr", nets.SMALL_UNET)
    loss_fn = SPRLoss(similarity="mse", alpha_prime=0.1, lambda_max=0.5)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        velocity, weight = model(fixed, moving)
        terms, _ = loss_fn.evaluate(fixed, moving, velocity, weight, integration_steps=5)
        optimiser.zero_grad()
        terms["total"].backward()
        optimiser.step()
        losses.append(terms["similarity"].item())
    assert losses[-1] < 0.3 * losses[0]  # seeds 0-2 reach 0.06-0.10


def test_body_convolutions_are_he_initialised_for_leaky_relu() -> None:
    """Every convolution before a LeakyReLU(0.2) has std sqrt(2 / ((1 + 0.2²) fan_in)) and zero bias."""
    torch.manual_seed(0)
    net = UNetSPR(encoder_features=(16, 32, 32, 32), decoder_features=(32, 32, 32, 32, 16, 16))
    body = [block[0] for block in (*net.encoder, *net.decoder)]
    for conv in body:
        fan_in = conv.in_channels * 27
        expected = math.sqrt(2.0 / ((1 + 0.2 ** 2) * fan_in))
        assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.1)
        assert torch.count_nonzero(conv.bias) == 0
    # the signal keeps its scale through the depth: the last decoder features are not 100x weaker
    x = torch.rand(1, 1, 32, 32, 32)
    features = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: features.append(float(out.std()))) for block in body]
    with torch.no_grad():
        net(x, torch.rand(1, 1, 32, 32, 32))
    for hook in hooks:
        hook.remove()
    assert min(features) > 0.1 * features[0]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_channels_last_convolution_is_torch_conv3d() -> None:
    """A batch of one that torch's conv3d runs on its slow kernel (N·C·D·H = 2·12·10 ≤ 20480): the oneDNN call
    gives conv3d's values and gradients to rounding, channels-last; under autocast conv3d itself runs."""
    from svreg_core.models.unet import ChannelsLastConv3d
    gen = torch.Generator().manual_seed(0)
    conv = ChannelsLastConv3d(2, 5)
    x = torch.randn(1, 2, 12, 10, 9, generator=gen)
    weights = torch.randn(1, 5, 12, 10, 9, generator=gen)
    outputs, grads = [], []
    for run in (conv, lambda t: torch.nn.functional.conv3d(t, conv.weight, conv.bias, padding=1)):
        conv.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = run(xi)
        (y * weights).sum().backward()
        outputs.append(y)
        grads.append((xi.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    assert outputs[0].is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for ours, reference in zip(grads[0], grads[1]):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
