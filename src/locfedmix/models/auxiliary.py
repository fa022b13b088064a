"""Client-side auxiliary modules fitted to the cut shape (LocSplitFed head, LocFedMix-SL decoder).

The classifier head follows LocSplitFed (Han et al. 2021); the input-reconstruction decoder
follows InfoPro (Wang et al., ICLR 2021).
"""

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.errors import UserError


def _check_cut_shape(cut_shape: tuple[int, ...], needed: str) -> None:
    if len(cut_shape) not in (1, 3) or any(int(d) < 1 for d in cut_shape):
        raise UserError(
            f"cut_shape={tuple(cut_shape)} is not supported; use (C, H, W) or (D,), sizes >= 1, or pass your own "
            f"{needed} for smashed data of this shape"
        )


def build_aux_classifier(cut_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Tiny head on the smashed data: global-average-pool + linear for maps, linear for vectors."""
    _check_cut_shape(cut_shape, "head (Model(..., head=...): the auxiliary classifier LocSplitFed trains)")
    if len(cut_shape) == 1:
        return nn.Linear(cut_shape[0], n_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut_shape[0], n_classes))


def interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_out, n_in]: row j holds the weights bilinear resizing (align_corners=False) gives each input position in
    output position j along one axis, read off F.interpolate itself (unit impulses in, weights out)."""
    impulses = torch.eye(n_in, dtype=like.dtype, device=like.device).view(n_in, 1, n_in, 1)
    return F.interpolate(impulses, size=(n_out, 1), mode="bilinear", align_corners=False).view(n_in, n_out).T


def tap_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_out, 3·n_in]: the interpolation matrix read at output offsets -1, 0, +1 (rows past the edge zero, as the
    convolution's zero padding), side by side: one axis of "resize, then a 3-tap convolution". A constant of the
    sizes, built once per (sizes, dtype, device): building it took ~20 operators, twice per decoder call."""
    return _tap_matrix(n_in, n_out, like.dtype, like.device)


@lru_cache(maxsize=64)
def _tap_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # a plain tensor even when first built under inference_mode, so that training may save it for backward later
    with torch.inference_mode(False), torch.no_grad():
        padded = F.pad(interpolation_matrix(n_in, n_out, torch.empty(0, dtype=dtype, device=device)), (0, 0, 1, 1))
        return torch.cat([padded[d:d + n_out] for d in range(3)], dim=1)


class UpsampledConv(nn.Module):
    """Bilinear resizing to `size` followed by a 3×3 convolution (padding 1), computed without the resized maps.

    Resizing is separable and linear (A_h · x · A_wᵀ per channel), so the convolution's channel mixing can run
    first at the small resolution, one slice per tap, and each tap's shift folds into the resizing matrices:
    out[o] = Σ_{dy,dx} (S_dy A_h) (W[:, :, dy, dx] · x) (S_dx A_w)ᵀ + b[o]. For InfoPro's decoder (64 maps of 8×8
    → 16 of 32×32) that is 1.3 M multiply-adds a sample instead of 9.4 M and no 64×32×32 intermediate; the CPU ran
    the decoder 2-3.5× faster. The output is stored channels-last, the layout the next convolution reads fastest.
    Same values as nn.Upsample + nn.Conv2d to float rounding (tests); `conv` holds the weights, drawn as
    nn.Conv2d's."""

    def __init__(self, channels_in: int, channels_out: int, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)

    def specified(self) -> nn.Module:
        """The layers this one computes, as written: resize, then convolve (sharing this layer's weights)."""
        return nn.Sequential(nn.Upsample(size=self.size, mode="bilinear", align_corners=False), self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        (big_h, big_w), o = self.size, self.conv.out_channels
        taps = self.conv.weight.permute(1, 2, 3, 0).reshape(c, 9 * o)  # columns (dy, dx, o)
        # [b·i·j, (dy, dx, o)]: channel mixing at the small resolution, as ONE matrix product: under vmap a
        # product over [b, i, j, c] batches per row i instead, expanding the weights to [b, i, c, 9·o] (75 MB at
        # 256 one-sample clients) and summing the weight gradient over an equally large intermediate.
        z = x.permute(0, 2, 3, 1).reshape(b * h * w, c) @ taps
        z = z.view(b, h, w, 3, 3, o).permute(0, 3, 1, 4, 2, 5).reshape(b * 3 * h, 3 * w, o)
        y = (tap_matrix(w, big_w, x) @ z).view(b, 3 * h, big_w * o)  # [b, (dy, i), (X, o)]: width resized
        out = (tap_matrix(h, big_h, x) @ y).view(b, big_h, big_w, o) + self.conv.bias  # [b, Y, X, o]
        return out.permute(0, 3, 1, 2)


def build_decoder(
    cut_shape: tuple[int, ...], input_shape: tuple[int, ...], hidden: int = 16
) -> nn.Module:
    """Decoder from smashed data back to the input shape; outputs are unbounded (logit-like)."""
    needed = "decoder (Model(..., decoder=...): LocFedMix-SL's map from the smashed data back to the input)"
    if len(input_shape) != 3:
        raise UserError(f"inputs of shape {tuple(input_shape)} are not images; pass your own {needed}")
    _check_cut_shape(cut_shape, needed)
    c_in, h, w = input_shape
    if len(cut_shape) == 1:
        return nn.Sequential(nn.Linear(cut_shape[0], c_in * h * w), nn.Unflatten(1, (c_in, h, w)))
    # InfoPro's decoder: upsample (bilinear) to the input resolution, then two 3x3 convs.
    return nn.Sequential(UpsampledConv(cut_shape[0], hidden, (h, w)), nn.ReLU(), nn.Conv2d(hidden, c_in, 3, padding=1))
