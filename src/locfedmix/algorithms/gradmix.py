"""GradMix / SplitAvg (SGLR, Pal et al. 2021; Mix2SFL): a random fraction φ of the clients of a step receive the
δ-weighted mean of their cut-layer gradients instead of their own, countering the decoupling of client updates."""

import numpy as np
import torch

from locfedmix.algorithms.parts import GradMix


def mix_gradients(cut_grads: dict[int, torch.Tensor], weights: dict[int, float], mixer: GradMix,
                  rng: np.random.Generator) -> dict[int, torch.Tensor]:
    """Draw round(φ·K) of the K clients; within that group, clients whose gradients have the same shape get their
    δ-weighted mean. The others keep their own gradient."""
    ids = sorted(cut_grads)
    chosen = sorted(int(i) for i in rng.choice(ids, size=round(mixer.fraction * len(ids)), replace=False))
    by_shape: dict[tuple, list[int]] = {}
    for i in chosen:
        by_shape.setdefault(tuple(cut_grads[i].shape), []).append(i)
    mixed = dict(cut_grads)
    for group in by_shape.values():
        total = sum(weights[i] for i in group)
        mean = sum(cut_grads[i] * (weights[i] / total) for i in group)
        mixed.update({i: mean for i in group})
    return mixed
