"""Model registry and the lower/upper split at a configurable cut (parallel split learning)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from locfedmix.errors import UserError
from locfedmix.models.alexnet import ALEXNET_MIN_SIDE, build_alexnet_blocks
from locfedmix.models.cnn import CNN_MIN_SIDE, build_cnn_blocks
from locfedmix.models.resnet import RESNET_MIN_SIDE, build_resnet_blocks


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model as a list of cuttable blocks."""

    build_blocks: Callable[[tuple[int, int, int], int], list[nn.Module]]
    n_blocks: int
    default_cut: int
    min_side: int  # smallest H and W the model accepts


@dataclass
class SplitModel:
    """A model cut into the client's lower segment and the server's upper segment."""

    lower: nn.Sequential  # blocks[:cut], runs on the client
    upper: nn.Sequential  # blocks[cut:], runs on the server, ends with logits
    cut_shape: tuple[int, ...]  # per-sample shape of the smashed data


MODELS: dict[str, ModelSpec] = {
    "alexnet": ModelSpec(build_alexnet_blocks, n_blocks=5, default_cut=1, min_side=ALEXNET_MIN_SIDE),
    "cnn": ModelSpec(build_cnn_blocks, n_blocks=4, default_cut=2, min_side=CNN_MIN_SIDE),
    "resnet": ModelSpec(build_resnet_blocks, n_blocks=5, default_cut=3, min_side=RESNET_MIN_SIDE),
}


def model_names() -> list[str]:
    """Names accepted by `build_split_model`, sorted."""
    return sorted(MODELS)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return MODELS[name]


def default_cut(name: str) -> int:
    """Number of client-side blocks used when no cut is given."""
    return _spec(name).default_cut


def n_blocks(name: str) -> int:
    """Number of cuttable blocks in the model."""
    return _spec(name).n_blocks


def _checked_input_shape(
    name: str, spec: ModelSpec, input_shape: tuple[int, ...]
) -> tuple[int, int, int]:
    """Return `input_shape` as a tuple of ints (configs may give a list), or raise UserError."""
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise UserError(f"input_shape={tuple(input_shape)} is not a (C, H, W) of positive sizes")
    c, h, w = (int(d) for d in input_shape)
    if min(h, w) < spec.min_side:
        raise UserError(
            f"input_shape={(c, h, w)} is too small for model {name!r}; "
            f"H and W must be at least {spec.min_side}"
        )
    return c, h, w


def _smashed_shape(lower: nn.Sequential, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """Per-sample output shape of `lower`, found by a dry forward of one zero sample."""
    # Eval mode so the dry run neither updates BN running stats nor needs >1 value per channel.
    was_training = lower.training
    lower.eval()
    with torch.no_grad():
        out = lower(torch.zeros(1, *input_shape))
    lower.train(was_training)
    return tuple(out.shape[1:])


def build_split_model(
    name: str, input_shape: tuple[int, int, int], n_classes: int, cut: int | None = None
) -> SplitModel:
    """Build model `name` and cut it after `cut` blocks (default: the model's default cut)."""
    spec = _spec(name)
    input_shape = _checked_input_shape(name, spec, input_shape)
    if n_classes < 1:
        raise UserError(f"n_classes={n_classes} is invalid; it must be at least 1")
    cut = spec.default_cut if cut is None else cut
    if not 1 <= cut <= spec.n_blocks - 1:
        raise UserError(
            f"cut={cut} is outside model {name!r} ({spec.n_blocks} blocks); "
            f"choose a cut in 1..{spec.n_blocks - 1}"
        )
    blocks = spec.build_blocks(input_shape, n_classes)
    lower = nn.Sequential(*blocks[:cut])
    upper = nn.Sequential(*blocks[cut:])
    return SplitModel(lower=lower, upper=upper, cut_shape=_smashed_shape(lower, input_shape))
