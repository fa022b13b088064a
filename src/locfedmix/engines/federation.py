"""The federation: all run state (clients, server, step counter, relay holder) and one training round over it."""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.fedavg import federated_average
from locfedmix.algorithms.parts import FedAvg, Relay, Sequential
from locfedmix.algorithms.schedule import client_batches, plan_round
from locfedmix.config import Config
from locfedmix.engines.state import Client, Server, build_client_head, build_clients, build_server
from locfedmix.engines.step import Batch, train_step
from locfedmix.models import build_split_model
from locfedmix.rng import numpy_generator, seeded_torch


@dataclass
class Federation:
    algo: Algorithm
    clients: list[Client]
    server: Server
    sizes: list[int]  # |D_i|, for the data-size weights δ_i
    seed: int
    step: int = 0
    holder: int | None = None  # sequential SL: the client holding the current lower model

    def weights(self, ids) -> dict[int, float]:
        """δ_i = |D_i| / Σ_k |D_k| over the clients taking part."""
        total = sum(self.sizes[i] for i in ids)
        return {i: self.sizes[i] / total for i in ids}


def build_federation(
    config: Config, algo: Algorithm, input_shape: tuple[int, int, int], n_classes: int, sizes: list[int]
) -> Federation:
    """All clients share one seeded initial lower model (and head); the server starts from the matching upper."""
    with seeded_torch(config.seed, "init"):
        model = build_split_model(config.model, input_shape, n_classes, config.cut or None)
        head = build_client_head(algo, model, input_shape, n_classes)
    clients = build_clients(model, head, config.n_clients, config.client_optimizer)
    server = build_server(algo, model, config.n_clients, config.server_optimizer)
    return Federation(algo, clients, server, sizes, config.seed)


def hand_off(fed: Federation, to: int) -> None:
    """Relay: the next client starts from the lower weights of the client that trained last."""
    if fed.holder is not None and fed.holder != to:
        fed.clients[to].lower.load_state_dict(fed.clients[fed.holder].lower.state_dict())
    fed.holder = to


def synchronize(fed: Federation, sync: FedAvg) -> None:
    """FedAvg of the client models (and heads, and server copies, as the declaration says), δ-weighted."""
    weights = list(fed.weights(range(len(fed.clients))).values())
    federated_average([c.lower for c in fed.clients], weights)
    if sync.average_heads and fed.clients[0].head is not None:
        federated_average([c.head for c in fed.clients], weights)
    if sync.average_server_copies and len(fed.server.uppers) > 1:
        federated_average(fed.server.uppers, weights)


def train_round(
    fed: Federation,
    x: torch.Tensor,
    y: torch.Tensor,
    client_indices: list[np.ndarray],
    batch_size: int,
    round_index: int,
    on_step: Callable[[], None] = lambda: None,
) -> float:
    """One round (each client passes once over its data); returns the mean over steps of Σ δ_i L_i."""
    algo, sync = fed.algo, fed.algo.sync
    batches = {
        i: client_batches(idx, batch_size, numpy_generator(fed.seed, "batches", i, round_index))
        for i, idx in enumerate(client_indices)
    }
    losses = []
    for plan in plan_round(algo.schedule, batches, numpy_generator(fed.seed, "order", round_index)):
        if isinstance(sync, Relay):
            hand_off(fed, next(iter(plan)))
        step_batches = {i: Batch(x[idx], y[idx]) for i, idx in plan.items()}
        mix_rng = numpy_generator(fed.seed, "smashmix", fed.step)
        losses.append(train_step(algo, fed.clients, fed.server, step_batches, fed.weights(plan), mix_rng))
        fed.step += 1
        if isinstance(sync, FedAvg) and sync.every_steps and fed.step % sync.every_steps == 0:
            synchronize(fed, sync)
        on_step()
    if isinstance(sync, FedAvg) and not sync.every_steps:
        synchronize(fed, sync)
    return float(np.mean(losses)) if losses else float("nan")


def steps_per_round(fed: Federation, client_indices: list[np.ndarray], batch_size: int) -> int:
    per_client = [-(-len(idx) // batch_size) for idx in client_indices]
    return sum(per_client) if isinstance(fed.algo.schedule, Sequential) else max(per_client)
