"""Client pools: where the clients' lower models (and heads) live and how a step's client work runs.

The loop pool keeps one module and one torch optimizer per client; the stacked pool (vectorized.py) keeps all
clients' weights stacked along a client dimension. Both compute the same thing (tests hold them to it).
"""

import copy
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from locfedmix.algorithms.fedavg import federated_average
from locfedmix.algorithms.objectives import client_loss
from locfedmix.algorithms.parts import ClientObjective
from locfedmix.config import Layout, OptimizerConfig
from locfedmix.engines.memory import ActivationBudget, run_forward
from locfedmix.engines.state import build_optimizer

Batches = dict[int, tuple[torch.Tensor, torch.Tensor]]  # client id -> (x, y) of its mini-batch


@dataclass
class Smashed:
    """A step's smashed data: groups of this process's clients whose outputs are stacked [K, b, ...] (singletons
    in the loop), and, in a distributed run, the uploads of the clients other ranks own (no graph here).

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
    gradient in, twice per client and step in the loop (its upload and its local loss)."""
    return list(zip(ids, [out.squeeze(0)] if len(ids) == 1 else out.unbind(0)))


class ClientPool(Protocol):
    n: int
    has_head: bool

    def forward(self, batches: Batches) -> Smashed: ...

    def backward_and_step(self, objective: ClientObjective, smashed: Smashed,
                          cut_grads: dict[int, torch.Tensor], batches: Batches, nopeek: float = 0.0) -> None: ...

    def lower(self, i: int) -> nn.Module: ...

    def load_lower(self, i: int, state: dict[str, torch.Tensor]) -> None: ...

    def lower_state(self, i: int) -> dict[str, torch.Tensor]: ...

    def average(self, weights: list[float], heads: bool) -> None: ...

    def identical(self) -> bool: ...

    def owns(self, i: int) -> bool: ...

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class InProcess:
    """A pool holding every client in this process: it owns them all and has nothing to reduce across ranks."""

    def owns(self, i: int) -> bool:
        return True

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def lower_state(self, i: int) -> dict[str, torch.Tensor]:
        """A copy of client i's lower weights, as it would send them."""
        return {k: v.detach().clone() for k, v in self.lower(i).state_dict().items()}


@dataclass
class LoopClient:
    lower: nn.Module
    head: nn.Module | None

    def parameters(self) -> list[nn.Parameter]:
        return list(self.lower.parameters()) + (list(self.head.parameters()) if self.head is not None else [])


def loop_layout(lower: nn.Module, layout: Layout) -> torch.memory_format:
    """`auto`: channels-last for convolutional lower models on the CPU, where max-pooling's NCHW kernel is slow
    (1.1 ms against 0.08 ms for 16 maps of 32×32×32): psl at 100 × 16 ran 3,600 → 4,400 samples/s. Values equal to
    float rounding; Adam's first steps and BatchNorm on tiny batches amplify those into visible differences, so the
    pools' equality tests compare in one layout."""
    if layout is Layout.AUTO:
        params = list(lower.parameters())
        on_cpu_conv = any(p.dim() == 4 for p in params) and params[0].device.type == "cpu"
        layout = Layout.CHANNELS_LAST if on_cpu_conv else Layout.CONTIGUOUS
    return torch.channels_last if layout is Layout.CHANNELS_LAST else torch.contiguous_format


