"""The stacked client pool: every client's lower model (and head) stored along a leading client dimension and run
for all clients of a step in one torch.func.vmap call per group of equal batch size, chunked to bound memory."""

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

from locfedmix.algorithms.objectives import client_loss
from locfedmix.algorithms.parts import ClientObjective
from locfedmix.config import OptimizerConfig
from locfedmix.engines.backends.memory import ActivationBudget, run_forward
from locfedmix.engines.backends.pool import Pool
from locfedmix.engines.backends.stacked_layers import stacked_runner
from locfedmix.engines.backends.stacked_optim import StackedOptimizer
from locfedmix.engines.flow.interfaces import Batches
from locfedmix.models.dropout import KEY, PRIVATE, key_for


class StackedModule:
    """One module's parameters and buffers for N clients, stacked [N, ...]; `template` only lends the structure,
    which the clients' forward runs in the form fastest under vmap (backends/stacked_layers.py)."""

    def __init__(self, template: nn.Module, n: int):
        stack = lambda t: t.detach().unsqueeze(0).repeat(n, *[1] * t.dim()).clone()
        self.params = {k: stack(v).requires_grad_(True) for k, v in template.named_parameters()}
        self.buffers = {k: stack(v) for k, v in template.named_buffers()}
        self.device = next(iter(self.params.values())).device
        self.template = copy.deepcopy(template)
        self.runner = stacked_runner(template, self.device)
        self.lent: list[tuple[list[int], dict[str, torch.Tensor]]] = []  # rows handed out since take_grads
        self.grad_buffers: dict[str, torch.Tensor] = {}

    def run(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        """The template over each client's row of `params` / `buffers` and of `x`, in one vmap call."""
        one = lambda p, b, inputs: functional_call(self.runner, (p, b), (inputs,))
        return vmap(one, randomness="different")(params, buffers, x)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.params, **self.buffers}

    def rows(self, ids: list[int]) -> tuple[dict, dict]:
        """The clients' parameters, as autograd leaves of their own whose gradients `take_grads` writes into the
        stack's `.grad` (through a view of the stack, each group's backward would build a zero-filled gradient the
        size of the whole stack: 13 % of a 1,000 × 1 round on the CPU); and their buffers, views for a contiguous run
        of ids, gathered copies otherwise."""
        if ids == list(range(ids[0], ids[-1] + 1)):
            pick = lambda t: t[ids[0]:ids[-1] + 1]
        else:
            index = torch.tensor(ids, device=self.device)
            pick = lambda t: t.index_select(0, index)
        params = {k: pick(v).detach().requires_grad_(torch.is_grad_enabled()) for k, v in self.params.items()}
        if torch.is_grad_enabled():
            self.lent.append((ids, params))
        return params, {k: pick(v) for k, v in self.buffers.items()}

    @torch.no_grad()
    def take_grads(self) -> None:
        """Each stacked parameter's `.grad` from the rows lent since the last call (zero for a row lent without
        receiving one; None when no row received one), then forget them. The gradients land in one buffer per
        parameter kept from step to step: a fresh one (75 MB for the CNN's second convolution at 1,000 clients) is
        served by mmap and faulted in page by page every step, 18,000 page faults a 1,000 × 1 round on the CPU."""
        for k, p in self.params.items():
            got = [(ids, leaves[k].grad) for ids, leaves in self.lent if leaves[k].grad is not None]
            p.grad = None
            if got:
                covered = sum(len(ids) for ids, _ in got) == len(p) == sum(len(ids) for ids, _ in self.lent)
                if k not in self.grad_buffers:
                    self.grad_buffers[k] = torch.empty_like(p)
                buffer = self.grad_buffers[k]
                if not covered:
                    buffer.zero_()
                for ids, grad in got:
                    buffer.index_copy_(0, torch.tensor(ids, device=self.device), grad)
                p.grad = buffer
        self.lent.clear()

    def __call__(self, ids: list[int], x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """The clients' forward; with `recompute`, its activations are recomputed in backward (backends/memory.py)."""
        params, buffers = self.rows(ids)
        out = run_forward(self.run, params, buffers, x, recompute=recompute)
        if buffers and ids != list(range(ids[0], ids[-1] + 1)):  # BatchNorm statistics updated on a gathered copy
            with torch.no_grad():
                for k, v in buffers.items():
                    self.buffers[k].index_copy_(0, torch.tensor(ids, device=self.device), v)
        return out

    def module(self, i: int) -> nn.Module:
        """Client i's weights in a stand-alone module (for evaluation and model exchange)."""
        module = copy.deepcopy(self.template)
        module.load_state_dict({k: v[i].detach() for k, v in self.tensors().items()}, strict=False)
        return module

    @torch.no_grad()
    def average(self, weights: list[float]) -> None:
        """FedAvg as a weighted mean over the client dimension (weight 0 for a client that did not report),
        broadcast back to every client; one vector-matrix product per tensor, without the [N, ...] temporary of
        weights × stack (75 MB for the CNN's second convolution at 1,000 clients). An integer buffer takes the
        largest value among the clients that report, as algorithms.fedavg.average_states does; a keyed dropout's
        key and counter stay each client's own (models/dropout.py)."""
        reported = torch.tensor([i for i, w in enumerate(weights) if w], device=self.device)
        for k, t in self.tensors().items():
            if k in PRIVATE:
                continue
            if t.is_floating_point():
                w = torch.tensor(weights, dtype=t.dtype, device=t.device) / sum(weights)
                t.copy_((w @ t.reshape(len(t), -1)).view(1, *t.shape[1:]).expand_as(t))
            else:
                t.copy_(t.index_select(0, reported).amax(dim=0, keepdim=True).expand_as(t))

    @torch.no_grad()
    def set_rows(self, state: dict[str, torch.Tensor], row: int | None = None) -> None:
        """Client `row` (every client when None) takes the weights in `state` (a single module's state dict); each
        keeps its own dropout key and counter."""
        for k, t in self.tensors().items():
            if k not in PRIVATE:
                (t if row is None else t[row]).copy_(state[k])

    @torch.no_grad()
    def set_keys(self, seed: int, purpose: str, first: int) -> None:
        """Row i's dropout key is client first + i's (nothing to do without keyed dropout)."""
        if KEY in self.buffers:
            keys = self.buffers[KEY]
            keys.copy_(torch.stack([key_for(seed, purpose, first + i) for i in range(len(keys))]))

    def identical(self) -> bool:
        return all(bool((t == t[:1]).all()) for k, t in self.tensors().items() if k not in PRIVATE)


def channels_last_maps(t: torch.Tensor) -> torch.Tensor:
    """Stacked maps [clients, batch, C, H, W] stored with C innermost: vmap then hands the decoder a channels-last
    batch, which its first layer (models.auxiliary.UpsampledConv) reads as [.., H, W, C] without a copy. Same values;
    `locfedmix` at 1000 × 1 ran 1,300 against 1,090 samples/s on the CPU with it. Only for the decoder: LocSplitFed's
    pooling head falls back to a slow batching rule on this layout. Only on the CPU, where it was measured."""
    if t.dim() != 5 or t.device.type != "cpu":
        return t
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class StackedClients(Pool):
    """All clients' models stacked; a step's client work is a few vmap calls instead of a loop over clients.
    `decoder`: the head reconstructs the input, and gets its maps channels-last (`channels_last_maps`). `seed`: the
    run's, from which each client's dropout key is derived (models/dropout.py)."""

    def __init__(self, lower: nn.Module, head: nn.Module | None, n: int, optimizer: OptimizerConfig, chunk: int,
                 budget: ActivationBudget, decoder: bool = False, first: int = 0, total: int | None = None,
                 seed: int = 0):
        super().__init__(n, first, total, head is not None)
        self.chunk, self.budget, self.decoder = chunk, budget, decoder
        self.lowers = StackedModule(lower, n)
        self.heads = StackedModule(head, n) if head is not None else None
        self.lowers.set_keys(seed, "lower", first)
        if self.heads is not None:
            self.heads.set_keys(seed, "head", first)
        params = list(self.lowers.params.values()) + (list(self.heads.params.values()) if self.heads else [])
        self.optimizer = StackedOptimizer(params, n, optimizer)

    def _groups(self, batches: Batches) -> list[list[int]]:
        """Clients with equal batch sizes, in id order, in chunks of at most `chunk` clients (fewer where a group's
        activations would exceed the activation budget)."""
        self.budget.exceeded(batches)  # measures the models once
        by_size: dict[int, list[int]] = {}
        for i in sorted(batches):
            by_size.setdefault(len(batches[i][1]), []).append(i)
        groups = []
        for size, ids in by_size.items():
            chunk = min(self.chunk, self.budget.group_cap(size) or self.chunk)
            groups += [ids[k:k + chunk] for k in range(0, len(ids), chunk)]
        return groups

    def _forward(self, batches: Batches) -> list[tuple[list[int], torch.Tensor]]:
        for stack in self._stacks():
            stack.lent.clear()  # rows lent to a forward whose backward never came
        groups = self._groups(batches)
        recompute = self.budget.plan(batches, groups)
        stacked = [(ids, torch.stack([batches[i][0] for i in ids])) for ids in groups]
        # Uploads in the standard layout: the lower model may end channels-last (backends/stacked_layers.py), and
        # the server's elementwise work (SmashMix, the cut gradients) took up to 15x longer on such maps on the CPU.
        return [(ids, self.lowers(ids, x, recompute=again).contiguous()) for (ids, x), again in zip(stacked, recompute)]

    def _local_losses(self, objective: ClientObjective, ids: list[int], raw: torch.Tensor, batches: Batches,
                      nopeek: float) -> torch.Tensor | None:
        """Σ over the group of each client's local loss (separate weights, so the sum keeps them apart)."""
        if self.heads is None and not nopeek:
            return None
        params, buffers = self.heads.rows(ids) if self.heads is not None else ({}, {})
        template = self.heads.runner if self.heads is not None else None

        def one_client(p, b, smashed, x, y):
            head = (lambda s: functional_call(template, (p, b), (s,))) if template is not None else None
            return client_loss(objective, head, smashed, x, y, nopeek)

        x = torch.stack([batches[i][0] for i in ids])
        y = torch.stack([batches[i][1] for i in ids])
        maps = channels_last_maps(raw) if self.decoder else raw
        return vmap(one_client, randomness="different")(params, buffers, maps, x, y).sum()

    def _step(self, clients: list[int]) -> None:
        for stack in self._stacks():
            stack.take_grads()
        self.optimizer.step(torch.tensor(clients, device=self.lowers.device))

    def _restart(self, clients: list[int]) -> None:
        self.optimizer.restart(torch.tensor(clients, device=self.lowers.device))

    def _stacks(self) -> list[StackedModule]:
        return [self.lowers] + ([self.heads] if self.heads else [])

    def lower(self, i: int) -> nn.Module:
        return self.lowers.module(i - self.first)

    def head(self, i: int) -> nn.Module | None:
        return self.heads.module(i - self.first) if self.heads else None

    def load_lower(self, i: int, state: dict[str, torch.Tensor]) -> None:
        self.lowers.set_rows(state, i - self.first)

    def assign(self, lower: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None) -> None:
        """Every client takes these weights (the broadcast half of a FedAvg computed elsewhere)."""
        self.lowers.set_rows(lower)
        if head is not None:
            self.heads.set_rows(head)

    def average(self, weights: list[float], heads: bool) -> None:
        self.lowers.average(weights)
        if heads and self.heads is not None:
            self.heads.average(weights)

    def identical(self) -> bool:
        return self.lowers.identical()

    def state_dict(self) -> dict:
        stacks = {"lower": self.lowers} | ({"head": self.heads} if self.heads else {})
        return {"tensors": {name: {k: v.detach().clone() for k, v in stack.tensors().items()}
                            for name, stack in stacks.items()},
                "optimizer": self.optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        stacks = {"lower": self.lowers} | ({"head": self.heads} if self.heads else {})
        for name, stack in stacks.items():
            for k, v in stack.tensors().items():
                v.copy_(state["tensors"][name][k])
        self.optimizer.load_state_dict(state["optimizer"])
