"""What the smashed data reveal about the inputs, per algorithm, after training (docs/privacy.md, issue #9).

Threat model: an honest-but-curious server that sees every upload (smashed data, after the client's defence) and
every label (sent in the clear by every algorithm here), and holds auxiliary data of its own, drawn from the training
pool outside every client's share, never the test set. It can obtain the defended smashed data of its auxiliary
inputs from each client's deployed lower model (query access, or the weights themselves, which FedAvg and the relay
of sequential SL hand to the server anyway), the query-access setting of He et al. (2019). Measures on a fixed sample
of each client's own training data:
* distance correlation between inputs and uploads (privacy/dcor.py), NoPeek's dCor_n and the bias-corrected R*²;
* a model-inversion attack (privacy/inversion.py): one decoder, trained on auxiliary sample k passed through client
  (k mod N)'s lower model, reconstructs the clients' inputs from their uploads. With a fixed training budget it is
  one attacker, not the strongest: its scores bound what the uploads reveal from below;
* optionally a longer-trained attack on the mean of the R uploads of each sample the server holds after R rounds,
  which divides the noise's standard deviation by √R;
* two floors that need no upload: the mean auxiliary image, and the mean auxiliary image of the sample's class (the
  server has the label). An attack that does not beat the class-mean floor has shown nothing beyond the labels.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from locfedmix.config import LeakageConfig
from locfedmix.data.normalize import Standardization
from locfedmix.engines.flow.state import Federation
from locfedmix.errors import UserError
from locfedmix.models import build_decoder
from locfedmix.privacy.dcor import bias_corrected_distance_correlation_sqr, distance_correlation
from locfedmix.privacy.inversion import reconstruct, squared_error_per_image, ssim_per_image, train_inversion
from locfedmix.rng import numpy_generator, seeded_torch, torch_generator

THREAT_MODEL = ("honest-but-curious server; sees every defended upload and every label (labels leak in every algorithm "
                "here, all of which send them in the clear); owns labelled auxiliary data outside every client's share "
                "(not the test set); can query each client's deployed lower model")


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
    """Draws its samples once per run (the same ones every round) and measures the federation when asked. With
    standardized inputs (data.normalize) it holds, reconstructs and scores pixels, and standardizes only what it
    feeds a lower model."""

    def __init__(self, fed: Federation, x_train: torch.Tensor, y_train: torch.Tensor,
                 client_indices: list[np.ndarray], aux_indices: np.ndarray, cfg: LeakageConfig,
                 standardization: Standardization | None = None):
        self.fed, self.cfg, self.standardization = fed, cfg, standardization
        pixels = standardization.invert if standardization else lambda x: x
        aux = torch.as_tensor(aux_indices, device=x_train.device)
        self.x_aux, self.y_aux = pixels(x_train[aux]), y_train[aux.to(y_train.device)].to(x_train.device)
        self.x_clients, self.y_clients = [], []
        for i, idx in enumerate(client_indices):
            rng = numpy_generator(fed.seed, "leakage-samples", i)
            chosen = torch.as_tensor(np.sort(rng.choice(idx, size=min(cfg.samples_per_client, len(idx)),
                                                        replace=False)))
            self.x_clients.append(pixels(x_train[chosen.to(x_train.device)]))
            self.y_clients.append(y_train[chosen.to(y_train.device)])

    def uploads(self, lower: nn.Module, x: torch.Tensor, purpose: str, round_index: int, client: int,
                draws: int = 1) -> torch.Tensor:
        """What `client` sends for x; with `draws` > 1 the mean of that many uploads, each with fresh noise."""
        generator = torch_generator(self.fed.seed, purpose, round_index, client)
        inputs = self.standardization.apply(x) if self.standardization else x
        smashed = lower_outputs(lower, inputs)
        if draws == 1 or not self.fed.defence.noise_std:
            return self.fed.defence.upload(smashed, generator)
        return torch.stack([self.fed.defence.upload(smashed, generator) for _ in range(draws)]).mean(0)

    def uploads_held(self, client: int, round_index: int) -> int:
        """R: the uploads of each of its samples the server holds after `round_index` rounds, one per round the client
        was drawn for (at least one: the measurement scores an upload)."""
        drawn = sum(client in self.fed.participation.participants(r) for r in range(1, round_index + 1))
        return max(1, drawn)

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

    def averaged_attack(self, lowers: list[nn.Module], round_index: int) -> nn.Module:
        """The stronger attacker, for the mean of R uploads: its decoder trains `averaged_attack_epochs` on the clipped
        auxiliary uploads with fresh noise of std σC/√R (R as for the client queried) drawn every batch."""
        owner = torch.arange(len(self.x_aux), device=self.x_aux.device) % len(lowers)
        clipped = torch.empty(len(self.x_aux), *self.fed.cut_shape, device=self.x_aux.device)
        std = torch.zeros(len(self.x_aux), device=self.x_aux.device)
        quiet = replace(self.fed.defence, noise_multiplier=0.0)
        for i, lower in enumerate(lowers):
            if (owner == i).any():
                clipped[owner == i] = quiet.upload(lower_outputs(lower, self.x_aux[owner == i]), torch.Generator())
                std[owner == i] = self.fed.defence.noise_std / self.uploads_held(i, round_index) ** 0.5
        with seeded_torch(self.fed.seed, "averaged-attack-init", round_index):
            decoder = build_decoder(self.fed.cut_shape, tuple(self.x_aux.shape[1:]))
        generator = torch_generator(self.fed.seed, "averaged-attack-batches", round_index)
        return train_inversion(decoder.to(self.x_aux.device), clipped, self.x_aux, self.cfg.averaged_attack_epochs,
                               self.cfg.attack_batch_size, self.cfg.attack_lr, generator,
                               std if self.fed.defence.noise_std else None)

    def measure(self, round_index: int) -> Measurement:
        lowers = client_lowers(self.fed)
        decoder = self.attack(lowers, round_index)
        averaged = self.averaged_attack(lowers, round_index) if self.cfg.averaged_attack_epochs else None
        per_client, scores, pictures = [], {}, []
        for i, (lower, x) in enumerate(zip(lowers, self.x_clients)):
            sent = self.uploads(lower, x, "leakage-noise", round_index, i)
            guesses = {"attack": reconstruct(decoder, sent), **self.floors(self.y_clients[i])}
            extra = {}
            if averaged is not None:
                held = self.uploads_held(i, round_index)
                mean_sent = self.uploads(lower, x, "averaged-leakage-noise", round_index, i, held)
                guesses["averaged_attack"], extra["uploads_averaged"] = reconstruct(averaged, mean_sent), held
            own = {}
            for name, guess in guesses.items():
                err, sim = squared_error_per_image(guess, x), ssim_per_image(guess, x)
                scores.setdefault(name, []).append((err, sim))
                own |= {f"{name}_mse": err.mean().item(), f"{name}_ssim": sim.mean().item()}
            pictures.append((x, guesses["attack"]))
            per_client.append({"client": i, "samples": len(x), **dependence(x, sent), **extra,
                               **{key: value for key, value in own.items() if "attack" in key}})
        pooled_scores = {f"{name}_{kind}": torch.cat([pair[k] for pair in pairs]).mean().item()
                         for name, pairs in scores.items() for k, kind in enumerate(("mse", "ssim"))}
        metrics = {"round": round_index, **pooled(per_client), **pooled_scores, "per_client": per_client}
        return Measurement(metrics, examples(pictures, self.cfg.examples))

    def floors(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Guesses that need no upload: the mean auxiliary image, and the mean auxiliary image of each sample's class
        (the server holds the label; the overall mean where its auxiliary data lack the class)."""
        overall = self.x_aux.mean(0)
        by_class = {int(c): self.x_aux[self.y_aux == c].mean(0) for c in self.y_aux.unique()}
        return {"mean_image": overall.expand(len(labels), *overall.shape),
                "class_mean_image": torch.stack([by_class.get(int(c), overall) for c in labels])}


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
