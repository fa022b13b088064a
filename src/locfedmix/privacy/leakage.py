"""What the smashed data reveal about the inputs, per algorithm, after training (docs/privacy.md, issue #9).

Threat model: an honest-but-curious server that sees every upload (smashed data, after the client's defence) and
holds auxiliary data of its own, drawn from the training pool outside every client's share, never the test set. It
can obtain the defended smashed data of its auxiliary inputs from each client's deployed lower model (query access,
or the weights themselves, which FedAvg and the relay of sequential SL hand to the server anyway): the strong
attacker of He et al. (2019). Two measures on a fixed sample of each client's own training data:
* distance correlation between inputs and uploads (privacy/dcor.py), NoPeek's dCor_n and the bias-corrected R*²;
* a model-inversion attack (privacy/inversion.py): one decoder, trained on auxiliary sample k passed through client
  (k mod N)'s lower model, reconstructs the clients' inputs from their uploads.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from locfedmix.config import LeakageConfig
from locfedmix.engines.flow.state import Federation
from locfedmix.errors import UserError
from locfedmix.models import build_decoder
from locfedmix.privacy.dcor import bias_corrected_distance_correlation_sqr, distance_correlation
from locfedmix.privacy.inversion import reconstruct, squared_error_per_image, ssim_per_image, train_inversion
from locfedmix.rng import numpy_generator, seeded_torch, torch_generator

THREAT_MODEL = ("honest-but-curious server; sees every defended upload; owns auxiliary data outside every client's "
                "share (not the test set); can query each client's deployed lower model")


def auxiliary_split(n_train: int, client_indices: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """The attacker's own data: `size` training-pool samples that no client holds (the validation split and what the
    partition left over), so the attack is scored on data it never saw."""
    free = np.setdiff1d(np.arange(n_train), np.concatenate(client_indices))
    if len(free) < size:
        raise UserError(f"leakage.aux_samples={size} exceeds the {len(free)} training samples no client holds; "
                        f"lower it, raise data.val_fraction or cap samples_per_client")
    return np.sort(rng.choice(free, size=size, replace=False))


def client_lowers(fed: Federation) -> list[nn.Module]:
    """The lower model each client would upload with next: its own, or under the relay the one last trained."""
    if fed.recipe.relay:
        holder = fed.holder if fed.holder is not None else 0
        return [fed.clients.lower(holder)] * fed.clients.n
    return [fed.clients.lower(i) for i in range(fed.clients.n)]


@torch.no_grad()
def lower_outputs(lower: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """lower(x) in eval mode (as deployed), restoring the module's mode."""
    mode = lower.training
    lower.eval()
    out = torch.cat([lower(x[k:k + batch_size]) for k in range(0, len(x), batch_size)])
    lower.train(mode)
    return out


@dataclass
class Measurement:
    metrics: dict  # JSON-ready numbers for summary.json
    examples: dict[str, np.ndarray]  # originals and reconstructions of a few client samples, uint8 [k, C, H, W]


