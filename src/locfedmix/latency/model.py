"""The latency model: simulated seconds of each step and sync, a pure function of the ledger's messages, the FLOPs
of the passes and a device/link profile (SGLR's Table 6 latency model, generalised per step).

A step whose client waits for the server's gradient costs
    client forward + max(local objective, upload + server + download) + client backward,
the local objective (decoder or head) overlapping the wait. A step with nothing coming down (LocSplitFed) pipelines:
    max(client forward + local objective + client backward, upload + server).
Clients that transmit together share the band equally; a sequential step gives one client the whole band.

Stragglers (issue #7) compute and transmit `slowdown` times slower (the fixed per-transfer delay is not scaled). Every
term of a client's step — forward, local objective, backward, upload, download — is proportional to its batch times
its slowdown, so the client with the largest batch × slowdown is the last in every phase: the phase maxima below are
its critical path, and a parallel step waits for it. With a deadline the server stops waiting for uploads at the
deadline when some client's would arrive later (`upload_arrivals`); the step then runs from there with the clients
that made it.
"""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.objectives import receives_server_gradient
from locfedmix.latency.flops import SampleFlops
from locfedmix.latency.ledger import Direction, Message

PHASES = ("client_compute", "upload", "server_compute", "download", "sync")
FULL_SPEED: Mapping[int, float] = MappingProxyType({})  # no stragglers: every client at the profile's speed


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


def transfer_seconds(messages: list[Message], direction: Direction, rate_bps: float, delay_s: float,
                     slowdown: Mapping[int, float] = FULL_SPEED) -> float:
    """Time until the last of the clients sending in `direction` is done, the band split equally among them and a
    straggler's share `slowdown` times slower."""
    per_client: dict[int, int] = defaultdict(int)
    for m in messages:
        if m.direction is direction:
            per_client[m.client] += m.nbytes
    if not per_client:
        return 0.0
    slowest = max(n * slowdown.get(c, 1.0) for c, n in per_client.items())
    return slowest * 8 * len(per_client) / rate_bps + delay_s


def upload_arrivals(flops: SampleFlops, profile: Profile, batch_sizes: dict[int, int], upload_bytes: dict[int, int],
                    slowdown: Mapping[int, float] = FULL_SPEED) -> dict[int, float]:
    """Seconds from a step's start until each client's upload has arrived: its forward pass, then its share of the
    band among all the step's senders — the terms whose maximum `step_phases` charges as forward + upload."""
    senders = len(upload_bytes)
    return {i: b * slowdown.get(i, 1.0) * flops.lower_fwd / profile.client_flops
            + upload_bytes[i] * slowdown.get(i, 1.0) * 8 * senders / profile.uplink_bps + profile.link_delay_s
            for i, b in batch_sizes.items()}


def mixed_samples(algo: Algorithm, batch_sizes: dict[int, int]) -> int:
    """Samples SmashMix adds to the server's work: n_s partners per client (clipped to the others present)."""
    if algo.mixer is None or not batch_sizes:
        return 0
    return min(algo.mixer.partners, len(batch_sizes) - 1) * sum(batch_sizes.values())


def step_phases(algo: Algorithm, flops: SampleFlops, profile: Profile, batch_sizes: dict[int, int],
                messages: list[Message], slowdown: Mapping[int, float] = FULL_SPEED,
                cutoff: float | None = None) -> dict[str, float]:
    """Duration of each phase of one training step, and the step's total under the algorithm's message pattern.

    batch_sizes: the clients the server served; messages: all that was sent, late uploads included (they share the
    band); cutoff: the deadline, when the server stopped waiting for a late upload (None when all arrived in time).
    """
    largest = max((b * slowdown.get(i, 1.0) for i, b in batch_sizes.items()), default=0)
    forward = largest * flops.lower_fwd / profile.client_flops
    backward = largest * flops.lower_bwd / profile.client_flops
    local = largest * (flops.head_fwd + flops.head_bwd) / profile.client_flops
    served = sum(batch_sizes.values()) + mixed_samples(algo, batch_sizes)
    server = served * (flops.upper_fwd + flops.upper_bwd) / profile.server_flops
    up = transfer_seconds(messages, Direction.UP, profile.uplink_bps, profile.link_delay_s, slowdown)
    down = transfer_seconds(messages, Direction.DOWN, profile.downlink_bps, profile.link_delay_s, slowdown)
    wait = up if cutoff is None else cutoff - forward  # from the end of the forward pass to the server's start
    if receives_server_gradient(algo.objective):
        total = forward + max(local, wait + server + down) + backward
    else:  # pipelined: the link and server work overlap the client's (the server starts at the cutoff, if any)
        total = max(forward + local + backward, (up if cutoff is None else cutoff) + server)
    return {"client_compute": forward + local + backward, "upload": wait, "server_compute": server,
            "download": down, "sync": 0.0, "total": total}


def sync_phases(profile: Profile, messages: list[Message],
                slowdown: Mapping[int, float] = FULL_SPEED) -> dict[str, float]:
    """A model exchange (FedAvg or relay hand-off): weights up to the server, then the result down."""
    seconds = (transfer_seconds(messages, Direction.UP, profile.uplink_bps, profile.link_delay_s, slowdown)
               + transfer_seconds(messages, Direction.DOWN, profile.downlink_bps, profile.link_delay_s, slowdown))
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
