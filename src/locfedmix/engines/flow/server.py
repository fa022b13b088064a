"""The server's half of a step: its upper model(s) and optimizers (built once, never per batch), updated from a
step's uploads, labels and weights, returning the cut gradients. It needs nothing else, so it may run in a process
of its own."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.server_batch import ServerBatch
from locfedmix.algorithms.smashmix import smashmix_loss


@dataclass
class Server:
    uppers: list[nn.Module]  # one shared model, or one copy per client (SplitFed v1)
    optimizers: list[torch.optim.Optimizer]
    per_client: bool = False  # copy i is updated by client i's own loss alone

    @property
    def device(self) -> torch.device:
        return next(self.uppers[0].parameters()).device

    def upper_of(self, client: int) -> nn.Module:
        return self.uppers[client if len(self.uppers) > 1 else 0]

    def state_dict(self) -> dict:
        return {"uppers": [u.state_dict() for u in self.uppers],
                "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for upper, saved in zip(self.uppers, state["uppers"]):
            upper.load_state_dict(saved)
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)


def real_loss(upper: nn.Module, batch: ServerBatch) -> torch.Tensor:
    """Σ_i δ_i L_i with L_i the mean CE of client i's batch: each sample's CE weighted by δ_i / b_i."""
    ce = F.cross_entropy(upper(batch.data), batch.labels, reduction="none")
    return (ce * batch.per_sample([batch.weights[i] / b for i, b in zip(batch.ids, batch.sizes)])).sum()


def server_step(algo: Algorithm, server: Server, uploads: dict[int, torch.Tensor], labels: dict[int, torch.Tensor],
                weights: dict[int, float], mix_rng: np.random.Generator) -> tuple[float, dict[int, torch.Tensor]]:
    """Update the upper model(s); return the real loss and each client's cut gradient (none when the uploads do not
    require grad): the gradient of the server loss Σ_j δ_j L_j at s_i, divided by δ_i. All uploads go through the
    shared upper model as one batch, so where no layer couples samples this is ∂L_i/∂s_i of client i's own batch; a
    BatchNorm in training mode normalizes by the joint batch's statistics, which makes every L_j depend on s_i,
    and the cut gradient is then ∂L_i/∂s_i + Σ_j≠i (δ_j/δ_i) ∂L_j/∂s_i under those statistics
    (docs/algorithms.md)."""
    if server.per_client:
        return _per_client_server_step(server, uploads, labels, weights)
    batch = ServerBatch.of(uploads, labels, weights)
    upper, optimizer = server.uppers[0], server.optimizers[0]
    optimizer.zero_grad(set_to_none=True)
    loss = real_loss(upper, batch)
    total = loss
    # SmashMix's forward runs in training mode too: a BatchNorm normalizes the mixed batch by its own statistics and
    # moves its running statistics a second time this step (docs/algorithms.md).
    if algo.mixer is not None and not algo.mixer.extra_step:
        mixed = smashmix_loss(upper, batch, algo.mixer, mix_rng)
        total = loss if mixed is None else loss + mixed
    total.backward()
    optimizer.step()
    if algo.mixer is not None and algo.mixer.extra_step:
        optimizer.zero_grad(set_to_none=True)
        mixed = smashmix_loss(upper, batch, algo.mixer, mix_rng)
        if mixed is not None:
            mixed.backward()
            optimizer.step()
    if batch.data.grad is None:
        return loss.item(), {}
    # Undo the δ_i weighting of client i's own term; other clients' terms reach s_i only through BatchNorm's joint
    # statistics (see the docstring).
    delta = batch.per_sample([weights[i] for i in batch.ids]).view(-1, *[1] * (batch.data.dim() - 1))
    return loss.item(), batch.split(batch.data.grad / delta)


def _per_client_server_step(server: Server, uploads: dict[int, torch.Tensor], labels: dict[int, torch.Tensor],
                            weights: dict[int, float]) -> tuple[float, dict[int, torch.Tensor]]:
    """SplitFed v1: copy i of the upper model is updated by client i's own loss L_i alone; its BatchNorm (if any)
    sees client i's batch alone, so the cut gradient is ∂L_i/∂s_i of that batch."""
    total = 0.0
    for i, u in uploads.items():
        upper, optimizer = server.upper_of(i), server.optimizers[i]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(upper(u), labels[i])
        loss.backward()
        optimizer.step()
        total += weights[i] * loss.item()
    return total, {i: u.grad for i, u in uploads.items() if u.grad is not None}
