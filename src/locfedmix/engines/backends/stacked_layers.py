"""Layers the stacked client pool computes differently from how the model writes them: same values, faster under
torch.func.vmap on the CPU.

vmap turns each client's convolution into one grouped convolution over the whole chunk of clients, and keeps the
NCHW layout. Some of the CPU kernels it then lands on are slow: oneDNN's grouped convolution where a group reads
or writes only a few channels (the first layer: 3 for RGB; the decoder's last: 3 out), and max-pooling in NCHW,
which on 2 cores ran 13x slower than the same pooling channels-last (131 against 10 µs a sample for 32 maps of
32×32). `stacked_runner` swaps those layers for the three below in a copy of the model; parameter names and shapes
stay, so `functional_call` hands the copy the same stacked weights. Measured on 2 cores, one sample per client,
chunks of 256 clients, forward + backward: the CNN's lower model 557 → 345 µs a sample, the decoder's last
convolution 353 → 93 µs; `psl` at 1,000 × 1 ran 0.45 → 0.56x centralized training in the same process.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

# A convolution reading at most this many values per output position (in_channels × kernel area) runs as
# patches × weights, one writing at most this many per input position (out_channels × area) as per-tap products
# summed by a fixed convolution: grouped kernels are slowest there, and the intermediate matrices stay small.
SMALL_FAN = 32


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """The same [B, C, H, W] values stored with C innermost (no copy when they already are); written with permutes
    so that it also works under vmap, where the client dimension stays outermost."""
    return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


class PatchConv2d(nn.Conv2d):
    """nn.Conv2d computed as (patches of the input) @ weightᵀ + bias, output stored channels-last.

    Under vmap with per-client weights the matmul becomes one batched matmul over the clients (a [H·W, C·k·k] by
    [C·k·k, O] product each), instead of a grouped convolution. Zero padding, groups = 1 only (`stacked_runner`
    checks). The input's gradient, when needed, comes from unfold's backward (fold)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [B, C·k·k, L]
        out = patches.transpose(1, 2) @ self.weight.reshape(self.out_channels, -1).T  # [B, L, O]
        if self.bias is not None:
            out = out + self.bias
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)]
        return out.view(b, *size, self.out_channels).permute(0, 3, 1, 2)


class TapSumConv2d(nn.Conv2d):
    """nn.Conv2d computed as channel mixing per kernel tap first, then a fixed convolution that moves each tap's map
    into place and sums them.

    The mixing gives, at every input position, the O·k·k products W[:, :, dy, dx] · x (one matmul); a grouped
    convolution whose kernel is one-hot (channel (o, dy, dx) read at offset (dy, dx) only) adds them up with the
    layer's own stride, padding and dilation, which is the convolution itself. Under vmap the mixing is one batched
    matmul over the clients, and the one-hot kernel is the same for every client, so that convolution runs over the
    whole chunk as one batch instead of as a grouped convolution. Pays where outputs are few (the decoder's last
    layer: 16 maps → 3). The products are written position-major (a channels-last map), the layout in which the
    input's gradient meets the decoder's channels-last maps in backward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        one_hot = torch.eye(kh * kw, device=self.weight.device, dtype=self.weight.dtype).view(1, kh * kw, kh, kw)
        self.register_buffer("one_hot", one_hot.repeat(self.out_channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        mix = self.weight.permute(0, 2, 3, 1).reshape(-1, c)  # [(O, dy, dx), C]
        taps = (x.flatten(2).transpose(1, 2) @ mix.T).view(b, h, w, -1).permute(0, 3, 1, 2)  # [B, O·k·k, H, W]
        return F.conv2d(taps, self.one_hot, self.bias, self.stride, self.padding, self.dilation, self.out_channels)


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d on a channels-last copy of its input (none is made when the input already is, as after a
    PatchConv2d); the output stays channels-last, which the next grouped convolution reads as fast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(channels_last(x))


def _recomputed_conv(conv: nn.Conv2d) -> nn.Module:
    """PatchConv2d for few inputs per output, TapSumConv2d for few outputs per input, the convolution itself
    otherwise."""
    area = conv.kernel_size[0] * conv.kernel_size[1]
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv
    if conv.in_channels * area <= SMALL_FAN:
        kind = PatchConv2d
    elif conv.out_channels * area <= SMALL_FAN:
        kind = TapSumConv2d
    else:
        return conv
    swapped = kind(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    swapped.load_state_dict(conv.state_dict())
    return swapped


def _swapped(module: nn.Module) -> nn.Module:
    if type(module) is nn.Conv2d:
        return _recomputed_conv(module)
    if type(module) is nn.MaxPool2d and module.dilation == 1 and not module.return_indices:
        return ChannelsLastMaxPool2d(module.kernel_size, module.stride, module.padding, 1, False, module.ceil_mode)
    return module


def stacked_runner(template: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `template` for the stacked pool to run under vmap: on the CPU, where they were measured, narrow
    convolutions as PatchConv2d or TapSumConv2d and max-pools as ChannelsLastMaxPool2d; elsewhere an unchanged
    copy."""
    runner = copy.deepcopy(template)
    if device.type != "cpu":
        return runner
    for parent in list(runner.modules()):
        for name, child in list(parent.named_children()):
            setattr(parent, name, _swapped(child))
    return runner
