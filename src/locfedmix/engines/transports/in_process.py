"""The in-process transport: every client and the server share one process, so a message is the tensor itself.
The ledger still charges each message by the bytes it would take on a network (latency/ledger.py)."""

import torch

from locfedmix.engines.flow.interfaces import Batches, ClientPool, Smashed, Weights


class OneServerProcess:
    """What a transport with the server in one process does alike (in one process, or a deployment's server):
    evaluation sums need no reduction, and a checkpoint's pool state is this process's own."""

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def gather(self, pool_state: dict) -> dict:
        return pool_state

    def scatter(self, state: dict) -> dict:
        return state


class InProcess(OneServerProcess):
    def owns(self, i: int) -> bool:
        return True

    def mine(self, by_client: dict) -> dict:
        return by_client

    def upload(self, smashed: Smashed, batches: Batches) -> tuple[Smashed, dict[int, torch.Tensor]]:
        return smashed, {i: y for i, (_, y) in batches.items()}

    def download(self, cut_grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return cut_grads

    def broadcast_lower(self, pool: ClientPool, i: int) -> Weights:
        """A copy of client i's lower weights, as it would send them."""
        return {k: v.detach().clone() for k, v in pool.lower(i).state_dict().items()}

    def deliver_lower(self, pool: ClientPool, i: int, weights: Weights) -> None:
        pool.load_lower(i, weights)

    def average(self, pool: ClientPool, weights: list[float], heads: bool) -> None:
        pool.average(weights, heads)

    def identical(self, pool: ClientPool) -> bool:
        return pool.identical()

    def departed(self) -> set[int]:
        return set()

