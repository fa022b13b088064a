"""The server's model-inversion attack on smashed data: a decoder trained on (smashed, input) pairs of auxiliary data
the server owns, then applied to the clients' uploads (the learning-based inversion of He, Zhang & Lee 2019, "Model
inversion attacks against collaborative inference"). The decoder is the InfoPro-style one LocFedMix-SL's clients
train (models/auxiliary.py), so the attacker is exactly as strong as that regularizer's own reconstruction.

Scores: MSE and SSIM (Wang et al. 2004, via pytorch-msssim) of the reconstructions, clamped to the [0, 1] pixel range
the attacker knows, against the true inputs; and, for scale, the MSE of always answering the mean auxiliary image.
"""

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

SSIM_WINDOW = 11  # the Gaussian window of Wang et al. (2004); smaller images use the largest odd size that fits


def train_inversion(decoder: nn.Module, smashed: torch.Tensor, x: torch.Tensor, epochs: int, batch_size: int,
                    lr: float, generator: torch.Generator, noise_std: torch.Tensor | None = None) -> nn.Module:
    """Fit decoder(smashed) ≈ x by Adam on the MSE, mini-batches shuffled by `generator`; returns it in eval mode.
    With `noise_std` (one per sample), every batch gets fresh N(0, std²) noise from `generator`: an attacker that
    knows the defence simulates it anew each epoch, so the decoder learns to see through the noise rather than
    memorising one draw of it."""
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    decoder.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            inputs = smashed[idx]
            if noise_std is not None:
                scale = noise_std[idx].view(-1, *[1] * (inputs.dim() - 1))
                inputs = inputs + scale * torch.randn(inputs.shape, generator=generator).to(inputs)
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(decoder(inputs), x[idx]).backward()
            optimizer.step()
    return decoder.eval()


@torch.no_grad()
def reconstruct(decoder: nn.Module, smashed: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The attacker's guess of the inputs, clamped to [0, 1]."""
    parts = [decoder(smashed[k:k + batch_size]) for k in range(0, len(smashed), batch_size)]
    return torch.cat(parts).clamp(0.0, 1.0)


def ssim_per_image(reconstructed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair on the [0, 1] range, averaged over channels."""
    side = min(x.shape[-2:])
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    return ssim(reconstructed.float(), x.float(), data_range=1.0, size_average=False, win_size=window)


def squared_error_per_image(reconstructed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (reconstructed - x).square().flatten(1).mean(1)
