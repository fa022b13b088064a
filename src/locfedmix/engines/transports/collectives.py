"""The torch.distributed transport: c10d collectives that make the ranks of a run behave as one process (see
transports/distributed.py for the design). Each rank's pool holds its own block of clients; the server is
replicated, so every rank must see every upload of a step, and weights cross ranks for the relay and FedAvg."""

from dataclasses import replace

import torch
import torch.distributed as dist

from locfedmix.engines.flow.interfaces import Batches, ClientPool, Smashed, Weights
from locfedmix.engines.transports.distributed import Shard, flat_state, unflat_state
from locfedmix.errors import UserError


class Collectives:
    def __init__(self, shard: Shard, cut_shape: tuple[int, ...], device: torch.device):
        self.shard, self.cut_shape, self.device = shard, cut_shape, device

    def owns(self, i: int) -> bool:
        return self.shard.owns(i)

    def mine(self, by_client: dict) -> dict:
        return {i: v for i, v in by_client.items() if self.shard.owns(i)}

    def upload(self, smashed: Smashed, batches: Batches) -> tuple[Smashed, dict[int, torch.Tensor]]:
        """Each rank owning clients of this step broadcasts their smashed data (flattened, in id order); every
        rank's server replica thus sees every upload. Sizes are known everywhere from the step's plan, and so are
        the labels (every rank holds the data)."""
        mine, remote = smashed.per_client(), {}
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
        return replace(smashed, remote=remote), {i: y for i, (_, y) in batches.items()}

    def download(self, cut_grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return self.mine(cut_grads)

    def broadcast_lower(self, pool: ClientPool, i: int) -> Weights:
        """Client i's lower weights on every rank (the relay's model is kept by the replicated server)."""
        like = pool.lower(self.shard.start).state_dict()
        flat = torch.empty(flat_state(like).numel(), dtype=torch.float64, device=self.device)
        if self.owns(i):
            flat = flat_state(pool.lower(i).state_dict())
        dist.broadcast(flat, src=self.shard.owner(i))
        return unflat_state(flat, like)

    def deliver_lower(self, pool: ClientPool, i: int, weights: Weights) -> None:
        """Every rank holds the relay's model; the rank owning client i loads it."""
        if self.owns(i):
            pool.load_lower(i, weights)

    def average(self, pool: ClientPool, weights: list[float], heads: bool) -> None:
        """FedAvg: each rank averages its clients (δ-weighted), scales by its share of the total weight, and an
        all-reduce sums the shares into the global average that every client then takes. Integer buffers take the
        largest value among the reporters (algorithms.fedavg), through an all-reduce of their own."""
        mine = weights[self.shard.start:self.shard.start + self.shard.size]
        share = sum(mine) / sum(weights)  # 0 when none of this rank's clients reported: it adds nothing
        if share:
            pool.average(mine, heads)
        states = [pool.lower(self.shard.start).state_dict()]
        if heads and pool.has_head:
            states.append(pool.head(self.shard.start).state_dict())
        flat = torch.cat([flat_state(s) for s in states]) * share
        dist.all_reduce(flat)
        sizes = [flat_state(s).numel() for s in states]
        merged = [unflat_state(part, s) for part, s in zip(flat.split(sizes), states)]
        largest_integers(merged, reported=bool(share))
        pool.assign(merged[0], merged[1] if len(merged) > 1 else None)

    def identical(self, pool: ClientPool) -> bool:
        """All clients on all ranks hold the same lower model."""
        mine = flat_state(pool.lower(self.shard.start).state_dict())
        first = mine.clone()
        dist.broadcast(first, src=0)
        same = torch.tensor([int(pool.identical() and torch.equal(mine, first))], device=self.device)
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        return bool(same.item())

    def departed(self) -> set[int]:
        """Ranks do not lose clients: a rank that dies ends the run (torch.distributed)."""
        return set()

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values)
        return values

    def gather(self, pool_state: dict) -> dict:
        """Every rank's shard, gathered on rank 0 (the only rank that writes the checkpoint)."""
        shards = [None] * self.shard.world if self.shard.rank == 0 else None
        dist.gather_object(pool_state, shards, dst=0)
        return {"shards": shards}

    def scatter(self, state: dict) -> dict:
        """This rank's shard of a checkpoint's pool state."""
        if len(state["shards"]) != self.shard.world:
            raise UserError(f"the checkpoint was written by {len(state['shards'])} processes; resume it with "
                            f"--nproc_per_node={len(state['shards'])} (this run has {self.shard.world})")
        return state["shards"][self.shard.rank]


def largest_integers(states: list[dict[str, torch.Tensor]], reported: bool) -> None:
    """Each integer tensor of `states` (this rank's largest among its reporters) becomes the largest on any rank,
    in place; a rank none of whose clients reported offers the smallest integer, so it counts for nothing."""
    ints = [t for state in states for t in state.values() if not t.is_floating_point()]
    if not ints:
        return
    flat = torch.cat([t.reshape(-1).to(torch.int64) for t in ints])
    if not reported:
        flat.fill_(torch.iinfo(torch.int64).min)
    dist.all_reduce(flat, op=dist.ReduceOp.MAX)
    for t, part in zip(ints, flat.split([t.numel() for t in ints])):
        t.copy_(part.view_as(t))
