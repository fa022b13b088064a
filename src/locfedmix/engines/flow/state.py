"""The run as data: what its config fixed (`Setup`), what training changes (`RunState`, which a checkpoint saves and
restores whole) and the transport its messages travel by, bundled as a `Federation`.

Every random draw is derived from (seed, purpose, round or step) (locfedmix.rng), so the step counter and the round
index stand in for generator states and data-loader positions: a RunState needs no generator to resume."""

from dataclasses import dataclass, field

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.engines.flow.interfaces import ClientPool, Transport
from locfedmix.engines.flow.participation import Participation
from locfedmix.engines.flow.recipe import Recipe
from locfedmix.engines.flow.server import Server
from locfedmix.latency.flops import SampleFlops
from locfedmix.latency.ledger import Kind, Ledger
from locfedmix.latency.model import Clock, Profile
from locfedmix.privacy.defences import Defence


@dataclass
class Setup:
    """What the config fixed when the run was built; training reads it and never changes it."""

    algo: Algorithm
    recipe: Recipe
    sizes: list[int]  # |D_i|, for the data-size weights δ_i
    seed: int
    flops: SampleFlops
    profile: Profile
    cut_shape: tuple[int, ...]
    model_bytes: dict[Kind, int]  # what sending one client's lower model / head costs
    smashed_sample_bytes: int  # what one sample's smashed data cost on the wire
    participation: Participation
    defence: Defence = field(default_factory=Defence)  # [privacy]: every defence off unless configured
    reset_on_sync: bool = False  # client_optimizer.on_sync = "reset": FedAvg and the relay rebuild client optimizers


@dataclass
class RunState:
    """Everything training changes: models and optimizers (in the pool and the server), ledger, clock, step counter,
    the relay's holder and last received model, and the clients that missed a FedAvg since they last reported."""

    clients: ClientPool
    server: Server
    ledger: Ledger
    clock: Clock = field(default_factory=Clock)
    step: int = 0
    holder: int | None = None  # sequential SL: the client holding the current lower model (None: the server)
    relay_model: dict | None = None  # sequential SL: the lower weights the server last received
    stale: set[int] = field(default_factory=set)

    def state_dict(self, transport: Transport) -> dict:
        """The whole state; the pool's part gathered through the transport (in a distributed run, to rank 0)."""
        return {"clients": transport.gather(self.clients.state_dict()), "server": self.server.state_dict(),
                "ledger": self.ledger.state_dict(), "clock": self.clock.state_dict(), "step": self.step,
                "holder": self.holder, "relay_model": self.relay_model, "stale": sorted(self.stale)}

    def load_state_dict(self, state: dict, transport: Transport) -> None:
        self.clients.load_state_dict(transport.scatter(state["clients"]))
        self.server.load_state_dict(state["server"])
        self.ledger.load_state_dict(state["ledger"])
        self.clock.load_state_dict(state["clock"])
        self.step, self.holder = state["step"], state["holder"]
        # checkpoints written before participation existed hold neither: no failed relay, nobody behind on FedAvg
        self.relay_model, self.stale = state.get("relay_model"), set(state.get("stale", ()))


def _part(part: str, name: str) -> property:
    return property(lambda fed: getattr(getattr(fed, part), name),
                    lambda fed, value: setattr(getattr(fed, part), name, value))


@dataclass
class Federation:
    """One run: its setup, its state and its transport. Their fields read (and set) through it as well."""

    setup: Setup
    state: RunState
    transport: Transport

    (algo, recipe, sizes, seed, flops, profile, cut_shape, model_bytes, smashed_sample_bytes, participation, defence,
     reset_on_sync) = (_part("setup", name) for name in (
        "algo", "recipe", "sizes", "seed", "flops", "profile", "cut_shape", "model_bytes", "smashed_sample_bytes",
        "participation", "defence", "reset_on_sync"))
    clients, server, ledger, clock, step, holder, relay_model, stale = (
        _part("state", name) for name in ("clients", "server", "ledger", "clock", "step", "holder", "relay_model",
                                          "stale"))

    def state_dict(self) -> dict:
        return self.state.state_dict(self.transport)

    def load_state_dict(self, state: dict) -> None:
        self.state.load_state_dict(state, self.transport)

    def weights(self, ids) -> dict[int, float]:
        """δ_i = |D_i| / Σ_k |D_k| over the clients taking part."""
        total = sum(self.sizes[i] for i in ids)
        return {i: self.sizes[i] / total for i in ids}
