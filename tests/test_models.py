"""Tests for locfedmix.models: exact split equivalence, cut shapes, auxiliary modules, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.errors import UserError
from locfedmix.models.auxiliary import UpsampledConv
from locfedmix.models import (
    build_aux_classifier,
    build_decoder,
    build_split_model,
    default_cut,
    model_names,
    n_blocks,
)

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
CASES = [
    (name, shape, cut)
    for name in ("alexnet", "cnn", "resnet")
    for shape in SHAPES
    for cut in range(1, {"alexnet": 5, "cnn": 4, "resnet": 5}[name])
]


def _build(name: str, shape: tuple[int, int, int], cut: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_split_model(name, shape, 10, cut)


def test_registry() -> None:
    assert model_names() == ["alexnet", "cnn", "resnet"]
    assert (n_blocks("alexnet"), default_cut("alexnet")) == (5, 1)
    assert (n_blocks("cnn"), default_cut("cnn")) == (4, 2)
    assert (n_blocks("resnet"), default_cut("resnet")) == (5, 3)


@pytest.mark.parametrize("name,shape,cut", CASES)
def test_split_equals_unsplit_and_cut_shape(
    name: str, shape: tuple[int, int, int], cut: int
) -> None:
    m = _build(name, shape, cut)
    full = nn.Sequential(*m.lower, *m.upper).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        s = m.lower(x)
        out = m.upper(s)
        ref = full(x)
    assert out.shape == (3, 10)
    assert torch.equal(out, ref)
    assert tuple(s.shape[1:]) == m.cut_shape
    # The dry forward ran in eval mode and must leave the model in training mode.
    assert m.lower.training and m.upper.training


@pytest.mark.parametrize("name,shape,cut", CASES)
def test_split_gradients_match_unsplit(name: str, shape: tuple[int, int, int], cut: int) -> None:
    x = torch.randn(4, *shape)
    y = torch.randint(0, 10, (4,))
    split = _build(name, shape, cut)
    s = split.lower(x)
    s2 = s.detach().requires_grad_()
    F.cross_entropy(split.upper(s2), y).backward()
    s.backward(s2.grad)

    same = _build(name, shape, cut)  # same seed, so identical weights
    F.cross_entropy(nn.Sequential(*same.lower, *same.upper)(x), y).backward()
    for (n, p), q in zip(split.lower.named_parameters(), same.lower.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=0), n


def test_default_cut_shapes() -> None:
    assert build_split_model("resnet", (3, 32, 32), 10).cut_shape == (32, 16, 16)
    assert build_split_model("cnn", (1, 28, 28), 10).cut_shape == (64, 7, 7)
    assert build_split_model("cnn", (1, 28, 28), 10, cut=3).cut_shape == (128,)


def _resnet_param_count(c_in: int, n_classes: int) -> int:
    """Hand count: conv3x3 = in*out*9 (no bias), BN = 2*out, projection = in*out + 2*out."""

    def block(i: int, o: int, project: bool) -> int:
        return i * o * 9 + 2 * o + o * o * 9 + 2 * o + ((i * o + 2 * o) if project else 0)

    stem = c_in * 16 * 9 + 2 * 16
    stage1 = 2 * block(16, 16, False)
    stage2 = block(16, 32, True) + block(32, 32, False)
    stage3 = block(32, 64, True) + 2 * block(64, 64, False)
    head = 64 * n_classes + n_classes
    return stem + stage1 + stage2 + stage3 + head


def test_resnet_parameter_count() -> None:
    assert _resnet_param_count(3, 10) == 249242
    m = build_split_model("resnet", (3, 32, 32), 10)
    n = sum(p.numel() for p in [*m.lower.parameters(), *m.upper.parameters()])
    assert n == 249242


@pytest.mark.parametrize("cut_shape", [(64, 7, 7), (128,)])
def test_aux_modules_shapes(cut_shape: tuple[int, ...]) -> None:
    s = torch.randn(5, *cut_shape)
    assert build_aux_classifier(cut_shape, 10)(s).shape == (5, 10)
    assert build_decoder(cut_shape, (1, 28, 28))(s).shape == (5, 1, 28, 28)
    assert build_decoder(cut_shape, (3, 32, 32), hidden=8)(s).shape == (5, 3, 32, 32)


@pytest.mark.parametrize("small,size", [((8, 8), (32, 32)), ((7, 5), (28, 11)), ((2, 2), (8, 8))])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsampled_conv_is_upsample_then_conv(small, size, layout) -> None:
    """The factored decoder layer gives nn.Upsample(bilinear) + nn.Conv2d(3×3, padding 1)'s values and gradients
    (input, weight, bias), at square and odd sizes, from either layout, and under vmap with per-client weights.
    In float64, so that the two summation orders agree to 1e-10."""
    g = torch.Generator().manual_seed(0)
    layer = UpsampledConv(6, 4, size).double()
    reference = layer.specified()
    assert isinstance(reference[0], nn.Upsample) and reference[1] is layer.conv
    x = torch.randn(3, 6, *small, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_(True)
    weight = torch.randn(3, 4, *size, generator=g, dtype=torch.float64)
    grads = []
    for module in (layer, reference):
        out = module(x)
        got = torch.autograd.grad((out * weight).sum(), [x, layer.conv.weight, layer.conv.bias])
        grads.append((out, *got))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    # conv.weight, .bias
    stacked = {k: torch.randn(2, *v.shape, generator=g, dtype=torch.float64) for k, v in layer.named_parameters()}
    maps = torch.randn(2, 3, 6, *small, generator=g, dtype=torch.float64)
    batched = torch.func.vmap(lambda p, s: torch.func.functional_call(layer, p, (s,)))(stacked, maps)
    for k in range(2):
        one = {"1." + name.split(".")[1]: t[k] for name, t in stacked.items()}
        torch.testing.assert_close(batched[k], torch.func.functional_call(reference, one, (maps[k],)),
                                   atol=1e-10, rtol=1e-10)


def test_upsampled_conv_trains_after_a_first_call_under_inference_mode() -> None:
    """The layer's resizing matrices are built once per size and kept; built first under torch.inference_mode (an
    evaluation before any training), they must still be usable by a later forward that autograd records."""
    layer = UpsampledConv(2, 3, (13, 9))  # sizes no other test uses, so that this call builds the matrices
    with torch.inference_mode():
        layer(torch.randn(1, 2, 4, 3))
    x = torch.randn(1, 2, 4, 3, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.conv.weight.grad is not None


def test_aux_classifier_is_tiny() -> None:
    head = build_aux_classifier((32, 16, 16), 10)
    assert sum(p.numel() for p in head.parameters()) == 32 * 10 + 10


@pytest.mark.parametrize("cut", [2, 3])  # conv (64,2,2) and flat (128,) cuts
def test_decoder_can_overfit(cut: int) -> None:
    m = _build("cnn", (1, 8, 8), cut)
    dec = build_decoder(m.cut_shape, (1, 8, 8))
    # Smooth images, as real ones are; white noise cannot be recovered from a 2x2 map.
    x = F.interpolate(torch.rand(4, 1, 4, 4), size=(8, 8), mode="bilinear", align_corners=False)
    with torch.no_grad():
        s = m.lower(x)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    first = F.mse_loss(dec(s), x).item()
    for _ in range(200):
        loss = F.mse_loss(dec(s), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert F.mse_loss(dec(s), x).item() < first / 5


@pytest.mark.parametrize("name,cut", [("cnn", 2), ("cnn", 3), ("resnet", 3)])
def test_decoder_gradient_reaches_lower(name: str, cut: int) -> None:
    m = _build(name, (3, 32, 32), cut)
    x = torch.rand(2, 3, 32, 32)
    F.mse_loss(build_decoder(m.cut_shape, (3, 32, 32))(m.lower(x)), x).backward()
    for n, p in m.lower.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"name": "resnt"}, "'resnt'"),
        ({"name": "cnn", "cut": 0}, "cut=0"),
        ({"name": "cnn", "cut": 4}, "cut=4"),
        ({"name": "resnet", "cut": 5}, "cut=5"),
        ({"name": "cnn", "input_shape": (1, 3, 3)}, "(1, 3, 3)"),
        ({"name": "resnet", "input_shape": (3, 0, 8)}, "(3, 0, 8)"),
        ({"name": "cnn", "n_classes": 0}, "n_classes=0"),
    ],
)
def test_user_errors(kwargs: dict, needle: str) -> None:
    args = {"input_shape": (1, 28, 28), "n_classes": 10} | kwargs
    with pytest.raises(UserError) as err:
        build_split_model(**args)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_error_messages_say_what_is_allowed() -> None:
    with pytest.raises(UserError, match=r"cnn, resnet"):
        build_split_model("resnt", (1, 28, 28), 10)
    with pytest.raises(UserError, match=r"1\.\.3"):
        build_split_model("cnn", (1, 28, 28), 10, cut=4)
    with pytest.raises(UserError, match=r"at least 4"):
        build_split_model("cnn", (1, 3, 3), 10)
    with pytest.raises(UserError, match=r"'resnt'"):
        n_blocks("resnt")
    with pytest.raises(UserError, match=r"\(64, 7\)"):
        build_aux_classifier((64, 7), 10)


def test_alexnet_client_holds_one_conv_and_one_pool() -> None:
    model = build_split_model("alexnet", (1, 28, 28), 10)
    convs = [m for m in model.lower.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.lower.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 1 and len(pools) == 1
    assert model.cut_shape == (64, 14, 14)


def _relu_then_pool(block: nn.Sequential) -> nn.Sequential:
    """The block as usually written: every ReLU before the max-pool that follows it (same modules, same weights)."""
    layers = list(block)
    for k in range(1, len(layers)):
        if isinstance(layers[k - 1], nn.MaxPool2d) and isinstance(layers[k], nn.ReLU):
            layers[k - 1], layers[k] = layers[k], layers[k - 1]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("name", ["cnn", "alexnet"])
def test_pooling_before_relu_is_bit_identical_to_relu_before_pooling(name: str) -> None:
    """Values and gradients, on an image with flat regions: windows tied at a positive value (the bias) or all
    negative, where a wrong reordering would send gradient elsewhere."""
    model = _build(name, (1, 16, 16), 1)
    blocks = [b for b in model.lower.children()] + [b for b in model.upper.children()]
    convs = [b for b in blocks if isinstance(b, nn.Sequential) and any(isinstance(m, nn.MaxPool2d) for m in b)]
    assert convs and all(isinstance(b[-1], nn.ReLU) and isinstance(b[-2], nn.MaxPool2d) for b in convs)
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 4:9, 3:12] = torch.rand(4, 1, 5, 9)
    for block in convs:
        x = x.detach().requires_grad_(True)
        reference = _relu_then_pool(block)
        out, expected = block(x), reference(x.clone())
        assert torch.equal(out, expected)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, *block.parameters()], grad)
        want = torch.autograd.grad(expected, [x, *reference.parameters()], grad)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        x = out
