"""The layers the stacked pool swaps in on CUDA (engines/kernels.py) compute the layers they replace."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from locfedmix.engines.kernels import SeparableBilinear, for_device
from locfedmix.models import build_decoder


@pytest.mark.parametrize("shape,size", [((8, 8), (32, 32)), ((7, 7), (28, 28)), ((5, 3), (13, 4)), ((6, 6), (6, 6))])
def test_separable_bilinear_equals_interpolate_under_vmap_with_its_gradient(shape, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, *shape, generator=g, requires_grad=True)  # [clients, batch, C, H, W]
    x_ref = x.detach().clone().requires_grad_(True)
    out = vmap(SeparableBilinear(size))(x)
    ref = F.interpolate(x_ref.flatten(0, 1), size=size, mode="bilinear", align_corners=False).view_as(out)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    weights = torch.randn(out.shape, generator=g)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


def test_the_decoder_upsamples_by_matrix_products_on_cuda_only():
    decoder = build_decoder((64, 8, 8), (3, 32, 32))
    on_cuda = for_device(copy.deepcopy(decoder), torch.device("cuda"))
    on_cpu = for_device(copy.deepcopy(decoder), torch.device("cpu"))
    assert sum(isinstance(m, SeparableBilinear) for m in on_cuda.modules()) == 1
    assert not any(isinstance(m, nn.Upsample) for m in on_cuda.modules())
    assert any(isinstance(m, nn.Upsample) for m in on_cpu.modules())
    assert on_cuda.state_dict().keys() == decoder.state_dict().keys()
    s = torch.randn(4, 64, 8, 8)
    torch.testing.assert_close(on_cuda(s), decoder(s), atol=1e-6, rtol=1e-5)  # run here on the CPU: same function
    nearest = nn.Sequential(nn.Upsample(size=(4, 4), mode="nearest"))
    assert isinstance(for_device(nearest, torch.device("cuda"))[0], nn.Upsample)
