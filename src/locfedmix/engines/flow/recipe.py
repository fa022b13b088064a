"""An algorithm's parts (algorithms/parts.py) read once into the questions the flow asks of them, so that the
round, the step, the exchanges, the pools' assembly and evaluation consult one record instead of each testing the
parts' types."""

from dataclasses import dataclass

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.objectives import receives_server_gradient
from locfedmix.algorithms.parts import FedAvg, Parallel, Reconstruction, Relay, ServerLayout


@dataclass(frozen=True)
class Recipe:
    parallel: bool  # the clients step together (else one at a time, a round as long as all their batches)
    relay: bool  # sequential SL's hand-off of the lower model from client to client
    fedavg: FedAvg | None  # client models averaged, when and what
    server_copies: bool  # one upper model per client (SplitFed v1)
    sends_gradient: bool  # the server sends ∂L_i/∂s_i down
    decoder: bool  # the client head reconstructs the input from the smashed data

    @classmethod
    def of(cls, algo: Algorithm) -> "Recipe":
        fedavg = algo.sync if isinstance(algo.sync, FedAvg) else None
        return cls(isinstance(algo.schedule, Parallel), isinstance(algo.sync, Relay), fedavg,
                   algo.server_layout is ServerLayout.PER_CLIENT, receives_server_gradient(algo.objective),
                   isinstance(algo.objective, Reconstruction))

    def fedavg_after_step(self, step: int) -> bool:
        """FedAvg is due after this many steps (those averaging every T_c steps)."""
        return self.fedavg is not None and bool(self.fedavg.every_steps) and step % self.fedavg.every_steps == 0

    @property
    def fedavg_after_round(self) -> bool:
        return self.fedavg is not None and not self.fedavg.every_steps
