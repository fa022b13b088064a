"""The looped client pool: one lower model (and head) per client, run one after another, with one torch optimizer
over them all. The stacked pool (stacked.py) computes the same thing (tests hold them to it)."""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from locfedmix.algorithms.fedavg import federated_average
from locfedmix.algorithms.objectives import client_loss
from locfedmix.algorithms.parts import ClientObjective
from locfedmix.config import Layout, OptimizerConfig
from locfedmix.engines.backends.memory import ActivationBudget, run_forward
from locfedmix.engines.backends.optimizers import build_optimizer
from locfedmix.engines.backends.pool import Pool
from locfedmix.engines.flow.interfaces import Batches
from locfedmix.models.dropout import own_private, set_key, shared


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


class LoopClients(Pool):
    """One module set per client, run one after another.

    One torch optimizer holds every client's parameters. Its state is per parameter, so stepping the parameters of
    the clients that took part in a step updates each exactly as its own optimizer would (the others keep their
    weights and step counts), in one fused call per step instead of one per client: at 100 × 16, `locfedmix`'s 100
    Adam calls took 20 ms of a 630 ms round. The call sees only those clients' parameters (`_step_params`), so a
    sequential step of one client among 1,000 does not scan the other 999. `seed`: the run's, from which each
    client's dropout key is derived (models/dropout.py)."""

    def __init__(self, lower: nn.Module, head: nn.Module | None, n: int, optimizer: OptimizerConfig,
                 budget: ActivationBudget, layout: Layout = Layout.AUTO, first: int = 0, total: int | None = None,
                 seed: int = 0):
        super().__init__(n, first, total, head is not None)
        self.budget = budget
        self.layout = loop_layout(lower, layout)
        self.clients = [LoopClient(copy.deepcopy(lower).to(memory_format=self.layout), copy.deepcopy(head))
                        for _ in range(n)]
        for i, client in enumerate(self.clients):  # each client's own dropout key (models/dropout.py)
            set_key(client.lower, seed, "lower", first + i)
            if client.head is not None:
                set_key(client.head, seed, "head", first + i)
        self.optimizer = build_optimizer([p for c in self.clients for p in c.parameters()], optimizer)

    def _forward(self, batches: Batches) -> list[tuple[list[int], torch.Tensor]]:
        ids = sorted(batches)
        recompute = self.budget.plan(batches, [[i] for i in ids])
        return [([i], run_forward(self.clients[i].lower, self._laid_out(batches[i][0]), recompute=again).unsqueeze(0))
                for i, again in zip(ids, recompute)]

    def _laid_out(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.layout) if x.dim() == 4 else x

    def _release_grads(self, clients: list[int]) -> None:
        for i in clients:
            for p in self.clients[i].parameters():
                p.grad = None

    def _local_losses(self, objective: ClientObjective, ids: list[int], raw: torch.Tensor, batches: Batches,
                      nopeek: float) -> torch.Tensor | None:
        (i,) = ids
        return client_loss(objective, self.clients[i].head, raw.squeeze(0), *batches[i], nopeek)

    def _step(self, clients: list[int]) -> None:
        self._step_params([p for i in clients for p in self.clients[i].parameters()])

    def _restart(self, clients: list[int]) -> None:
        """torch builds a parameter's state at its first step when it has none: dropping it is a rebuilt optimizer
        for that parameter (Adam's step count and moments, SGD's momentum buffer)."""
        for i in clients:
            for p in self.clients[i].parameters():
                self.optimizer.state.pop(p, None)

    def _step_params(self, params: list[nn.Parameter]) -> None:
        """One optimizer step over `params` alone: torch reads a group's parameter list afresh at every step and
        keys its state by parameter, so the group is pointed at them for the call and restored after."""
        group = self.optimizer.param_groups[0]
        everyone, group["params"] = group["params"], params
        try:
            self.optimizer.step()
        finally:
            group["params"] = everyone

    def lower(self, i: int) -> nn.Module:
        return self.clients[i - self.first].lower

    def head(self, i: int) -> nn.Module | None:
        return self.clients[i - self.first].head

    def load_lower(self, i: int, state: dict[str, torch.Tensor]) -> None:
        lower = self.clients[i - self.first].lower
        lower.load_state_dict(own_private(lower, state))

    def assign(self, lower: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None) -> None:
        """Every client takes these weights (the broadcast half of a FedAvg computed elsewhere)."""
        for client in self.clients:
            client.lower.load_state_dict(own_private(client.lower, lower))
            if head is not None:
                client.head.load_state_dict(own_private(client.head, head))

    def average(self, weights: list[float], heads: bool) -> None:
        """FedAvg with one weight per client of this pool (0 for those that did not report), the result in every
        client."""
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
        return all(all(torch.equal(first[k], v) for k, v in shared(c.lower.state_dict()).items())
                   for c in self.clients[1:])
