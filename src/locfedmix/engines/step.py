"""One training step, shared by every algorithm: the paper's Fig. 7 flow, read top to bottom.

clients forward → (defence) → uploads → server loss (+ SmashMix) → server update → (GradMix) → cut gradients down →
client backward (+ local objective, + NoPeek) → client optimizer steps. A sequential schedule is the same step with
one client.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.gradmix import mix_gradients
from locfedmix.algorithms.objectives import receives_server_gradient
from locfedmix.algorithms.parts import ServerLayout
from locfedmix.algorithms.server_batch import ServerBatch
from locfedmix.algorithms.smashmix import smashmix_loss
from locfedmix.engines.clients import Batches, ClientPool, Smashed
from locfedmix.engines.state import Server
from locfedmix.errors import NumericalError
from locfedmix.latency.ledger import Direction, Kind, Ledger
from locfedmix.privacy.defences import Defence


def train_step(
    algo: Algorithm,
    clients: ClientPool,
    server: Server,
    batches: Batches,
    weights: dict[int, float],
    mix_rng: np.random.Generator,
    ledger: Ledger,
    defence: Defence = Defence(),
    step: int = 0,
) -> float:
    """Run one step for the participating clients (`batches`, with data-size weights δ_i); return Σ δ_i L_i.
    `step` keys the defence's noise draws."""
    send_down = receives_server_gradient(algo.objective)
    smashed = defence.protect(clients.forward(batches), step)
    uploads = {i: s.detach().requires_grad_(send_down) for i, s in smashed.per_client().items()}
    labels = {i: y for i, (_, y) in batches.items()}
    loss, cut_grads = server_step(algo, server, uploads, labels, weights, mix_rng)
    check_finite(loss, smashed, cut_grads)
    if algo.gradient_mixer is not None and cut_grads:
        cut_grads = mix_gradients(cut_grads, weights, algo.gradient_mixer, mix_rng)
    record_step(ledger, uploads, labels, cut_grads)
    clients.backward_and_step(algo.objective, smashed, cut_grads, batches, defence.nopeek)
    return loss


def check_finite(loss: float, smashed: Smashed, cut_grads: dict[int, torch.Tensor]) -> None:
    """Stop at the first non-finite value, naming the client it came from. The cheap test runs every step: the loss
    and one double-precision sum of all this process's smashed data, which any NaN or infinity makes non-finite and
    finite float32 values cannot overflow (one device sync and a few operators, where a check per loop client took
    five operators and a sync each). Clients are examined one by one only once it fails. A gradient that overflows
    turns the client's weights, and so its next smashed data, non-finite: the next step names it."""
    with torch.no_grad():
        sums = [out.sum(dtype=torch.float64) for _, out in smashed.groups]
    if math.isfinite(loss) and (not sums or math.isfinite(torch.stack(sums).sum().item())):
        return
    uploads = smashed.per_client()
    for i in sorted(uploads):
        if not torch.isfinite(uploads[i]).all():
            raise NumericalError(f"client {i}'s smashed data are not finite")
        if i in cut_grads and not torch.isfinite(cut_grads[i]).all():
            raise NumericalError(f"the cut gradient for client {i} is not finite")
    if not math.isfinite(loss):
        raise NumericalError(f"the server loss is not finite (clients {sorted(uploads)})")


def record_step(ledger: Ledger, uploads: dict[int, torch.Tensor], labels: dict[int, torch.Tensor],
                cut_grads: dict[int, torch.Tensor]) -> None:
    """What crossed the network in this step: smashed data and labels up, cut gradients down."""
    for i, upload in uploads.items():
        ledger.send_tensor(i, Kind.SMASHED, Direction.UP, upload)
        ledger.send_tensor(i, Kind.LABELS, Direction.UP, labels[i])
    for i, grad in cut_grads.items():
        ledger.send_tensor(i, Kind.GRADIENT, Direction.DOWN, grad)


def real_loss(upper: torch.nn.Module, batch: ServerBatch) -> torch.Tensor:
    """Σ_i δ_i L_i with L_i the mean CE of client i's batch: each sample's CE weighted by δ_i / b_i."""
    ce = F.cross_entropy(upper(batch.data), batch.labels, reduction="none")
    return (ce * batch.per_sample([batch.weights[i] / b for i, b in zip(batch.ids, batch.sizes)])).sum()


def server_step(algo: Algorithm, server: Server, uploads: dict[int, torch.Tensor], labels: dict[int, torch.Tensor],
                weights: dict[int, float], mix_rng: np.random.Generator) -> tuple[float, dict[int, torch.Tensor]]:
    """Update the upper model(s); return the real loss and each client's cut gradient ∂L_i/∂s_i (own loss, unweighted;
    none when the uploads do not require grad)."""
    if algo.server_layout is ServerLayout.PER_CLIENT:
        return _per_client_server_step(server, uploads, labels, weights)
    batch = ServerBatch.of(uploads, labels, weights)
    upper, optimizer = server.uppers[0], server.optimizers[0]
    optimizer.zero_grad(set_to_none=True)
    loss = real_loss(upper, batch)
    total = loss
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
    # The server loss is Σ δ_i L_i, so its gradient at s_i is δ_i ∂L_i/∂s_i; the client gets its own loss's gradient.
    delta = batch.per_sample([weights[i] for i in batch.ids]).view(-1, *[1] * (batch.data.dim() - 1))
    return loss.item(), batch.split(batch.data.grad / delta)


def _per_client_server_step(server: Server, uploads: dict[int, torch.Tensor], labels: dict[int, torch.Tensor],
                            weights: dict[int, float]) -> tuple[float, dict[int, torch.Tensor]]:
    """SplitFed v1: copy i of the upper model is updated by client i's own loss L_i alone."""
    total = 0.0
    for i, u in uploads.items():
        upper, optimizer = server.upper_of(i), server.optimizers[i]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(upper(u), labels[i])
        loss.backward()
        optimizer.step()
        total += weights[i] * loss.item()
    return total, {i: u.grad for i, u in uploads.items() if u.grad is not None}
