"""The federation: all run state (clients, server, ledger, clock, step counter, relay state, clients behind on FedAvg)
and one round over it, for the clients the participation policy lets take part."""

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.parts import FedAvg, Parallel, Relay, Sequential
from locfedmix.algorithms.schedule import StepPlan, client_batches, plan_round
from locfedmix.config import Config, EngineKind
from locfedmix.engines.clients import ClientPool, LoopClients
from locfedmix.engines.distributed import Shard
from locfedmix.engines.exchange import catch_up, hand_off, leave_relay, synchronize
from locfedmix.engines.memory import ActivationBudget
from locfedmix.engines.participation import Attendance, Participation
from locfedmix.engines.sharded import ShardedClients
from locfedmix.engines.state import Server, build_client_head, build_server
from locfedmix.engines.step import train_step
from locfedmix.engines.vectorized import StackedClients
from locfedmix.errors import NumericalError
from locfedmix.latency.flops import SampleFlops, count_flops
from locfedmix.latency.ledger import Direction, Kind, Ledger, module_bytes
from locfedmix.latency.model import Clock, Profile, step_phases, upload_arrivals
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
    smashed_sample_bytes: int  # what one sample's smashed data cost on the wire
    participation: Participation
    clock: Clock = field(default_factory=Clock)
    defence: Defence = field(default_factory=Defence)  # [privacy]: every defence off unless configured
    step: int = 0
    holder: int | None = None  # sequential SL: the client holding the current lower model (None: the server)
    relay_model: dict | None = None  # sequential SL: the lower weights the server last received
    stale: set[int] = field(default_factory=set)  # clients that missed a FedAvg since they last reported

    def state_dict(self) -> dict:
        """Everything a resumed run needs; every random draw is derived from (seed, purpose, round or step), so
        the step counter and the round index stand in for generator states and data-loader positions."""
        return {"clients": self.clients.state_dict(), "server": self.server.state_dict(),
                "ledger": self.ledger.state_dict(), "clock": self.clock.state_dict(), "step": self.step,
                "holder": self.holder, "relay_model": self.relay_model, "stale": sorted(self.stale)}

    def load_state_dict(self, state: dict) -> None:
        self.clients.load_state_dict(state["clients"])
        self.server.load_state_dict(state["server"])
        self.ledger.load_state_dict(state["ledger"])
        self.clock.load_state_dict(state["clock"])
        self.step, self.holder = state["step"], state["holder"]
        # checkpoints written before participation existed hold neither: no failed relay, nobody behind on FedAvg
        self.relay_model, self.stale = state.get("relay_model"), set(state.get("stale", ()))

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
    smashed = math.prod(model.cut_shape) * next(model.lower.parameters()).element_size()
    participation = Participation.from_config(config.participation, config.n_clients, config.seed)
    defence = Defence(config.privacy.clip, config.privacy.noise_multiplier, config.privacy.nopeek, config.seed)
    return Federation(algo, clients, server, sizes, config.seed, ledger, flops, profile, model.cut_shape, model_bytes,
                      smashed, participation, defence=defence)


# On the CPU, per-client batches up to this size run faster stacked than looped (measured on 2 cores at 100 clients
# with engines.stacked_layers: at 4 samples the stacked pool wins 1.13x for psl and 1.3x for locfedmix, at 8 the
# loop wins 1.2x and 1.4x). On a GPU the loop is bound by kernel launches, so many clients stepping together always
# run stacked (benchmarks/throughput.py).
STACKED_MAX_BATCH = 4


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
    budget = ActivationBudget(config.engine.activation_memory_mb, lower, head)
    if kind is EngineKind.VECTORIZED:
        return StackedClients(lower, head, n, config.client_optimizer, config.engine.chunk_clients, budget)
    return LoopClients(lower, head, n, config.client_optimizer, budget, config.engine.layout)


StepExecutor = Callable[["Federation", StepPlan], float]


def gather_batches(x: torch.Tensor, y: torch.Tensor, plan: StepPlan) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Every client's mini-batch of the step, gathered in one indexing operation (views of it per client)."""
    if not plan:
        return {}
    ids = list(plan)
    rows = torch.cat([torch.as_tensor(plan[i]) for i in ids]).to(x.device)
    sizes = [len(plan[i]) for i in ids]
    return dict(zip(ids, zip(x[rows].split(sizes), y[rows].split(sizes))))


