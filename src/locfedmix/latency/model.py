"""The latency model: simulated seconds of each step and sync, a pure function of the ledger's messages, the FLOPs
of the passes and a device/link profile (paper.md, "Latency model"; SGLR Table 6 generalised per step).

A step whose client waits for the server's gradient costs
    client forward + max(local objective, upload + server + download) + client backward,
the local objective (decoder or head) overlapping the wait. A step with nothing coming down (LocSplitFed) pipelines:
    max(client forward + local objective + client backward, upload + server).
Clients that transmit together share the band equally; a sequential step gives one client the whole band.
"""

from collections import defaultdict
from dataclasses import dataclass

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.objectives import receives_server_gradient
from locfedmix.latency.flops import SampleFlops
from locfedmix.latency.ledger import Direction, Message

PHASES = ("client_compute", "upload", "server_compute", "download", "sync")


@dataclass(frozen=True)
class Profile:
    """Device and link speeds: FLOP/s of one client and of the server, the band's rate in bit/s when one client
    has it alone, and a fixed one-way delay per transfer."""

    client_flops: float
    server_flops: float
    uplink_bps: float
    downlink_bps: float
    link_delay_s: float = 0.0


PROFILES: dict[str, Profile] = {
    # a phone-class client (≈20 GFLOP/s sustained) on an LTE cell, a GPU server (≈10 TFLOP/s sustained)
    "phone-lte": Profile(20e9, 10e12, 10e6, 40e6, 0.025),
    # an edge device (≈200 GFLOP/s, Jetson class) on Wi-Fi, the same GPU server
    "edge-wifi": Profile(200e9, 10e12, 100e6, 200e6, 0.002),
}


def transfer_seconds(messages: list[Message], direction: Direction, rate_bps: float, delay_s: float) -> float:
    """Time until the last of the clients sending in `direction` is done, the band split equally among them."""
    per_client: dict[int, int] = defaultdict(int)
    for m in messages:
        if m.direction is direction:
            per_client[m.client] += m.nbytes
    if not per_client:
        return 0.0
    return max(per_client.values()) * 8 * len(per_client) / rate_bps + delay_s


def mixed_samples(algo: Algorithm, batch_sizes: dict[int, int]) -> int:
    """Samples SmashMix adds to the server's work: n_s partners per client (clipped to the others present)."""
    if algo.mixer is None:
        return 0
    return min(algo.mixer.partners, len(batch_sizes) - 1) * sum(batch_sizes.values())


def step_phases(algo: Algorithm, flops: SampleFlops, profile: Profile, batch_sizes: dict[int, int],
                messages: list[Message]) -> dict[str, float]:
    """Duration of each phase of one training step, and the step's total under the algorithm's message pattern."""
    largest = max(batch_sizes.values())
    forward = largest * flops.lower_fwd / profile.client_flops
    backward = largest * flops.lower_bwd / profile.client_flops
    local = largest * (flops.head_fwd + flops.head_bwd) / profile.client_flops
    served = sum(batch_sizes.values()) + mixed_samples(algo, batch_sizes)
    server = served * (flops.upper_fwd + flops.upper_bwd) / profile.server_flops
    up = transfer_seconds(messages, Direction.UP, profile.uplink_bps, profile.link_delay_s)
    down = transfer_seconds(messages, Direction.DOWN, profile.downlink_bps, profile.link_delay_s)
    if receives_server_gradient(algo.objective):
        total = forward + max(local, up + server + down) + backward
    else:
        total = max(forward + local + backward, up + server)
    return {"client_compute": forward + local + backward, "upload": up, "server_compute": server,
            "download": down, "sync": 0.0, "total": total}


def sync_phases(profile: Profile, messages: list[Message]) -> dict[str, float]:
    """A model exchange (FedAvg or relay hand-off): weights up to the server, then the result down."""
    seconds = (transfer_seconds(messages, Direction.UP, profile.uplink_bps, profile.link_delay_s)
               + transfer_seconds(messages, Direction.DOWN, profile.downlink_bps, profile.link_delay_s))
    return {**dict.fromkeys(PHASES, 0.0), "sync": seconds, "total": seconds}


class Clock:
    """Simulated wall clock of the run: the sum of step and sync totals, with the raw phase durations beside it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.phases = dict.fromkeys(PHASES, 0.0)

    def advance(self, phases: dict[str, float]) -> None:
        self.seconds += phases["total"]
        for name in PHASES:
            self.phases[name] += phases[name]

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "phases": dict(self.phases)}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = state["seconds"]
        self.phases = dict(state["phases"])
