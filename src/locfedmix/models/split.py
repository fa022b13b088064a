"""Model registry and the lower/upper split at a configurable cut (parallel split learning): the built-in models as
lists of blocks, and any name a package registers (entry-point group locfedmix.models) or a run is handed."""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from locfedmix import registry
from locfedmix.errors import UserError
from locfedmix.models.alexnet import ALEXNET_MIN_SIDE, build_alexnet_blocks
from locfedmix.models.cnn import CNN_MIN_SIDE, build_cnn_blocks
from locfedmix.models.custom import Model
from locfedmix.models.cutting import split_blocks
from locfedmix.models.dropout import keyed
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
    head: nn.Module | None = None  # the user's auxiliary classifier (None: built from the shapes)
    decoder: nn.Module | None = None  # the user's decoder (None: built from the shapes)


MODELS: dict[str, ModelSpec] = {
    "alexnet": ModelSpec(build_alexnet_blocks, n_blocks=5, default_cut=1, min_side=ALEXNET_MIN_SIDE),
    "cnn": ModelSpec(build_cnn_blocks, n_blocks=4, default_cut=2, min_side=CNN_MIN_SIDE),
    "resnet": ModelSpec(build_resnet_blocks, n_blocks=5, default_cut=3, min_side=RESNET_MIN_SIDE),
}


def model_names() -> list[str]:
    """Names accepted by `build_split_model`, sorted: built in, then registered."""
    return sorted(MODELS) + [n for n in registry.registered_names(registry.MODELS) if n not in MODELS]


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        if name in model_names():
            raise UserError(f"model {name!r} brings its own cut; leave cut = 0")
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return MODELS[name]


def registered_model(name: str) -> Model:
    """The Model a package registered (or a run was handed) under `name`."""
    found = registry.load(registry.MODELS, name)
    if not isinstance(found, Model):
        raise UserError(f"model {name!r} is registered as a {type(found).__name__}, not a locfedmix.Model")
    return found


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


def _smashed_shape(lower: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """Per-sample output shape of `lower`, found by a dry forward of one example (a zero sample)."""
    # Eval mode so the dry run neither updates BN running stats nor needs >1 value per channel.
    was_training = lower.training
    lower.eval()
    try:
        with torch.no_grad():
            out = lower(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        shape = tuple(example.shape[1:])
        raise UserError(f"the client's segment fails on an input of shape {shape}: {reason}") from None
    finally:
        lower.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the client's segment returns a {type(out).__name__}; the smashed data must be one tensor")
    return tuple(out.shape[1:])


def _build_registered(name: str, input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    model = registered_model(name)
    lower, upper = model.build(input_shape, n_classes)
    example = model.example(input_shape)
    shape = _smashed_shape(lower, example)
    upper.eval()
    with torch.no_grad():
        smashed = lower.eval()(example)
        logits = upper(smashed)
    lower.train(), upper.train()
    if tuple(logits.shape[1:]) != (n_classes,):
        raise UserError(f"the network gives outputs of shape {tuple(logits.shape[1:])} per sample; the data have "
                        f"{n_classes} classes, so it must give ({n_classes},)")
    head, decoder = (keyed(copy.deepcopy(m), smashed, name) if m is not None else None
                     for m, name in ((model.head, "head"), (model.decoder, "decoder")))
    return SplitModel(keyed(lower, example, "client's segment"), keyed(upper, smashed, "server's segment"), shape,
                      head, decoder)


def build_split_model(
    name: str, input_shape: tuple[int, ...], n_classes: int, cut: int | None = None
) -> SplitModel:
    """Build model `name` and cut it after `cut` blocks (default: the model's default cut); a registered model is
    built and cut as its Model says."""
    if name not in MODELS and cut is None and name in model_names():
        return _build_registered(name, input_shape, n_classes)
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
    lower, upper = split_blocks(spec.build_blocks(input_shape, n_classes), cut)
    return SplitModel(lower=lower, upper=upper, cut_shape=_smashed_shape(lower, torch.zeros(1, *input_shape)))
