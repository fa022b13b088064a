"""The federation: all run state (clients, server, ledger, clock, step counter, relay holder) and one round over it."""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.fedavg import federated_average
from locfedmix.algorithms.parts import FedAvg, Relay, Sequential
from locfedmix.algorithms.schedule import StepPlan, client_batches, plan_round
from locfedmix.config import Config
from locfedmix.algorithms.parts import Parallel
from locfedmix.config import EngineKind
from locfedmix.engines.clients import ClientPool, LoopClients
from locfedmix.engines.distributed import Shard
from locfedmix.engines.sharded import ShardedClients
from locfedmix.engines.state import Server, build_client_head, build_server
from locfedmix.engines.step import train_step
from locfedmix.engines.vectorized import StackedClients
from locfedmix.errors import NumericalError
from locfedmix.latency.flops import SampleFlops, count_flops
from locfedmix.latency.ledger import Direction, Kind, Ledger, module_bytes
from locfedmix.latency.model import Clock, Profile, step_phases, sync_phases
from locfedmix.models import build_split_model
from locfedmix.privacy.defences import Defence
from locfedmix.rng import numpy_generator, seeded_torch


@dataclass
class Federation:
    algo: Algorithm
    clients: ClientPool
    server: Server
    sizes: list[int]  # |D_i|, for the data-size weights δ_i
    seed: int
    ledger: Ledger
    flops: SampleFlops
    profile: Profile
    cut_shape: tuple[int, ...]
    model_bytes: dict[Kind, int]  # what sending one client's lower model / head costs
    clock: Clock = field(default_factory=Clock)
    defence: Defence = field(default_factory=Defence)  # [privacy]: every defence off unless configured
    step: int = 0
    holder: int | None = None  # sequential SL: the client holding the current lower model

    def state_dict(self) -> dict:
        """Everything a resumed run needs; every random draw is derived from (seed, purpose, round or step), so
        the step counter and the round index stand in for generator states and data-loader positions."""
        return {"clients": self.clients.state_dict(), "server": self.server.state_dict(),
                "ledger": self.ledger.state_dict(), "clock": self.clock.state_dict(), "step": self.step,
                "holder": self.holder}

    def load_state_dict(self, state: dict) -> None:
        self.clients.load_state_dict(state["clients"])
        self.server.load_state_dict(state["server"])
        self.ledger.load_state_dict(state["ledger"])
        self.clock.load_state_dict(state["clock"])
        self.step, self.holder = state["step"], state["holder"]

    def weights(self, ids) -> dict[int, float]:
        """δ_i = |D_i| / Σ_k |D_k| over the clients taking part."""
        total = sum(self.sizes[i] for i in ids)
        return {i: self.sizes[i] / total for i in ids}


def build_federation(
    config: Config, algo: Algorithm, input_shape: tuple[int, int, int], n_classes: int, sizes: list[int],
    device: torch.device = torch.device("cpu"), shard: Shard | None = None,
) -> Federation:
    """All clients share one seeded initial lower model (and head); the server starts from the matching upper.
    The models are initialised on the CPU and then moved, so every device starts from the same weights. With a
    shard (a distributed run), this rank holds only its own clients."""
    with seeded_torch(config.seed, "init"):
        model = build_split_model(config.model, input_shape, n_classes, config.cut or None)
        head = build_client_head(algo, model, input_shape, n_classes)
    flops = count_flops(model.lower, model.upper, head, input_shape)
    for module in (model.lower, model.upper, head):
        if module is not None:
            module.to(device)
    typical_batch = min(config.batch_size, int(np.median(sizes)))
    if shard is None:
        clients = build_pool(config, algo, model.lower, head, typical_batch, config.n_clients)
    else:
        local = build_pool(config, algo, model.lower, head, typical_batch, shard.size)
        clients = ShardedClients(local, shard, model.cut_shape, device)
    server = build_server(algo, model, config.n_clients, config.server_optimizer)
    ledger = Ledger(config.latency.label_bytes)
    profile = config.latency.resolved_profile()
    model_bytes = {Kind.LOWER: module_bytes(model.lower), Kind.HEAD: module_bytes(head) if head is not None else 0}
    defence = Defence(config.privacy.clip, config.privacy.noise_multiplier, config.privacy.nopeek, config.seed)
    return Federation(algo, clients, server, sizes, config.seed, ledger, flops, profile, model.cut_shape, model_bytes,
                      defence=defence)


