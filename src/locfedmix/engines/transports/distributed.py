"""Scale-out on torch.distributed: c10d process groups (gloo on CPU, NCCL on GPU) that torchrun starts.

The clients are sharded: rank r owns a contiguous block of client ids with their lower models, heads or decoders and
optimizers (the part that grows with N). The server is replicated, and every rank receives every upload of a step
(one broadcast per rank that owns clients in it) and runs the very same server step. We chose that over
all-reducing partial server gradients because each replica then makes the one server's update with the same
operations in the same order: SmashMix partners and GradMix groups are drawn over all clients as in one process,
the ledger and the simulated clock come out identical on every rank, and no reduction order makes replicas drift.
What crosses ranks: each step's smashed data, FedAvg as a weighted all-reduce, the relay's lower model from owner to
owner, evaluation sums, and checkpoint shards gathered to rank 0.
"""

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from locfedmix.config import Config
from locfedmix.errors import UserError


@dataclass(frozen=True)
class Shard:
    """Which clients this rank owns: ids [start, stop) of n, in blocks as even as they come."""

    rank: int
    world: int
    n: int

    def bounds(self, rank: int) -> tuple[int, int]:
        return rank * self.n // self.world, (rank + 1) * self.n // self.world

    @property
    def start(self) -> int:
        return self.bounds(self.rank)[0]

    @property
    def size(self) -> int:
        start, stop = self.bounds(self.rank)
        return stop - start

    def owner(self, i: int) -> int:
        return next(r for r in range(self.world) if self.bounds(r)[0] <= i < self.bounds(r)[1])

    def owns(self, i: int) -> bool:
        return self.owner(i) == self.rank


def join(config: Config, device: torch.device) -> tuple[Shard | None, torch.device]:
    """Join the process group torchrun announced in the environment (or use the one a launcher such as Ray Train
    already started), or run alone."""
    if not config.engine.distributed:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"launched as {os.environ['WORLD_SIZE']} processes but engine.distributed is false; "
                            "add --set engine.distributed=true")
        return None, device
    if not dist.is_initialized() and "MASTER_ADDR" not in os.environ:
        raise UserError("engine.distributed=true needs the environment torchrun sets up: "
                        "torchrun --nproc_per_node=K -m locfedmix run ...")
    if device.type == "cuda":
        device = local_gpu(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        pin_to_loopback()
        import_group_defaults()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=config.engine.timeout_s))
    if dist.get_world_size() > config.n_clients:
        raise UserError(f"{dist.get_world_size()} processes for n_clients={config.n_clients}; "
                        "each rank needs at least one client")
    return Shard(dist.get_rank(), dist.get_world_size(), config.n_clients), device


def import_group_defaults() -> None:
    """Import torch.distributed.nn.functional before the group exists. Its collectives take `group=group.WORLD`
    as a default argument, evaluated on import: imported later (something in torch does, lazily), they keep the
    default group alive after destroy_process_group, its gloo threads run into interpreter shutdown, and one of
    them aborts the process at exit ("terminate called without an active exception": 2 of 30 two-rank runs)."""
    import torch.distributed.nn.functional  # noqa: F401


def pin_to_loopback() -> None:
    """On one machine (every rank local), keep the collectives' own sockets (gloo's pairs, NCCL's bootstrap) on the
    loopback interface unless the user chose one: c10d has no authentication (SECURITY.md, section 5). torchrun's
    stores are not ours to bind; see there."""
    if os.environ.get("LOCAL_WORLD_SIZE", "0") != os.environ.get("WORLD_SIZE"):
        return
    names = {name for _, name in socket.if_nameindex()}
    loopback = next((name for name in ("lo", "lo0") if name in names), None)  # Linux, BSD/macOS
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if loopback and variable not in os.environ:
            os.environ[variable] = loopback


def local_gpu(local_rank: int) -> torch.device:
    """One GPU per rank on each machine (NCCL refuses two ranks on one GPU), so a machine needs as many GPUs as
    torchrun starts processes there."""
    gpus = torch.cuda.device_count()
    if local_rank >= gpus:
        raise UserError(f"local rank {local_rank} needs GPU {local_rank} but this machine has {gpus}; start at most "
                        f"{gpus} process(es) per machine (--nproc_per_node) or set engine.device=cpu")
    return torch.device("cuda", local_rank)


def is_primary() -> bool:
    """Rank 0 of a distributed run (as torchrun announced it, before the group is joined), or the only process:
    the one that writes files and prints."""
    return rank() == 0


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def lost_peer(err: BaseException) -> bool:
    """Whether an exception is a collective failing because another rank died, hung past the timeout or became
    unreachable (gloo reports these as RuntimeErrors that name its transport)."""
    text = str(err)
    return dist.is_initialized() and (isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text)


def leave(together: bool = False) -> None:
    """Tear the process group down; `together` (a run that ended well on every rank): after a barrier, so that no
    rank tears its gloo group down while another still uses it (see also import_group_defaults)."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def agree(error: str | None) -> None:
    """Make rank 0's verdict (an error message, or None) everybody's: all ranks raise it, or none does."""
    if dist.is_initialized():
        verdict = [error]
        dist.broadcast_object_list(verdict, src=0)
        error = verdict[0]
    if error is not None:
        raise UserError(error)


def flat_state(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.float64) for t in state.values() if t.is_floating_point()])


def unflat_state(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state shaped like `like` whose floating tensors come from `flat` (other tensors kept)."""
    out, offset = {}, 0
    for k, t in like.items():
        if t.is_floating_point():
            out[k] = flat[offset:offset + t.numel()].view_as(t).to(t.dtype)
            offset += t.numel()
        else:
            out[k] = t.clone()
    return out
