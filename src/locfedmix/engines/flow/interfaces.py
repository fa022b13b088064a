"""What the flow needs from the other two rooms, and what crosses between them.

A client pool (backends/) holds clients' lower models (and heads) and runs the client half of a step; a transport
(transports/) moves a step's uploads to the server and its cut gradients back, and model weights for the relay and
FedAvg. Client ids are the federation's ids everywhere; a pool holds some of them (all, in one process)."""

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from locfedmix.algorithms.parts import ClientObjective

Batches = dict[int, tuple[torch.Tensor, torch.Tensor]]  # client id -> (x, y) of its mini-batch
Weights = dict[str, torch.Tensor]  # one module's state dict


@dataclass
class Smashed:
    """A step's smashed data: groups of this process's clients whose outputs are stacked [K, b, ...] (singletons
    in the loop), and, once uploaded through a transport, the uploads of clients held elsewhere (no graph here).

    `groups` hold what is uploaded; where a defence changed it (privacy/defences.py), `raw` holds each group's
    lower-model output, which the client's own local losses use."""

    groups: list[tuple[list[int], torch.Tensor]]
    remote: dict[int, torch.Tensor] = field(default_factory=dict)
    raw: list[torch.Tensor] | None = None

    def per_client(self) -> dict[int, torch.Tensor]:
        """Every client's upload in client-id order: the server's batch has the same layout whichever pool, and
        on whichever rank, produced it (distributed server replicas stay bit-identical)."""
        mine = {i: row for ids, out in self.groups for i, row in rows(ids, out)}
        return dict(sorted((mine | self.remote).items()))

    def raw_groups(self) -> list[torch.Tensor]:
        return self.raw if self.raw is not None else [out for _, out in self.groups]

    def raw_per_client(self) -> dict[int, torch.Tensor]:
        return {i: row for (ids, _), out in zip(self.groups, self.raw_groups()) for i, row in rows(ids, out)}


def rows(ids: list[int], out: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Each client's rows of a group's stacked [K, b, ...] output. A one-client group (the loop pool's) gives its
    row by squeezing, whose backward is a view as well: indexing's backward zero-fills the group and copies the
    gradient in."""
    return list(zip(ids, [out.squeeze(0)] if len(ids) == 1 else out.unbind(0)))


class ClientPool(Protocol):
    """Clients of this process: `n` is the federation's client count, `first` the first id held here."""

    n: int
    first: int
    has_head: bool

    def forward(self, batches: Batches) -> Smashed: ...

    def backward_and_step(self, objective: ClientObjective, smashed: Smashed,
                          cut_grads: dict[int, torch.Tensor], batches: Batches, nopeek: float = 0.0) -> None: ...

    def lower(self, i: int) -> nn.Module: ...

    def head(self, i: int) -> nn.Module | None: ...

    def load_lower(self, i: int, state: Weights) -> None: ...

    def assign(self, lower: Weights, head: Weights | None) -> None: ...

    def average(self, weights: list[float], heads: bool) -> None: ...

    def restart_optimizer(self, clients: list[int]) -> None: ...

    def identical(self) -> bool: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Transport(Protocol):
    """How messages travel. The server side needs only what `upload` delivers (every upload of the step, with the
    labels) and the weights; the clients only what `download` delivers (their cut gradients); FedAvg and the relay
    move weights through `average`, `broadcast_lower` (None where the client is gone: a deployment's) and
    `deliver_lower`; `departed` names the clients that stopped answering since it was last asked (a deployment's);
    `all_reduce` sums evaluation results over processes."""

    def owns(self, i: int) -> bool: ...

    def mine(self, by_client: dict) -> dict: ...

    def upload(self, smashed: Smashed, batches: Batches) -> tuple[Smashed, dict[int, torch.Tensor]]: ...

    def download(self, cut_grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]: ...

    def broadcast_lower(self, pool: ClientPool, i: int) -> Weights | None: ...

    def deliver_lower(self, pool: ClientPool, i: int, weights: Weights) -> None: ...

    def average(self, pool: ClientPool, weights: list[float], heads: bool) -> None: ...

    def identical(self, pool: ClientPool) -> bool: ...

    def departed(self) -> set[int]: ...

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor: ...

    def gather(self, pool_state: dict) -> dict: ...

    def scatter(self, state: dict) -> dict: ...
