"""The pool of a process that holds no client: a deployment's server, whose clients compute on their own machines.
Every step's uploads arrive through the transport and the cut gradients leave through it, so the flow hands this
pool nothing to compute; what it holds of the clients is only their number and whether they have a head."""

import torch
from torch import nn

from locfedmix.algorithms.parts import ClientObjective
from locfedmix.engines.flow.interfaces import Batches, Smashed, Weights


class RemoteClients:
    """`n` clients, none of them here: forward and backward are empty, the models live with the clients."""

    first = 0

    def __init__(self, n: int, has_head: bool):
        self.n, self.has_head = n, has_head

    def forward(self, batches: Batches) -> Smashed:
        if batches:
            raise ValueError(f"clients {sorted(batches)} compute on their own machines, not in the server's process")
        return Smashed([])

    def backward_and_step(self, objective: ClientObjective, smashed: Smashed, cut_grads: dict[int, torch.Tensor],
                          batches: Batches, nopeek: float = 0.0) -> None:
        """Nothing: each client steps on its own machine when its cut gradient (or its turn) arrives."""

    def _elsewhere(self, what: str) -> None:
        raise ValueError(f"{what}: the clients' models are on their own machines; ask them through the transport")

    def lower(self, i: int) -> nn.Module:
        self._elsewhere(f"client {i}'s lower model")

    def head(self, i: int) -> nn.Module | None:
        self._elsewhere(f"client {i}'s head")

    def load_lower(self, i: int, state: Weights) -> None:
        self._elsewhere(f"loading client {i}'s lower model")

    def assign(self, lower: Weights, head: Weights | None) -> None:
        self._elsewhere("assigning the clients' models")

    def average(self, weights: list[float], heads: bool) -> None:
        self._elsewhere("averaging the clients' models")

    def restart_optimizer(self, clients: list[int]) -> None:
        """Nothing here: a client restarts its optimizer on its own machine when the weights it loads say so (the
        Flower transport's `restart`)."""

    def identical(self) -> bool:
        self._elsewhere("comparing the clients' models")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing: each client keeps its own state on its machine."""
