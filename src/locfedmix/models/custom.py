"""A user's own network as a split model: the network (or the function that builds it under the run's seed), where
to cut it, and the client-side modules that the algorithms with a local objective need when the input is not an
image."""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from locfedmix.errors import UserError
from locfedmix.models.cutting import AsIndices, split_at, split_blocks

Network = nn.Module | Sequence[nn.Module]


@dataclass(frozen=True)
class Model:
    """`network`: an nn.Module, a list of blocks, or a function (input_shape, n_classes) -> either, which a run calls
    under its seed so that the same seed starts from the same weights (an instance is copied as it is).
    `cut`: a submodule name (e.g. "layer2", "blocks.3"; torch.fx, models/cutting.py) or, for a list of blocks or an
    nn.Sequential, the number of blocks on the client.
    `head` / `decoder`: LocSplitFed's auxiliary classifier and LocFedMix-SL's decoder on the smashed data; built
    from the shapes when left out and the input is an image, required otherwise.
    `input_dtype`: what the network reads (torch.long for token ids)."""

    network: Network | Callable[[tuple[int, ...], int], Network]
    cut: str | int
    head: nn.Module | None = None
    decoder: nn.Module | None = None
    input_dtype: torch.dtype = torch.float32

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> tuple[nn.Module, nn.Module]:
        """(lower, upper) of a fresh copy of the network."""
        built = self.network
        if callable(built) and not isinstance(built, nn.Module):
            built = built(tuple(input_shape), n_classes)
        else:
            built = copy.deepcopy(built)  # the caller's instance stays as it was
        if isinstance(built, nn.Sequential) and isinstance(self.cut, int):
            built = list(built)
        if isinstance(built, nn.Module):
            if not isinstance(self.cut, str):
                raise UserError(f"cut={self.cut!r} counts blocks, but {type(built).__name__} is not a list of blocks "
                                f"or an nn.Sequential; name a submodule to cut at instead")
            lower, upper = split_at(built, self.cut)
        elif isinstance(self.cut, str):
            raise UserError(f"cut={self.cut!r} names a submodule, but the network is a list of blocks; give the "
                            f"number of blocks on the client")
        else:
            lower, upper = split_blocks(list(built), self.cut)
        if not self.input_dtype.is_floating_point:
            lower = nn.Sequential(AsIndices(), lower)
        return lower, upper

    def example(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """One all-zero input of the shape and type the network reads (for dry runs)."""
        return torch.zeros(1, *input_shape, dtype=self.input_dtype)
