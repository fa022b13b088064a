"""One training step, shared by every algorithm: the paper's Fig. 7 flow, read top to bottom.

clients forward → (defence) → uploads → server loss (+ SmashMix) → server update → (GradMix) → cut gradients down →
client backward (+ local objective, + NoPeek) → client optimizer steps. A sequential schedule is the same step with
one client.
"""

import math

import numpy as np
import torch

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.gradmix import mix_gradients
from locfedmix.engines.flow.interfaces import Batches, ClientPool, Smashed, Transport
from locfedmix.engines.flow.recipe import Recipe
from locfedmix.engines.flow.server import Server, server_step
from locfedmix.errors import NumericalError
from locfedmix.latency.ledger import Direction, Kind, Ledger
from locfedmix.privacy.defences import Defence


def train_step(algo: Algorithm, recipe: Recipe, clients: ClientPool, server: Server, transport: Transport,
               batches: Batches, weights: dict[int, float], mix_rng: np.random.Generator, ledger: Ledger,
               defence: Defence = Defence(), step: int = 0) -> float:
    """Run one step for the participating clients (`batches`, with data-size weights δ_i); return Σ δ_i L_i.
    This process's clients compute; the server sees every upload through the transport and sends the cut gradients
    back through it. `step` keys the defence's noise draws."""
    mine = transport.mine(batches)
    smashed, labels = transport.upload(defence.protect(clients.forward(mine), step), batches)
    uploads = {i: s.detach().requires_grad_(recipe.sends_gradient) for i, s in smashed.per_client().items()}
    loss, cut_grads = server_step(algo, server, uploads, labels, weights, mix_rng)
    check_finite(loss, smashed, cut_grads)
    if algo.gradient_mixer is not None and cut_grads:
        cut_grads = mix_gradients(cut_grads, weights, algo.gradient_mixer, mix_rng)
    record_step(ledger, uploads, labels, cut_grads)
    clients.backward_and_step(algo.objective, smashed, transport.download(cut_grads), mine, defence.nopeek)
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
