"""Client-side auxiliary modules fitted to the cut shape (LocSplitFed head, LocFedMix-SL decoder).

The classifier head follows LocSplitFed (Han et al. 2021); the input-reconstruction decoder
follows InfoPro (Wang et al., ICLR 2021).
"""

from torch import nn

from locfedmix.errors import UserError


def _check_cut_shape(cut_shape: tuple[int, ...]) -> None:
    if len(cut_shape) not in (1, 3) or any(int(d) < 1 for d in cut_shape):
        raise UserError(
            f"cut_shape={tuple(cut_shape)} is not supported; use (C, H, W) or (D,), sizes >= 1"
        )


def build_aux_classifier(cut_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Tiny head on the smashed data: global-average-pool + linear for maps, linear for vectors."""
    _check_cut_shape(cut_shape)
    if len(cut_shape) == 1:
        return nn.Linear(cut_shape[0], n_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cut_shape[0], n_classes))


def build_decoder(
    cut_shape: tuple[int, ...], input_shape: tuple[int, int, int], hidden: int = 16
) -> nn.Module:
    """Decoder from smashed data back to the input shape; outputs are unbounded (logit-like)."""
    _check_cut_shape(cut_shape)
    c_in, h, w = input_shape
    if len(cut_shape) == 1:
        return nn.Sequential(nn.Linear(cut_shape[0], c_in * h * w), nn.Unflatten(1, (c_in, h, w)))
    # InfoPro's decoder: upsample to the input resolution, then two 3x3 convs.
    return nn.Sequential(
        nn.Upsample(size=(h, w), mode="bilinear", align_corners=False),
        nn.Conv2d(cut_shape[0], hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, c_in, 3, padding=1),
    )