def data_step(x: torch.Tensor, y: torch.Tensor) -> StepExecutor:
    """Run a planned step for real on the training tensors; returns the step's Σ δ_i L_i."""

    def execute(fed: Federation, plan: StepPlan) -> float:
        batches = gather_batches(x, y, plan)
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
    """One round (each participating client passes once over its data): the schedule's steps for the clients the
    participation policy draws, each executed, charged to the ledger and the clock, with relay hand-offs and FedAvg
    of the clients that report when due. Returns the mean over steps of what `execute` returns."""
    sync = fed.algo.sync
    batches = {
        i: client_batches(client_indices[i], batch_size, numpy_generator(fed.seed, "batches", i, round_index))
        for i in fed.participation.participants(round_index)
    }
    attendance = fed.participation.attendance(round_index, {i: len(b) for i, b in batches.items()})
    losses = []
    for planned in plan_round(fed.algo.schedule, batches, numpy_generator(fed.seed, "order", round_index)):
        plan, failed = attendance.admit(planned)
        leave_relay(fed, failed)
        if not plan:
            continue
        loss = run_step(fed, plan, attendance, execute, round_index)
        if loss is not None:
            losses.append(loss)
        if isinstance(sync, FedAvg) and sync.every_steps and fed.step % sync.every_steps == 0:
            synchronize(fed, sync, attendance.reporters())
        on_step()
    if isinstance(sync, FedAvg) and not sync.every_steps:
        synchronize(fed, sync, attendance.reporters())
    return float(np.mean(losses)) if losses else float("nan")


def run_step(fed: Federation, plan: StepPlan, attendance: Attendance, execute: StepExecutor,
             round_index: int) -> float | None:
    """One step of the clients still in the round: relay hand-off or pending downloads first; the clients whose
    upload would miss the deadline are dropped (their upload is charged — it was sent — but the server does not use
    it and no gradient goes back); the others are served. Returns the step's loss (None when nobody was served)."""
    if isinstance(fed.algo.sync, Relay):
        hand_off(fed, next(iter(plan)))
    catch_up(fed, plan)
    sizes = {i: len(idx) for i, idx in plan.items()}
    late = late_clients(fed, sizes)
    served = {i: idx for i, idx in plan.items() if i not in late}
    loss = None
    if served:
        try:
            loss = execute(fed, served)
        except NumericalError as err:
            raise NumericalError(f"{err} at step {fed.step} (round {round_index}) of {fed.algo.name}") from None
    for i in sorted(late):
        fed.ledger.send(i, Kind.SMASHED, Direction.UP, sizes[i] * fed.smashed_sample_bytes)
        fed.ledger.send(i, Kind.LABELS, Direction.UP, sizes[i] * fed.ledger.label_bytes)
    attendance.dropped |= late
    leave_relay(fed, late)
    cutoff = fed.participation.deadline_s if late else None
    fed.clock.advance(step_phases(fed.algo, fed.flops, fed.profile, {i: sizes[i] for i in served},
                                  fed.ledger.close(), fed.participation.slowdown, cutoff))
    fed.step += 1
    return loss


def late_clients(fed: Federation, sizes: dict[int, int]) -> set[int]:
    """The clients of a step whose upload, by the latency model, would arrive after the deadline (none without)."""
    deadline = fed.participation.deadline_s
    if not deadline:
        return set()
    upload = {i: b * (fed.smashed_sample_bytes + fed.ledger.label_bytes) for i, b in sizes.items()}
    arrivals = upload_arrivals(fed.flops, fed.profile, sizes, upload, fed.participation.slowdown)
    return {i for i, t in arrivals.items() if t > deadline}


def steps_per_round(fed: Federation, client_indices: list[np.ndarray], batch_size: int) -> int:
    per_client = [-(-len(idx) // batch_size) for idx in client_indices]
    return sum(per_client) if isinstance(fed.algo.schedule, Sequential) else max(per_client)