class LeakageProbe:
    """Draws its samples once per run (the same ones every round) and measures the federation when asked."""

    def __init__(self, fed: Federation, x_train: torch.Tensor, client_indices: list[np.ndarray],
                 aux_indices: np.ndarray, cfg: LeakageConfig):
        self.fed, self.cfg = fed, cfg
        self.x_aux = x_train[torch.as_tensor(aux_indices, device=x_train.device)]
        self.x_clients = []
        for i, idx in enumerate(client_indices):
            rng = numpy_generator(fed.seed, "leakage-samples", i)
            chosen = np.sort(rng.choice(idx, size=min(cfg.samples_per_client, len(idx)), replace=False))
            self.x_clients.append(x_train[torch.as_tensor(chosen, device=x_train.device)])

    def uploads(self, lower: nn.Module, x: torch.Tensor, purpose: str, round_index: int, client: int) -> torch.Tensor:
        generator = torch_generator(self.fed.seed, purpose, round_index, client)
        return self.fed.defence.upload(lower_outputs(lower, x), generator)

    def attack(self, lowers: list[nn.Module], round_index: int) -> nn.Module:
        """Train the server's decoder on its auxiliary data, sample k queried through client (k mod N)."""
        owner = torch.arange(len(self.x_aux), device=self.x_aux.device) % len(lowers)
        smashed = torch.empty(len(self.x_aux), *self.fed.cut_shape, device=self.x_aux.device)
        for i, lower in enumerate(lowers):
            if (owner == i).any():
                smashed[owner == i] = self.uploads(lower, self.x_aux[owner == i], "attack-query-noise", round_index, i)
        with seeded_torch(self.fed.seed, "attack-init", round_index):
            decoder = build_decoder(self.fed.cut_shape, tuple(self.x_aux.shape[1:]))
        generator = torch_generator(self.fed.seed, "attack-batches", round_index)
        return train_inversion(decoder.to(self.x_aux.device), smashed, self.x_aux, self.cfg.attack_epochs,
                               self.cfg.attack_batch_size, self.cfg.attack_lr, generator)

    def measure(self, round_index: int) -> Measurement:
        lowers = client_lowers(self.fed)
        decoder = self.attack(lowers, round_index)
        mean_image = self.x_aux.mean(0, keepdim=True)
        per_client, errors, ssims, baseline, pictures = [], [], [], [], []
        for i, (lower, x) in enumerate(zip(lowers, self.x_clients)):
            sent = self.uploads(lower, x, "leakage-noise", round_index, i)
            rebuilt = reconstruct(decoder, sent)
            err, sim = squared_error_per_image(rebuilt, x), ssim_per_image(rebuilt, x)
            errors.append(err), ssims.append(sim), pictures.append((x, rebuilt))
            baseline.append(squared_error_per_image(mean_image.expand_as(x), x))
            per_client.append({"client": i, "samples": len(x), **dependence(x, sent),
                               "attack_mse": err.mean().item(), "attack_ssim": sim.mean().item()})
        metrics = {"round": round_index, **pooled(per_client), "attack_mse": torch.cat(errors).mean().item(),
                   "attack_ssim": torch.cat(ssims).mean().item(), "mean_image_mse": torch.cat(baseline).mean().item(),
                   "per_client": per_client}
        return Measurement(metrics, examples(pictures, self.cfg.examples))


def dependence(x: torch.Tensor, sent: torch.Tensor) -> dict[str, float]:
    """Both distance correlations of one client's inputs and uploads, in float64 (the u-statistic needs 4 samples)."""
    x64, s64 = x.double(), sent.double()
    corrected = bias_corrected_distance_correlation_sqr(x64, s64).item() if len(x) >= 4 else float("nan")
    return {"dcor": distance_correlation(x64, s64).item(), "dcor_sqr_bias_corrected": corrected}


def pooled(per_client: list[dict]) -> dict[str, float]:
    """The clients' distance correlations, averaged with weights by the number of samples each was measured on."""
    weights = np.array([c["samples"] for c in per_client], dtype=float)
    out = {}
    for key in ("dcor", "dcor_sqr_bias_corrected"):
        values = np.array([c[key] for c in per_client])
        keep = ~np.isnan(values)
        out[key] = float(np.average(values[keep], weights=weights[keep])) if keep.any() else float("nan")
    return out


def examples(pictures: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> dict[str, np.ndarray]:
    """k (original, reconstruction) pairs taken round-robin over the clients (sample 0 of each, then sample 1, ...),
    as uint8 images [k, C, H, W], with the client each came from."""
    longest = max((len(x) for x, _ in pictures), default=0)
    chosen = [(c, j) for j in range(longest) for c in range(len(pictures)) if j < len(pictures[c][0])][:k]

    def stack(which: int) -> np.ndarray:
        images = [pictures[c][which][j].detach().cpu().clamp(0, 1) for c, j in chosen]
        return (torch.stack(images) * 255).round().to(torch.uint8).numpy() if images else np.zeros((0,), np.uint8)

    return {"original": stack(0), "reconstruction": stack(1), "client": np.array([c for c, _ in chosen])}
