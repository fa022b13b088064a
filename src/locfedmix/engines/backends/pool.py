"""What both client pools share: the federation's client ids in and out, and the client half of a step, written
once. A pool holds `count` clients from id `first` on (all of them in one process; a rank's block in a distributed
run); its own storage is indexed from 0."""

from abc import ABC, abstractmethod

import torch

from locfedmix.algorithms.parts import ClientObjective
from locfedmix.engines.flow.interfaces import Batches, Smashed


class Pool(ABC):
    """The looped and the stacked pool differ in how a group of clients runs forward, computes its local losses and
    steps its optimizer; `forward` and `backward_and_step` are the same for both."""

    def __init__(self, count: int, first: int, total: int | None, has_head: bool):
        self.count, self.first, self.n, self.has_head = count, first, total or count, has_head

    def local(self, by_client: dict) -> dict:
        """The entries of this pool's clients, keyed by its own index."""
        return {i - self.first: v for i, v in by_client.items() if 0 <= i - self.first < self.count}

    def forward(self, batches: Batches) -> Smashed:
        """The lower models' outputs for this pool's clients in `batches`, group by group."""
        groups = self._forward(self.local(batches))
        return Smashed([([i + self.first for i in ids], out) for ids, out in groups])

    def backward_and_step(self, objective: ClientObjective, smashed: Smashed,
                          cut_grads: dict[int, torch.Tensor], batches: Batches, nopeek: float = 0.0) -> None:
        """The client half of a step: group by group (so that only one group's head graph, and recomputed forward,
        is alive), back-propagate the cut gradients (if any) into what was uploaded and the local loss (if any) from
        the raw smashed data; then step the optimizer for the clients that took part."""
        mine = self.local(batches)
        stepping = sorted(i - self.first for ids, _ in smashed.groups for i in ids)
        self._release_grads(stepping)
        for (ids, out), raw in zip(smashed.groups, smashed.raw_groups()):
            roots, grads = [], []
            if ids[0] in cut_grads:
                roots.append(out)
                grads.append(group_grads([cut_grads[i] for i in ids]))
            local = self._local_losses(objective, [i - self.first for i in ids], raw, mine, nopeek)
            if local is not None:
                roots.append(local)
                grads.append(torch.ones_like(local))
            if roots:
                torch.autograd.backward(roots, grads)
        self._step(stepping)

    def restart_optimizer(self, clients: list[int]) -> None:
        """These clients' optimizer state (moments, step counts) as a freshly built optimizer's; ids not held here
        are ignored."""
        own = sorted(self.local(dict.fromkeys(clients)))
        if own:
            self._restart(own)

    @abstractmethod
    def _forward(self, batches: Batches) -> list[tuple[list[int], torch.Tensor]]:
        """(own indices, their stacked outputs [K, b, ...]) for each group of clients run together."""

    def _release_grads(self, clients: list[int]) -> None:
        """Before a step's backward: forget the gradients of the clients about to receive new ones."""

    @abstractmethod
    def _local_losses(self, objective: ClientObjective, ids: list[int], raw: torch.Tensor, batches: Batches,
                      nopeek: float) -> torch.Tensor | None:
        """Σ over the group (own indices `ids`, raw smashed data `raw`) of each client's local loss, or None."""

    @abstractmethod
    def _step(self, clients: list[int]) -> None:
        """One optimizer step for these clients (own indices, sorted) from their accumulated gradients."""

    @abstractmethod
    def _restart(self, clients: list[int]) -> None:
        """Forget the optimizer state of these clients (own indices, sorted)."""


def group_grads(grads: list[torch.Tensor]) -> torch.Tensor:
    """A group's cut gradients [K, b, ...]; one client's as a view."""
    return grads[0].unsqueeze(0) if len(grads) == 1 else torch.stack(grads)
