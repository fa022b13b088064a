"""The client pool of a distributed run: a loop or stacked pool of this rank's clients behind global client ids,
with the collectives that make the ranks together behave as one process (see distributed.py for the design)."""

import torch
import torch.distributed as dist
from torch import nn

from locfedmix.algorithms.parts import ClientObjective
from locfedmix.engines.clients import Batches, ClientPool, Smashed
from locfedmix.engines.distributed import Shard, flat_state, unflat_state
from locfedmix.errors import UserError


class ShardedClients:
    """The ClientPool of one rank: its own clients in `local` (indexed from 0), every other client reached through
    collectives. Global ids go in and come out, so the step, FedAvg and evaluation code is the one-process code."""

    def __init__(self, local: ClientPool, shard: Shard, cut_shape: tuple[int, ...], device: torch.device):
        self.local, self.shard, self.cut_shape, self.device = local, shard, cut_shape, device
        self.n, self.has_head = shard.n, local.has_head

    def _mine(self, by_client: dict) -> dict:
        """The entries of this rank's clients, re-keyed by local index."""
        return {i - self.shard.start: v for i, v in by_client.items() if self.shard.owns(i)}

    def forward(self, batches: Batches) -> Smashed:
        mine = self.local.forward(self._mine(batches))
        groups = [([i + self.shard.start for i in ids], out) for ids, out in mine.groups]
        return Smashed(groups, self._exchange(Smashed(groups).per_client(), batches))

    def _exchange(self, mine: dict[int, torch.Tensor], batches: Batches) -> dict[int, torch.Tensor]:
        """Each rank owning clients of this step broadcasts their smashed data (flattened, in id order); every
        rank's server replica thus sees every upload. Sizes are known everywhere from the step's plan."""
        remote = {}
        for rank in range(self.shard.world):
            ids = [i for i in sorted(batches) if self.shard.owner(i) == rank]
            if not ids:
                continue
            shapes = [(len(batches[i][1]), *self.cut_shape) for i in ids]
            if rank == self.shard.rank:
                buffer = torch.cat([mine[i].detach().reshape(-1) for i in ids])
            else:
                buffer = torch.empty(sum(torch.Size(s).numel() for s in shapes), device=self.device)
            dist.broadcast(buffer, src=rank)
            if rank != self.shard.rank:
                parts = buffer.split([torch.Size(s).numel() for s in shapes])
                remote |= {i: part.view(s) for i, part, s in zip(ids, parts, shapes)}
        return remote

    def backward_and_step(self, objective: ClientObjective, smashed: Smashed,
                          cut_grads: dict[int, torch.Tensor], batches: Batches, nopeek: float = 0.0) -> None:
        local = Smashed([([i - self.shard.start for i in ids], out) for ids, out in smashed.groups], raw=smashed.raw)
        self.local.backward_and_step(objective, local, self._mine(cut_grads), self._mine(batches), nopeek)

    def owns(self, i: int) -> bool:
        return self.shard.owns(i)

    def lower(self, i: int) -> nn.Module:
        return self.local.lower(i - self.shard.start)

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values)
        return values

    def lower_state(self, i: int) -> dict[str, torch.Tensor]:
        """Client i's lower weights on every rank (the relay's model is kept by the replicated server)."""
        like = self.local.lower(0).state_dict()
        flat = torch.empty(flat_state(like).numel(), dtype=torch.float64, device=self.device)
        if self.owns(i):
            flat = flat_state(self.lower(i).state_dict())
        dist.broadcast(flat, src=self.shard.owner(i))
        return unflat_state(flat, like)

    def load_lower(self, i: int, state: dict[str, torch.Tensor]) -> None:
        if self.owns(i):
            self.local.load_lower(i - self.shard.start, state)

    def average(self, weights: list[float], heads: bool) -> None:
        """FedAvg: each rank averages its clients (δ-weighted), scales by its share of the total weight, and an
        all-reduce sums the shares into the global average that every client then takes."""
        mine = weights[self.shard.start:self.shard.start + self.shard.size]
        share = sum(mine) / sum(weights)  # 0 when none of this rank's clients reported: it adds nothing
        if share:
            self.local.average(mine, heads)
        states = [self.local.lower(0).state_dict()]
        if heads and self.has_head:
            states.append(self.local.head(0).state_dict())
        flat = torch.cat([flat_state(s) for s in states]) * share
        dist.all_reduce(flat)
        sizes = [flat_state(s).numel() for s in states]
        merged = [unflat_state(part, s) for part, s in zip(flat.split(sizes), states)]
        self.local.assign(merged[0], merged[1] if len(merged) > 1 else None)

    def identical(self) -> bool:
        """All clients on all ranks hold the same lower model."""
        mine = flat_state(self.local.lower(0).state_dict())
        first = mine.clone()
        dist.broadcast(first, src=0)
        same = torch.tensor([int(self.local.identical() and torch.equal(mine, first))], device=self.device)
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        return bool(same.item())

    def state_dict(self) -> dict:
        """Every rank's shard, gathered on rank 0 (the only rank that writes the checkpoint)."""
        shards = [None] * self.shard.world if self.shard.rank == 0 else None
        dist.gather_object(self.local.state_dict(), shards, dst=0)
        return {"shards": shards}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shards"]) != self.shard.world:
            raise UserError(f"the checkpoint was written by {len(state['shards'])} processes; resume it with "
                            f"--nproc_per_node={len(state['shards'])} (this run has {self.shard.world})")
        self.local.load_state_dict(state["shards"][self.shard.rank])
