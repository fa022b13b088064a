"""Client objectives: which local module a client keeps and which local loss shapes its lower model."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.algorithms.parts import (
    ClientObjective,
    GradientSource,
    LocalClassifier,
    Reconstruction,
    ReconstructionLoss,
    ServerGradient,
)
from locfedmix.models import build_aux_classifier, build_decoder
from locfedmix.privacy.dcor import distance_correlation


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass (exactly), `scale` × the gradient in the backward pass; plain tensor ops, so it also
    works under torch.func.vmap."""
    frozen = x.detach()
    return frozen + scale * (x - frozen)


def build_head(
    objective: ClientObjective, cut_shape: tuple[int, ...], input_shape: tuple[int, ...], n_classes: int,
    head: nn.Module | None = None, decoder: nn.Module | None = None,
) -> nn.Module | None:
    """The client's auxiliary module: a classifier head (LocSplitFed), a decoder (LocFedMix-SL) or none; the user's
    own `head` / `decoder` where given, else one built from the shapes."""
    match objective:
        case LocalClassifier():
            return head if head is not None else build_aux_classifier(cut_shape, n_classes)
        case Reconstruction():
            return decoder if decoder is not None else build_decoder(cut_shape, input_shape)
    return None


def receives_server_gradient(objective: ClientObjective) -> bool:
    """Whether the server sends ∂L_i/∂s_i down to the client at all."""
    match objective:
        case LocalClassifier():
            return False
        case Reconstruction(source=GradientSource.LOCAL_ONLY):
            return False
    return True


def reconstruction_loss(kind: ReconstructionLoss, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L_rec of paper Eq. 8 as reconstructed: MSE(h(s), x) by default; BCE against the [0, 1] image as in the
    group's InfoPro code. The MSE is written out: F.mse_loss has no batching rule of its own, and under vmap (the
    stacked pool) its forward and backward took 4x as long as these three operators."""
    if kind is ReconstructionLoss.BCE:
        return F.binary_cross_entropy_with_logits(decoded, x)
    return (decoded - x).square().mean()


def local_loss(
    objective: ClientObjective, head: Callable[[torch.Tensor], torch.Tensor] | None, smashed: torch.Tensor,
    x: torch.Tensor, y: torch.Tensor,
) -> torch.Tensor | None:
    """The client-side loss whose gradient joins the server gradient in the lower model (None for plain SL).

    For the reconstruction regularizer, the lower model must receive γ ∇L_rec while the decoder learns from L_rec
    itself; scaling the gradient at the cut gives exactly that with one backward pass.
    """
    match objective:
        case ServerGradient():
            return None
        case LocalClassifier():
            assert head is not None
            return F.cross_entropy(head(smashed), y)
        case Reconstruction(gamma=gamma, loss=kind, source=source):
            assert head is not None
            to_lower = 0.0 if source is GradientSource.SERVER_ONLY else gamma
            return reconstruction_loss(kind, head(scale_gradient(smashed, to_lower)), x)
    raise TypeError(f"unknown client objective {objective!r}")


def client_loss(
    objective: ClientObjective, head: Callable[[torch.Tensor], torch.Tensor] | None, smashed: torch.Tensor,
    x: torch.Tensor, y: torch.Tensor, nopeek: float = 0.0,
) -> torch.Tensor | None:
    """Everything the client back-propagates from its own side: the objective's local loss plus, with NoPeek
    (Vepakomma et al. 2020), α·dCor(x, s) of its raw smashed data. With α = 0 it is exactly `local_loss`."""
    loss = local_loss(objective, head, smashed, x, y)
    if not nopeek:
        return loss
    leak = nopeek * distance_correlation(x, smashed)
    return leak if loss is None else loss + leak
