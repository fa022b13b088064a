"""Participation and faults (issue #7): who takes part in a round, who fails at which of its steps, who is slow.

The paper's federation has every client present, reliable and equally fast. Real ones sample a share of the clients
per round, lose some mid-round and wait for slow ones. Every draw here comes from a generator derived from
(seed, purpose, round), never from state carried between rounds, so a resumed run draws exactly what an
uninterrupted one does, and the defaults (everyone, always, at full speed) draw nothing that changes a number.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from locfedmix.algorithms.schedule import StepPlan
from locfedmix.config import ParticipationConfig
from locfedmix.rng import numpy_generator


@dataclass
class Attendance:
    """One round's roll: who takes part, at which of its own batches (1-based) each failing client fails, and who
    has dropped out so far (failed, or late past the deadline). A dropped client does nothing more this round and
    does not report to FedAvg."""

    participants: list[int]
    fail_at: dict[int, int]
    dropped: set[int] = field(default_factory=set)
    taken: dict[int, int] = field(default_factory=dict)  # batches of each client planned so far this round

    def admit(self, planned: StepPlan) -> tuple[StepPlan, set[int]]:
        """The planned step without the clients already dropped and without those failing at this very batch (whose
        upload never arrives); returns it with the clients that failed now, who are dropped from here on."""
        plan, failed = {}, set()
        for i, batch in planned.items():
            if i in self.dropped:
                continue
            self.taken[i] = self.taken.get(i, 0) + 1
            if self.taken[i] == self.fail_at.get(i):
                failed.add(i)
            else:
                plan[i] = batch
        self.dropped |= failed
        return plan, failed

    def reporters(self) -> list[int]:
        """The clients that take part and have not dropped out: those whose models FedAvg averages."""
        return [i for i in self.participants if i not in self.dropped]


@dataclass(frozen=True)
class Participation:
    """The federation's participation policy.

    fraction: share of clients sampled per round; dropout: per-round failure probability of a participant;
    slowdown: straggler id → factor (drawn once per run: slowness is a property of the device); deadline_s: the
    server's wait for uploads within a step (0 = unbounded).
    """

    n: int
    seed: int
    fraction: float = 1.0
    dropout: float = 0.0
    slowdown: Mapping[int, float] = field(default_factory=dict)
    deadline_s: float = 0.0

    @classmethod
    def from_config(cls, config: ParticipationConfig, n: int, seed: int) -> "Participation":
        count = round(config.stragglers * n)
        slow = numpy_generator(seed, "stragglers").choice(n, size=count, replace=False)
        return cls(n, seed, config.fraction, config.dropout,
                   {int(i): config.straggler_slowdown for i in sorted(slow)}, config.deadline_s)

    def participants(self, round_index: int) -> list[int]:
        """max(1, round(fraction·N)) clients drawn without replacement, afresh every round, in id order."""
        size = max(1, round(self.fraction * self.n))
        drawn = numpy_generator(self.seed, "participation", round_index).choice(self.n, size=size, replace=False)
        return sorted(int(i) for i in drawn)

    def failures(self, round_index: int, batches: dict[int, int]) -> dict[int, int]:
        """Client → the batch (1..K_i of its K_i this round) at which it fails, for those that fail. Two uniforms are
        drawn for every one of the N clients, so a client's fate does not depend on who else takes part."""
        draws = numpy_generator(self.seed, "dropout", round_index).random((self.n, 2))
        return {i: 1 + int(draws[i, 1] * k) for i, k in batches.items() if k and draws[i, 0] < self.dropout}

    def attendance(self, round_index: int, batches: dict[int, int]) -> Attendance:
        """The roll of a round whose participants (`batches`: client → its batch count) are already drawn."""
        return Attendance(sorted(batches), self.failures(round_index, batches))
