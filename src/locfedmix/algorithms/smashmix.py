"""SmashMix (LocFedMix-SL's *Mix* part, paper Eq. 5-6 as reconstructed): manifold mixup of the smashed data of
different clients at the server. Mixed samples are built from detached uploads, so their loss trains the upper model
only and never sends gradient to a client ("detached from the lower model segment")."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.algorithms.parts import SmashMix
from locfedmix.algorithms.server_batch import ServerBatch


def draw_partners(client_ids: list[int], partners: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """For each client i, n_s distinct partners j ≠ i drawn uniformly (n_s clipped to the other clients present)."""
    n_s = min(partners, len(client_ids) - 1)
    pairs = []
    for i in client_ids:
        others = [j for j in client_ids if j != i]
        pairs += [(i, int(j)) for j in rng.choice(others, size=n_s, replace=False)] if n_s else []
    return pairs


def mix(s_i: torch.Tensor, s_j: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """s̃ = λ s_i + (1 − λ) s_j, sample by sample (λ of shape (b,)); s_j must already be aligned to s_i's batch."""
    lam = lam.view(-1, *[1] * (s_i.dim() - 1))
    return lam * s_i + (1 - lam) * s_j


def mixed_cross_entropy(
    logits: torch.Tensor, y_i: torch.Tensor, y_j: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """Per-sample CE against the mixed label λ onehot(y_i) + (1 − λ) onehot(y_j)."""
    ce_i = F.cross_entropy(logits, y_i, reduction="none")
    ce_j = F.cross_entropy(logits, y_j, reduction="none")
    return lam * ce_i + (1 - lam) * ce_j


def smashmix_loss(upper: nn.Module, batch: ServerBatch, mixer: SmashMix,
                  rng: np.random.Generator) -> torch.Tensor | None:
    """Σ_i δ_i (1/n_s) Σ_j L̃_ij over the drawn pairs, all mixed batches in one forward; None when no pair exists.
    The draws are made pair by pair; the mixing itself is a few gathers over the server's batch."""
    pairs = draw_partners(sorted(batch.ids), mixer.partners, rng)
    if not pairs:
        return None
    n_s = len(pairs) // len(batch.ids)
    size = dict(zip(batch.ids, batch.sizes))
    start = dict(zip(batch.ids, np.cumsum([0, *batch.sizes[:-1]])))
    rows_i, rows_j, lams, scale = [], [], [], []
    for i, j in pairs:
        b = size[i]
        draws = rng.beta(mixer.alpha, mixer.alpha, size=b if mixer.per_sample else 1)
        rows_i.append(start[i] + np.arange(b))
        rows_j.append(start[j] + np.arange(b) % size[j])  # pair sample k of i with sample k (mod b_j) of j
        lams.append(np.broadcast_to(draws, (b,)))
        scale.append(np.full(b, batch.weights[i] / (n_s * b)))
    data = batch.data.detach()
    as_tensor = lambda parts, dtype: torch.as_tensor(np.concatenate(parts), dtype=dtype, device=data.device)
    rows_i, rows_j = as_tensor(rows_i, torch.long), as_tensor(rows_j, torch.long)
    lam = as_tensor(lams, data.dtype)
    logits = upper(mix(data[rows_i], data[rows_j], lam))
    per_sample = mixed_cross_entropy(logits, batch.labels[rows_i], batch.labels[rows_j], lam)
    return (per_sample * as_tensor(scale, data.dtype)).sum()
