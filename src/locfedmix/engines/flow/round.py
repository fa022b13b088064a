"""One round of the federation, for the clients the participation policy lets take part: the schedule's steps, each
executed, charged to the ledger and the clock, with the relay's hand-offs and FedAvg when due."""

from typing import Callable

import numpy as np
import torch

from locfedmix.algorithms.schedule import StepPlan, epoch_batches, plan_round
from locfedmix.engines.flow.exchange import catch_up, hand_off, leave_relay, synchronize
from locfedmix.engines.flow.participation import Attendance
from locfedmix.engines.flow.state import Federation
from locfedmix.engines.flow.step import train_step
from locfedmix.errors import ClientsLost, NumericalError
from locfedmix.latency.ledger import Direction, Kind
from locfedmix.latency.model import step_phases, upload_arrivals
from locfedmix.rng import numpy_generator

StepExecutor = Callable[[Federation, StepPlan], float]


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
        return train_step(fed.algo, fed.recipe, fed.clients, fed.server, fed.transport, batches, fed.weights(plan),
                          mix_rng, fed.ledger, fed.defence, fed.step)

    return execute


def round_batches(fed: Federation, client_indices: list[np.ndarray], batch_size: int,
                  round_index: int) -> dict[int, list[torch.Tensor]]:
    """Each participating client's mini-batches of this round, in its seeded order."""
    return {i: epoch_batches(client_indices[i], batch_size, fed.seed, i, round_index)
            for i in fed.participation.participants(round_index)}


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
    batches = round_batches(fed, client_indices, batch_size, round_index)
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
        if fed.recipe.fedavg_after_step(fed.step):
            synchronize(fed, fed.recipe.fedavg, attendance.reporters())
        on_step()
    if fed.recipe.fedavg_after_round:
        synchronize(fed, fed.recipe.fedavg, attendance.reporters())
    return float(np.mean(losses)) if losses else float("nan")


def run_step(fed: Federation, plan: StepPlan, attendance: Attendance, execute: StepExecutor,
             round_index: int) -> float | None:
    """One step of the clients still in the round: relay hand-off or pending downloads first; the clients whose
    upload would miss the deadline are dropped (their upload is charged — it was sent — but the server does not use
    it and no gradient goes back); the others are served, and a client that stops answering (a deployed client's
    machine died) is out for the rest of the round, as a failing one. Returns the step's loss (None when nobody was
    served)."""
    if fed.recipe.relay:
        hand_off(fed, next(iter(plan)))
    catch_up(fed, plan)
    sizes = {i: len(idx) for i, idx in plan.items()}
    late = late_clients(fed, sizes)
    served = {i: idx for i, idx in plan.items() if i not in late}
    loss = None
    while served:
        try:
            loss = execute(fed, served)
            break
        except ClientsLost as lost:  # their uploads never came: the step is served again without them
            attendance.dropped |= lost.ids
            leave_relay(fed, lost.ids)
            served = {i: idx for i, idx in served.items() if i not in lost.ids}
        except NumericalError as err:
            raise NumericalError(f"{err} at step {fed.step} (round {round_index}) of {fed.algo.name}") from None
    gone = fed.transport.departed()  # answered the upload, then stopped: their step is lost to them
    attendance.dropped |= gone
    leave_relay(fed, gone)
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
    return max(per_client) if fed.recipe.parallel else sum(per_client)
