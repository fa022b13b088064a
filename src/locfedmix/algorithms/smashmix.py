"""SmashMix (LocFedMix-SL's *Mix* part, paper Eq. 5-6 as reconstructed): manifold mixup of the smashed data of
different clients at the server. Mixed samples are built from detached uploads, so their loss trains the upper model
only and never sends gradient to a client ("detached from the lower model segment")."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.algorithms.parts import SmashMix


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


def smashmix_loss(
    upper: nn.Module,
    smashed: dict[int, torch.Tensor],
    labels: dict[int, torch.Tensor],
    weights: dict[int, float],
    mixer: SmashMix,
    rng: np.random.Generator,
) -> torch.Tensor | None:
    """Σ_i δ_i (1/n_s) Σ_j L̃_ij over the drawn pairs, all mixed batches in one forward; None when no pair exists."""
    pairs = draw_partners(sorted(smashed), mixer.partners, rng)
    if not pairs:
        return None
    n_s = len(pairs) // len(smashed)
    mixed, y_a, y_b, lams, scale = [], [], [], [], []
    for i, j in pairs:
        b = smashed[i].shape[0]
        draws = rng.beta(mixer.alpha, mixer.alpha, size=b if mixer.per_sample else 1)
        lam = torch.as_tensor(draws, dtype=smashed[i].dtype, device=smashed[i].device).expand(b)
        align = torch.arange(b) % smashed[j].shape[0]  # pair sample k of i with sample k (mod b_j) of j
        mixed.append(mix(smashed[i].detach(), smashed[j].detach()[align], lam))
        y_a.append(labels[i])
        y_b.append(labels[j][align])
        lams.append(lam)
        scale.append(torch.full((b,), weights[i] / (n_s * b), dtype=smashed[i].dtype, device=smashed[i].device))
    per_sample = mixed_cross_entropy(upper(torch.cat(mixed)), torch.cat(y_a), torch.cat(y_b), torch.cat(lams))
    return (per_sample * torch.cat(scale)).sum()
