"""Client-side defences of the smashed data, switched on in the [privacy] config section (docs/privacy.md):

* clipping + Gaussian noise before upload: each sample's smashed tensor s is scaled to L2 norm ≤ C, then
  N(0, (σC)² I) is added, σ the noise multiplier. This is the Gaussian mechanism's per-sample step only; it gives no
  (ε, δ) guarantee for a training run by itself (no accounting over steps; labels and returned gradients are not
  covered), see docs/privacy.md.
* NoPeek (Vepakomma et al. 2020): the client adds α·dCor(x, s) to its local loss, pushing its lower model towards
  smashed data with less dependence on the raw inputs.

Everything defaults to off, and off means the engines run exactly the operations they ran before defences existed.
Noise is drawn from generators derived from (seed, purpose, step, client), so both client pools draw the same noise.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from locfedmix.engines.flow.interfaces import Smashed
from locfedmix.rng import torch_generator


def clip_per_sample(s: torch.Tensor, bound: float, batch_dims: int = 1) -> torch.Tensor:
    """Scale each sample (the dims after the first `batch_dims`) to L2 norm at most `bound`: s·C/max(‖s‖, C), a
    factor of exactly 1 where the bound does not bind. Differentiable, so the client back-propagates through it."""
    norms = s.flatten(batch_dims).norm(dim=-1)
    factor = bound / norms.clamp(min=bound)
    return s * factor.view(*factor.shape, *[1] * (s.dim() - batch_dims))


def gaussian_noise(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `generator` (so every device draws the same numbers)."""
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class Defence:
    """The [privacy] settings as the engines use them; `Defence()` is every defence off."""

    clip: float | None = None
    noise_multiplier: float = 0.0
    nopeek: float = 0.0
    seed: int = 0

    @property
    def changes_uploads(self) -> bool:
        return self.clip is not None

    @property
    def active(self) -> bool:
        return self.changes_uploads or self.nopeek > 0

    @property
    def noise_std(self) -> float:
        """σ·C, the standard deviation of the noise added to every coordinate of a clipped sample."""
        return self.noise_multiplier * self.clip if self.clip is not None else 0.0

    def upload(self, s: torch.Tensor, generator: torch.Generator, batch_dims: int = 1) -> torch.Tensor:
        """What a client sends for smashed data s: clipped, plus noise; s itself when no defence changes uploads."""
        if not self.changes_uploads:
            return s
        sent = clip_per_sample(s, self.clip, batch_dims)
        if self.noise_std:
            sent = sent + self.noise_std * gaussian_noise(s.shape, generator, s)
        return sent

    def protect(self, smashed: Smashed, step: int) -> Smashed:
        """A training step's uploads: each client's noise comes from its own generator (seed, step, client), so the
        loop and the stacked pool, which group clients differently, send identical tensors."""
        if not self.changes_uploads:
            return smashed
        if smashed.remote:  # config validation keeps defences out of distributed runs; this keeps it honest
            raise ValueError("defences on uploads run in one process; other ranks' uploads arrived undefended")
        groups = []
        for ids, out in smashed.groups:
            sent = clip_per_sample(out, self.clip, batch_dims=2)
            if self.noise_std:
                noise = [gaussian_noise(out.shape[1:], torch_generator(self.seed, "smashed-noise", step, i), out)
                         for i in ids]
                sent = sent + self.noise_std * torch.stack(noise)
            groups.append((ids, sent))
        return Smashed(groups, raw=[out for _, out in smashed.groups])

    def inference(self, purpose: str, step: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The upload transform for evaluation batches (a client defends every upload, inference included), drawing
        from one generator per (purpose, step); None when uploads are sent as they are."""
        if not self.changes_uploads:
            return None
        generator = torch_generator(self.seed, f"{purpose}-noise", step)
        return lambda s: self.upload(s, generator)

    def summary(self) -> dict[str, float | None]:
        return {"clip": self.clip, "noise_multiplier": self.noise_multiplier, "noise_std": self.noise_std,
                "nopeek": self.nopeek}
