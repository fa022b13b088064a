"""Schedules: which clients meet the server at each step of a round (a round = one pass over each client's data)."""

from collections.abc import Iterator

import numpy as np
import torch

from locfedmix.algorithms.parts import Order, Parallel, Schedule, Sequential
from locfedmix.rng import numpy_generator

StepPlan = dict[int, torch.Tensor]  # client id -> indices of its mini-batch in this step


def client_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """One local epoch: the client's samples in a fresh random order, cut into mini-batches (last one may be short)."""
    order = torch.from_numpy(indices[rng.permutation(len(indices))])
    return list(order.split(batch_size))


def epoch_batches(indices: np.ndarray, batch_size: int, seed: int, client: int, round_index: int) -> list[torch.Tensor]:
    """client_batches with the client's own generator for this round, which is made only where there is an order to
    draw: one sample has a single order (1,000 one-sample clients spent ~20 ms a round making generators)."""
    if len(indices) > 1:
        return client_batches(indices, batch_size, numpy_generator(seed, "batches", client, round_index))
    return list(torch.from_numpy(indices.copy()).split(batch_size))


def plan_round(schedule: Schedule, batches: dict[int, list[torch.Tensor]],
               rng: np.random.Generator) -> Iterator[StepPlan]:
    match schedule:
        case Parallel():
            return _parallel(batches)
        case Sequential(order=order, handoff_every=every):
            ids = sorted(batches)
            if order is Order.SHUFFLED:
                ids = [ids[k] for k in rng.permutation(len(ids))]
            return _sequential(ids, batches, every)
    raise TypeError(f"unknown schedule {schedule!r}")


def _parallel(batches: dict[int, list[torch.Tensor]]) -> Iterator[StepPlan]:
    """Step t holds batch t of every client that has one; clients with less data sit out the last steps."""
    for t in range(max((len(b) for b in batches.values()), default=0)):
        yield {i: b[t] for i, b in sorted(batches.items()) if t < len(b)}


def _sequential(ids: list[int], batches: dict[int, list[torch.Tensor]], every: int) -> Iterator[StepPlan]:
    """Clients take turns in `ids` order, each for `every` batches (0: all of them) until every batch is used."""
    cursor = dict.fromkeys(ids, 0)
    while any(cursor[i] < len(batches[i]) for i in ids):
        for i in ids:
            stop = len(batches[i]) if every == 0 else min(cursor[i] + every, len(batches[i]))
            for t in range(cursor[i], stop):
                yield {i: batches[i][t]}
            cursor[i] = stop
