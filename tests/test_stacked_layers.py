"""The stacked pool's recomputed layers (backends.stacked_layers) give the written layers' values and gradients."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from locfedmix.engines.backends.stacked_layers import ChannelsLastMaxPool2d, TapSumConv2d, PatchConv2d, stacked_runner
from locfedmix.models import build_decoder, build_split_model

CLIENTS, BATCH = 3, 2


def per_client_outputs(layer: nn.Module, reference: nn.Module, x: torch.Tensor, g: torch.Generator):
    """Both layers under vmap over CLIENTS rows of their own (random) parameters, and the gradients of a random
    linear function of their outputs with respect to the input and every parameter."""
    stacked = {k: torch.randn(CLIENTS, *v.shape, generator=g, dtype=torch.float64).requires_grad_()
               for k, v in reference.named_parameters()}
    results = []
    for module in (layer, reference):
        out = vmap(lambda p, inputs: functional_call(module, p, (inputs,)))(stacked, x)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        grads = torch.autograd.grad((out * probe).sum(), [x, *stacked.values()])
        results.append((out, *grads))
    return results


def maps(shape: tuple[int, ...], layout: torch.memory_format, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(CLIENTS * BATCH, *shape, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
    return x.view(CLIENTS, BATCH, *shape).requires_grad_()


CONVS = [  # (kind, in, out, kernel, stride, padding, dilation, bias)
    (PatchConv2d, 3, 8, 3, 1, 1, 1, True),
    (PatchConv2d, 2, 4, 3, 2, 1, 1, True),
    (PatchConv2d, 3, 5, 1, 2, 0, 1, False),
    (PatchConv2d, 1, 4, 5, 1, 2, 1, True),
    (PatchConv2d, 2, 3, 3, 1, 2, 2, True),
    (TapSumConv2d, 16, 3, 3, 1, 1, 1, True),
    (TapSumConv2d, 8, 2, 1, 1, 0, 1, True),
    (TapSumConv2d, 6, 1, 5, 1, 2, 1, False),
    (TapSumConv2d, 8, 3, 3, 2, 0, 1, True),
    (TapSumConv2d, 8, 3, 3, 1, 1, 2, True),
]


@pytest.mark.parametrize("kind,c_in,c_out,k,stride,padding,dilation,bias", CONVS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_recomputed_convolutions_equal_conv2d(kind, c_in, c_out, k, stride, padding, dilation, bias, layout):
    """Values and gradients (input, weight, bias) of nn.Conv2d, per client under vmap, from either layout, with
    strides, paddings and dilations; float64 so that the different summation orders agree to 1e-10."""
    g = torch.Generator().manual_seed(0)
    reference = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, bias=bias).double()
    layer = kind(c_in, c_out, k, stride, padding, dilation, bias=bias).double()
    x = maps((c_in, 9, 7), layout, g)
    ours, theirs = per_client_outputs(layer, reference, x, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel,stride,padding,ceil", [(2, None, 0, False), (3, 2, 1, True), (2, 1, 0, False)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channels_last_max_pool_equals_max_pool(kernel, stride, padding, ceil, layout):
    g = torch.Generator().manual_seed(1)
    x = maps((4, 9, 7), layout, g)
    outs = []
    for pool in (ChannelsLastMaxPool2d(kernel, stride, padding, ceil_mode=ceil), nn.MaxPool2d(kernel, stride, padding,
                                                                                          ceil_mode=ceil)):
        out = vmap(pool)(x)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        outs.append((out, *torch.autograd.grad((out * probe).sum(), [x])))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_runner_swaps_the_slow_layers_on_the_cpu_and_keeps_every_parameter_name():
    lower = build_split_model("cnn", (3, 32, 32), 10).lower
    decoder = build_decoder((64, 8, 8), (3, 32, 32))
    cpu = torch.device("cpu")
    lower_runner, decoder_runner = stacked_runner(lower, cpu), stacked_runner(decoder, cpu)
    kinds = [type(m) for m in lower_runner.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    # the first convolution reads 27 values per output: patches; the second 288: the grouped convolution stays
    assert kinds == [PatchConv2d, ChannelsLastMaxPool2d, nn.Conv2d, ChannelsLastMaxPool2d]
    assert type(decoder_runner[2]) is TapSumConv2d  # 16 maps → 3: 27 values written per input position
    for template, runner in ((lower, lower_runner), (decoder, decoder_runner)):
        assert list(template.state_dict()) == list(runner.state_dict())
        for a, b in zip(template.state_dict().values(), runner.state_dict().values()):
            assert torch.equal(a, b)
    gpu_runner = stacked_runner(lower, torch.device("cuda"))  # not measured there: the layers as written
    assert [type(m) for m in gpu_runner.modules()] == [type(m) for m in lower.modules()]


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, 3, padding=1, groups=1, padding_mode="reflect"),
                                  nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(16, 3, 3, padding="same")])
def test_the_runner_keeps_convolutions_it_cannot_recompute(conv):
    """Reflect padding, groups, string padding."""
    assert type(stacked_runner(nn.Sequential(conv), torch.device("cpu"))[0]) is nn.Conv2d
