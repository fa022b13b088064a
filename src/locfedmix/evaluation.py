"""Evaluation of the composed model (lower ∘ upper) as the algorithm would deploy it."""

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.data.streaming import Rows, read_rows
from locfedmix.engines.flow.state import Federation
from locfedmix.models.dropout import shared


@torch.no_grad()
def evaluate(lower: nn.Module, upper: nn.Module, x: torch.Tensor | Rows, y: torch.Tensor, batch_size: int,
             upload: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Mean CE and accuracy (a fraction) of upper(lower(x)) in eval mode, with the client's defence (`upload`)
    applied to the smashed data where one is configured; restores the modules' training mode. Streamed inputs
    (`Rows`) are read batch by batch, in batches no larger than the memory budget holds."""
    modes = lower.training, upper.training
    lower.eval(), upper.eval()
    loss, correct = 0.0, 0
    step = batch_size if isinstance(x, torch.Tensor) else min(batch_size, x.per_read)
    for start in range(0, len(y), step):
        smashed = lower(read_rows(x[start:start + step], y.device))  # one batch's inputs held at a time
        logits = upper(upload(smashed) if upload is not None else smashed)
        target = y[start:start + step]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    lower.train(modes[0]), upper.train(modes[1])
    return loss / max(len(y), 1), correct / max(len(y), 1)


def _identical(modules: list[nn.Module]) -> bool:
    first = modules[0].state_dict()
    return all(all(torch.equal(first[k], v) for k, v in shared(m.state_dict()).items()) for m in modules[1:])


def relay_position(fed: Federation) -> tuple[int, dict[str, torch.Tensor] | None]:
    """Where sequential SL's relay stands: (the holder, None); after the holder failed mid-turn, (a client, the model
    the server last received), which is what the next client will start from."""
    if fed.holder is None and fed.relay_model is not None:
        return 0, fed.relay_model
    return (fed.holder if fed.holder is not None else 0), None


def deployed_models(fed: Federation) -> list[tuple[int, dict[str, torch.Tensor] | None, nn.Module, float]]:
    """(client whose lower model, weights replacing it or None, upper, weight) to evaluate: the relay's current
    model for sequential SL; the one model when all clients agree (after FedAvg); otherwise every client's own pair,
    weighted by its data size δ_i."""
    if fed.recipe.relay:
        i, state = relay_position(fed)
        return [(i, state, fed.server.uppers[0], 1.0)]
    if fed.transport.identical(fed.clients) and _identical(fed.server.uppers):
        return [(0, None, fed.server.uppers[0], 1.0)]
    total = sum(fed.sizes)
    return [(i, None, fed.server.upper_of(i), n / total) for i, n in enumerate(fed.sizes)]


def deployed_lower(fed: Federation, i: int, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """Client i's lower model, or a copy of it holding `state` (the relay's model after its holder failed)."""
    if state is None:
        return fed.clients.lower(i)
    lower = copy.deepcopy(fed.clients.lower(i))
    lower.load_state_dict(state)
    return lower


def shard_bounds(weights: list[float], n: int) -> list[int]:
    """Cut n samples into consecutive shards proportional to the weights (boundaries 0 = b_0 ≤ … ≤ b_k = n)."""
    cumulative = np.cumsum([0.0, *weights]) / sum(weights)
    return [int(round(c * n)) for c in cumulative]


Shard = tuple[int, "dict[str, torch.Tensor] | None", nn.Module, int, int]  # client, state, upper, start, stop
ShardScorer = Callable[[list[Shard]], list[tuple[float, float]]]


def evaluate_federation(fed: Federation, x: torch.Tensor | Rows, y: torch.Tensor, batch_size: int,
                        purpose: str = "evaluation") -> tuple[float, float]:
    """(loss, accuracy) of the deployed models on (x, y), every model's lower half run here (see `score_deployed`).
    A defence on the uploads applies here too (its noise keyed by `purpose` and the step)."""
    upload = fed.defence.inference(purpose, fed.step)

    def score(shards: list[Shard]) -> list[tuple[float, float]]:
        return [evaluate(deployed_lower(fed, i, state), upper, x[start:stop], y[start:stop], batch_size, upload)
                for i, state, upper, start, stop in shards]

    return score_deployed(fed, len(y), score, y.device)


def score_deployed(fed: Federation, n: int, score: ShardScorer,
                   device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(loss, accuracy) over n evaluation samples of the deployed models, each shard scored by `score(shards)`
    (the mean loss and accuracy of client i's lower model, or `state` in its place, under `upper` on rows
    start..stop), which runs the lower halves where they are: here, or on the clients' own machines."""
    shards = deployed_shards(fed, n)
    return combine_scores(fed, shards, score(shards), n, device)


def deployed_shards(fed: Federation, n: int) -> list[Shard]:
    """The shards of n evaluation samples to score. Where clients hold different models, client i is scored on its
    own shard of the (shuffled) evaluation set, sized by δ_i: an unbiased estimate of Σ δ_i acc_i at the cost of one
    pass instead of N. In a distributed run each rank scores the clients it owns."""
    pairs = deployed_models(fed)
    bounds = shard_bounds([w for *_, w in pairs], n)
    return [(i, state, upper, start, stop) for (i, state, upper, _), start, stop in zip(pairs, bounds, bounds[1:])
            if stop > start and fed.transport.owns(i)]


def combine_scores(fed: Federation, shards: list[Shard], scores: list[tuple[float, float]], n: int,
                   device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """The shards' (loss, accuracy) weighted by their sizes, summed over the processes of a distributed run."""
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # Σ loss, Σ correct
    for (*_, start, stop), (shard_loss, shard_acc) in zip(shards, scores):
        sums += torch.tensor([shard_loss, shard_acc], dtype=torch.float64, device=device) * (stop - start)
    loss, correct = fed.transport.all_reduce(sums).tolist()
    return loss / n, correct / n