class LoopClients(InProcess):
    """One module set per client, run one after another.

    One torch optimizer holds every client's parameters. Its state is per parameter, so stepping the parameters of
    the clients that took part in a step updates each exactly as its own optimizer would (the others keep their
    weights and step counts), in one fused call per step instead of one per client: at 100 × 16, `locfedmix`'s 100
    Adam calls took 20 ms of a 630 ms round. The call sees only those clients' parameters (`_step`), so a
    sequential step of one client among 1,000 does not scan the other 999."""

    def __init__(self, lower: nn.Module, head: nn.Module | None, n: int, optimizer: OptimizerConfig,
                 budget: ActivationBudget, layout: Layout = Layout.AUTO):
        self.n, self.has_head, self.budget = n, head is not None, budget
        self.layout = loop_layout(lower, layout)
        self.clients = [LoopClient(copy.deepcopy(lower).to(memory_format=self.layout), copy.deepcopy(head))
                        for _ in range(n)]
        self.optimizer = build_optimizer([p for c in self.clients for p in c.parameters()], optimizer)

    def forward(self, batches: Batches) -> Smashed:
        ids = sorted(batches)
        recompute = self.budget.plan(batches, [[i] for i in ids])
        return Smashed([([i], run_forward(self.clients[i].lower, self._laid_out(batches[i][0]),
                                          recompute=again).unsqueeze(0)) for i, again in zip(ids, recompute)])

    def _laid_out(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.layout) if x.dim() == 4 else x

    def backward_and_step(self, objective: ClientObjective, smashed: Smashed,
                          cut_grads: dict[int, torch.Tensor], batches: Batches, nopeek: float = 0.0) -> None:
        """Back-propagate each client's cut gradient (if any) into what it uploaded and its local loss (if any) from
        its raw smashed data, then step."""
        raw = smashed.raw_per_client()
        uploads = smashed.per_client()
        stepping = [p for i in uploads for p in self.clients[i].parameters()]
        for p in stepping:
            p.grad = None
        for i, s in uploads.items():
            client = self.clients[i]
            roots, grads = [], []
            if i in cut_grads:
                roots.append(s)
                grads.append(cut_grads[i])
            local = client_loss(objective, client.head, raw[i], *batches[i], nopeek)
            if local is not None:
                roots.append(local)
                grads.append(torch.ones_like(local))
            if roots:
                torch.autograd.backward(roots, grads)
        self._step(stepping)

    def _step(self, params: list[nn.Parameter]) -> None:
        """One optimizer step over `params` alone: torch reads a group's parameter list afresh at every step and
        keys its state by parameter, so the group is pointed at them for the call and restored after."""
        group = self.optimizer.param_groups[0]
        everyone, group["params"] = group["params"], params
        try:
            self.optimizer.step()
        finally:
            group["params"] = everyone

    def lower(self, i: int) -> nn.Module:
        return self.clients[i].lower

    def head(self, i: int) -> nn.Module | None:
        return self.clients[i].head

    def load_lower(self, i: int, state: dict[str, torch.Tensor]) -> None:
        self.clients[i].lower.load_state_dict(state)

    def assign(self, lower: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None) -> None:
        """Every client takes these weights (the broadcast half of a FedAvg computed elsewhere)."""
        for client in self.clients:
            client.lower.load_state_dict(lower)
            if head is not None:
                client.head.load_state_dict(head)

    def average(self, weights: list[float], heads: bool) -> None:
        """FedAvg with one weight per client (0 for those that did not report), the result in every client."""
        federated_average([c.lower for c in self.clients], weights)
        if heads and self.has_head:
            federated_average([c.head for c in self.clients], weights)

    def state_dict(self) -> dict:
        return {"clients": [{"lower": c.lower.state_dict(), "head": c.head.state_dict() if c.head else None}
                            for c in self.clients], "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for client, saved in zip(self.clients, state["clients"]):
            client.lower.load_state_dict(saved["lower"])
            if client.head is not None:
                client.head.load_state_dict(saved["head"])
        self.optimizer.load_state_dict(state["optimizer"] if "optimizer" in state else self._merged(state["clients"]))

    def _merged(self, saved: list[dict]) -> dict:
        """The one optimizer's state from a checkpoint written when each client had its own optimizer (the loop
        pool's layout before it shared one): the clients' per-parameter states, renumbered in this pool's order, so
        such runs still resume."""
        states, offset = {}, 0
        for client, own in zip(self.clients, saved):
            states |= {offset + k: v for k, v in own["optimizer"]["state"].items()}
            offset += len(client.parameters())
        return {"state": states, "param_groups": [{**saved[0]["optimizer"]["param_groups"][0],
                                                   "params": list(range(offset))}]}

    def identical(self) -> bool:
        first = self.clients[0].lower.state_dict()
        return all(all(torch.equal(first[k], v) for k, v in c.lower.state_dict().items()) for c in self.clients[1:])
