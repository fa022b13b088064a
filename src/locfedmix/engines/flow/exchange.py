"""Model exchanges between the clients and the server — sequential SL's relay hand-off and FedAvg — with what each
puts on the ledger and the clock when clients are sampled, fail or fall behind (issue #7). The weights travel
through the run's transport.

Accounting rule: the ledger counts what is really sent. A client that reports to FedAvg uploads its model and
downloads the average at the sync. A client that does not report (it was not sampled, failed or was late) sends
nothing then; it downloads the average when it next takes part, just before its first step. The average is written
into every client's row at once — a client that is away does no work until it downloads, so its numbers are the
same — and evaluation therefore sees the one global model.

Optimizer state stays with each client across both exchanges unless `client_optimizer.on_sync = "reset"`: then a
client whose weights an exchange replaces starts its optimizer afresh (written at once too, for the same reason).
"""

from locfedmix.algorithms.fedavg import federated_average
from locfedmix.algorithms.parts import FedAvg
from locfedmix.algorithms.schedule import StepPlan
from locfedmix.engines.flow.state import Federation
from locfedmix.latency.ledger import Direction, Kind
from locfedmix.latency.model import sync_phases


def _close_exchange(fed: Federation) -> None:
    messages = fed.ledger.close()
    if messages:
        fed.clock.advance(sync_phases(fed.profile, messages, fed.participation.slowdown))


def hand_off(fed: Federation, to: int) -> None:
    """Relay: the client that trained last hands its lower weights back to the server, which passes them on to the
    next. After the holder failed (or its machine is gone when the hand-back is asked for: a deployment) there is
    nothing to hand back: the next client gets the model the server last received (before any hand-off, a client
    starts from the model it has, the shared initial one)."""
    if fed.holder == to:
        return
    if fed.holder is not None:
        handed = fed.transport.broadcast_lower(fed.clients, fed.holder)
        if handed is not None:  # a holder whose machine is gone by now hands nothing back: its turn is lost
            fed.relay_model = handed
            fed.ledger.send(fed.holder, Kind.LOWER, Direction.UP, fed.model_bytes[Kind.LOWER])
    if fed.relay_model is not None:
        fed.transport.deliver_lower(fed.clients, to, fed.relay_model)
        if fed.reset_on_sync:
            fed.clients.restart_optimizer([to])
        fed.ledger.send(to, Kind.LOWER, Direction.DOWN, fed.model_bytes[Kind.LOWER])
    _close_exchange(fed)
    fed.holder = to


def leave_relay(fed: Federation, dropped: set[int]) -> None:
    """A holder that fails (or misses the deadline) mid-turn never hands its model back; its local progress is lost
    to the relay, which resumes from the model the server holds."""
    if fed.holder in dropped:
        fed.holder = None


def exchanged_kinds(fed: Federation, sync: FedAvg) -> list[Kind]:
    return [Kind.LOWER] + ([Kind.HEAD] if sync.average_heads and fed.clients.has_head else [])


def catch_up(fed: Federation, plan: StepPlan) -> None:
    """Clients of this step that missed a FedAvg since they last reported download the averaged model(s) first."""
    due = sorted(i for i in plan if i in fed.stale)
    if not due:
        return
    for kind in exchanged_kinds(fed, fed.recipe.fedavg):
        for i in due:
            fed.ledger.send(i, kind, Direction.DOWN, fed.model_bytes[kind])
    fed.stale.difference_update(due)
    _close_exchange(fed)


def synchronize(fed: Federation, sync: FedAvg, reporters: list[int]) -> None:
    """FedAvg of the client models (and heads, and server copies, as the declaration says), weighted by δ_i over
    the clients that report: each of them uploads what is averaged and downloads the average; server copies are
    averaged on the server itself. The others weigh 0 and become stale. Without reporters nothing changes."""
    if not reporters:
        return
    delta = fed.weights(reporters)
    weights = [delta.get(i, 0.0) for i in range(fed.clients.n)]
    kinds = exchanged_kinds(fed, sync)
    fed.transport.average(fed.clients, weights, Kind.HEAD in kinds)
    if fed.reset_on_sync:  # every client takes the average (one that is away, before its next step): all rebuild
        fed.clients.restart_optimizer(list(range(fed.clients.n)))
    for kind in kinds:
        for i in reporters:
            fed.ledger.send(i, kind, Direction.UP, fed.model_bytes[kind])
            fed.ledger.send(i, kind, Direction.DOWN, fed.model_bytes[kind])
    if sync.average_server_copies and len(fed.server.uppers) > 1:
        federated_average(fed.server.uppers, weights)
    fed.stale = set(range(fed.clients.n)) - set(reporters)
    _close_exchange(fed)
