"""Layers the stacked pool swaps in where a device's own kernel for a layer is slow under vmap; each computes the
layer it replaces, to float rounding.

On CUDA, nn.Upsample(mode="bilinear") under vmap runs PyTorch's NCHW kernel, which gives one thread to each output
pixel and loops over batch × channels inside it: at 100 clients × 16 samples the decoder's upsampling (64 maps of
8×8 → 32×32 per sample) took 38.7 ms of an 80 ms `locfedmix` round on an H200
(benchmarks/results/PROFILE-cuda-calls-locfedmix-100x16.txt). The channels-last kernel, which spreads over every
element, cannot be reached under vmap there. Bilinear resizing is separable, so it is two small matrix products."""

import torch
import torch.nn.functional as F
from torch import nn


def interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_out, n_in]: row j holds the weights bilinear resizing (align_corners=False) gives each input position in
    output position j along one axis, read off F.interpolate itself (unit impulses in, weights out)."""
    impulses = torch.eye(n_in, dtype=like.dtype, device=like.device).view(n_in, 1, n_in, 1)
    return F.interpolate(impulses, size=(n_out, 1), mode="bilinear", align_corners=False).view(n_in, n_out).T


class SeparableBilinear(nn.Module):
    """Bilinear resizing of [..., H, W] maps to `size` as A_h · x · A_wᵀ."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = interpolation_matrix(x.shape[-2], self.size[0], x)
        cols = interpolation_matrix(x.shape[-1], self.size[1], x)
        return rows @ x @ cols.T


def for_device(module: nn.Module, device: torch.device) -> nn.Module:
    """`module`, its bilinear nn.Upsample layers (fixed size, align_corners False) replaced by SeparableBilinear on
    CUDA; unchanged elsewhere (on the CPU the native kernel is the faster one)."""
    if device.type != "cuda":
        return module
    for parent in module.modules():
        for name, child in parent.named_children():
            if (isinstance(child, nn.Upsample) and child.mode == "bilinear" and not child.align_corners
                    and child.size is not None and child.scale_factor is None):
                size = child.size if isinstance(child.size, tuple) else (child.size, child.size)
                setattr(parent, name, SeparableBilinear(size))
    return module
