"""The server's view of a step: every upload in one tensor. Algorithm parts that work at the server (the real loss,
SmashMix, the cut gradients) index it instead of looping over clients."""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ServerBatch:
    """A step's uploads as the server holds them: every sample in one leaf tensor, in the uploads' (client-id)
    order, so that the loss, its backward, SmashMix and the cut gradients take a few operators whatever the number
    of clients. With a few small operators per client instead, a `locfedmix` round of 1,000 one-sample clients
    issued 105,000 operators; on a GPU each is a kernel launch."""

    ids: list[int]
    sizes: list[int]
    data: torch.Tensor  # [Σ b_i, ...]; requires grad when the uploads did (a cut gradient goes down)
    labels: torch.Tensor
    weights: dict[int, float]

    @classmethod
    def of(cls, uploads: dict[int, torch.Tensor], labels: dict[int, torch.Tensor],
           weights: dict[int, float]) -> "ServerBatch":
        ids = list(uploads)
        needs_grad = all(u.requires_grad for u in uploads.values())
        data = torch.cat([uploads[i] for i in ids]).detach().requires_grad_(needs_grad)
        return cls(ids, [uploads[i].shape[0] for i in ids], data, torch.cat([labels[i] for i in ids]), weights)

    def per_sample(self, per_client: list[float]) -> torch.Tensor:
        """One value per client (in `ids` order) repeated over its samples, in one host-to-device copy."""
        return torch.as_tensor(np.repeat(per_client, self.sizes), dtype=self.data.dtype, device=self.data.device)

    def split(self, t: torch.Tensor) -> dict[int, torch.Tensor]:
        """Each client's rows of a [Σ b_i, ...] tensor (views)."""
        return dict(zip(self.ids, t.split(self.sizes)))