# On the CPU, per-client batches up to this size run faster stacked than looped (measured on 2 cores: at 100 clients
# the stacked pool wins 1.7x at 1 sample and 1.3x at 2, the loop wins 1.4x at 4 and 2.2x at 8). On a GPU the loop
# is bound by kernel launches, so many clients stepping together always run stacked (benchmarks/throughput.py).
STACKED_MAX_BATCH = 2


def build_pool(config: Config, algo: Algorithm, lower: torch.nn.Module, head: torch.nn.Module | None,
               typical_batch: int, n: int) -> ClientPool:
    """The stacked pool where many clients step together with tiny batches (any batch on a GPU), the loop
    otherwise, unless the config forces one."""
    kind = config.engine.kind
    if kind is EngineKind.AUTO:
        parallel = isinstance(algo.schedule, Parallel) and config.n_clients > 1
        on_gpu = next(lower.parameters()).device.type == "cuda"
        stack = parallel and (on_gpu or typical_batch <= STACKED_MAX_BATCH)
        kind = EngineKind.VECTORIZED if stack else EngineKind.LOOP
    if kind is EngineKind.VECTORIZED:
        return StackedClients(lower, head, n, config.client_optimizer, config.engine.chunk_clients)
    return LoopClients(lower, head, n, config.client_optimizer)


def hand_off(fed: Federation, to: int) -> None:
    """Relay: the next client starts from the lower weights of the client that trained last (sent via the server)."""
    if fed.holder is not None and fed.holder != to:
        fed.clients.copy_lower(fed.holder, to)
        fed.ledger.send(fed.holder, Kind.LOWER, Direction.UP, fed.model_bytes[Kind.LOWER])
        fed.ledger.send(to, Kind.LOWER, Direction.DOWN, fed.model_bytes[Kind.LOWER])
        fed.clock.advance(sync_phases(fed.profile, fed.ledger.close()))
    fed.holder = to


def synchronize(fed: Federation, sync: FedAvg) -> None:
    """FedAvg of the client models (and heads, and server copies, as the declaration says), δ-weighted: every
    client uploads what is averaged and downloads the average; server copies are averaged on the server itself."""
    weights = list(fed.weights(range(fed.clients.n)).values())
    heads = sync.average_heads and fed.clients.has_head
    fed.clients.average(weights, heads)
    for kind in [Kind.LOWER] + ([Kind.HEAD] if heads else []):
        for i in range(fed.clients.n):
            fed.ledger.send(i, kind, Direction.UP, fed.model_bytes[kind])
            fed.ledger.send(i, kind, Direction.DOWN, fed.model_bytes[kind])
    if sync.average_server_copies and len(fed.server.uppers) > 1:
        federated_average(fed.server.uppers, weights)
    fed.clock.advance(sync_phases(fed.profile, fed.ledger.close()))


StepExecutor = Callable[["Federation", StepPlan], float]


def data_step(x: torch.Tensor, y: torch.Tensor) -> StepExecutor:
    """Run a planned step for real on the training tensors; returns the step's Σ δ_i L_i."""

    def execute(fed: Federation, plan: StepPlan) -> float:
        batches = {i: (x[idx], y[idx]) for i, idx in plan.items()}
        mix_rng = numpy_generator(fed.seed, "smashmix", fed.step)
        return train_step(fed.algo, fed.clients, fed.server, batches, fed.weights(plan), mix_rng, fed.ledger,
                          fed.defence, fed.step)

    return execute


def train_round(
    fed: Federation,
    client_indices: list[np.ndarray],
    batch_size: int,
    round_index: int,
    execute: StepExecutor,
    on_step: Callable[[], None] = lambda: None,
) -> float:
    """One round (each client passes once over its data): the schedule's steps, each executed, charged to the ledger
    and the clock, with relay hand-offs and FedAvg when due. Returns the mean over steps of what `execute` returns."""
    algo, sync = fed.algo, fed.algo.sync
    batches = {
        i: client_batches(idx, batch_size, numpy_generator(fed.seed, "batches", i, round_index))
        for i, idx in enumerate(client_indices)
    }
    losses = []
    for plan in plan_round(algo.schedule, batches, numpy_generator(fed.seed, "order", round_index)):
        if isinstance(sync, Relay):
            hand_off(fed, next(iter(plan)))
        try:
            losses.append(execute(fed, plan))
        except NumericalError as err:
            raise NumericalError(f"{err} at step {fed.step} (round {round_index}) of {algo.name}") from None
        sizes = {i: len(idx) for i, idx in plan.items()}
        fed.clock.advance(step_phases(algo, fed.flops, fed.profile, sizes, fed.ledger.close()))
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
