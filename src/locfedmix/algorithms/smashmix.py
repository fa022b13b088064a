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
    """For each client i, n_s distinct partners j ≠ i drawn uniformly (n_s clipped to the other clients present).

    Client i draws positions among the others (`client_ids` without i, in order), as rng.choice over that list
    would, without building the list: its draws depend only on the list's length, and position k is client k, or
    k + 1 from i's own position on. Building 1,000 lists of 999 took 85 ms of a 1,000-client round."""
    n_s = min(partners, len(client_ids) - 1)
    if not n_s:
        return []
    pairs = []
    for position, i in enumerate(client_ids):
        picks = rng.choice(len(client_ids) - 1, size=n_s, replace=False)
        pairs += [(i, client_ids[k + (k >= position)]) for k in picks.tolist()]
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
    Sample k of client i is mixed with sample k (mod b_j) of its partner j. The λ draws come one pair after another
    (b_i draws for a pair with per_sample), in one call; the mixing itself is a few gathers over the server's batch."""
    pairs = draw_partners(sorted(batch.ids), mixer.partners, rng)
    if not pairs:
        return None
    n_s = len(pairs) // len(batch.ids)
    size = dict(zip(batch.ids, batch.sizes))
    start = dict(zip(batch.ids, np.cumsum([0, *batch.sizes[:-1]])))
    b_i = np.array([size[i] for i, _ in pairs])
    b_j = np.repeat([size[j] for _, j in pairs], b_i)
    k = np.arange(b_i.sum()) - np.repeat(np.cumsum(b_i) - b_i, b_i)  # each mixed sample's index within its pair
    draws = rng.beta(mixer.alpha, mixer.alpha, size=b_i.sum() if mixer.per_sample else len(pairs))
    data = batch.data.detach()
    as_tensor = lambda values, dtype: torch.as_tensor(values, dtype=dtype, device=data.device)
    rows_i = as_tensor(np.repeat([start[i] for i, _ in pairs], b_i) + k, torch.long)
    rows_j = as_tensor(np.repeat([start[j] for _, j in pairs], b_i) + k % b_j, torch.long)
    lam = as_tensor(draws if mixer.per_sample else np.repeat(draws, b_i), data.dtype)
    scale = as_tensor(np.repeat([batch.weights[i] / (n_s * size[i]) for i, _ in pairs], b_i), data.dtype)
    logits = upper(mix(data[rows_i], data[rows_j], lam))
    per_sample = mixed_cross_entropy(logits, batch.labels[rows_i], batch.labels[rows_j], lam)
    return (per_sample * scale).sum()
