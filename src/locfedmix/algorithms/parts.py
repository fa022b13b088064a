"""The parts every split-learning algorithm is composed of: schedule, client objective, mixer, server layout, sync.

An algorithm (see catalog.py) is nothing but a choice of one value for each part; the engine interprets them.
"""

from dataclasses import dataclass
from enum import StrEnum


class Order(StrEnum):
    """In which order a sequential schedule serves the clients within a round."""

    FIXED = "fixed"  # client 0, 1, ..., N-1 every round (Gupta & Raskar's relay)
    SHUFFLED = "shuffled"  # a fresh random order every round (SplitFed v2)


@dataclass(frozen=True)
class Sequential:
    """One client meets the server at a time; a step is one client's mini-batch.

    handoff_every: batches a client trains before the next client takes over (0 = its whole local epoch).
    """

    order: Order = Order.FIXED
    handoff_every: int = 0


@dataclass(frozen=True)
class Parallel:
    """Every client that still has data this round sends one mini-batch per step; the server serves them together."""


Schedule = Sequential | Parallel


class ServerLayout(StrEnum):
    """One upper model shared by all clients, or one private copy per client (SplitFed v1)."""

    SHARED = "shared"
    PER_CLIENT = "per_client"


class GradientSource(StrEnum):
    """Where a LocFedMix-SL client's lower-model gradient comes from; the paper leaves this open, so each reading
    is a switch (algo.client_grad)."""

    SERVER_AND_REGULARIZER = "server+reg"  # ∂L_i/∂s_i back-propagated + γ ∇L_rec (default reading)
    LOCAL_ONLY = "local_only"  # γ ∇L_rec only; no gradient goes down
    SERVER_ONLY = "server_only"  # ∂L_i/∂s_i only; the decoder still learns, but does not shape the lower model


class ReconstructionLoss(StrEnum):
    MSE = "mse"
    BCE = "bce"


@dataclass(frozen=True)
class ServerGradient:
    """The client back-propagates the cut-layer gradient of its own server loss, ∂L_i/∂s_i (SGLR Eq. 4); with a
    BatchNorm in a shared upper model, that of the joint batch's loss (engines/flow/server.py)."""


@dataclass(frozen=True)
class LocalClassifier:
    """LocSplitFed (Han et al. 2021): lower model + auxiliary head learn from a local CE loss only; nothing comes
    down from the server."""


@dataclass(frozen=True)
class Reconstruction:
    """LocFedMix-SL's *Loc* part: an InfoPro-style decoder h reconstructs x from s_i; the lower model receives
    γ ∇L_rec on top of (or instead of) the server gradient, the decoder learns from L_rec alone."""

    gamma: float = 1.0
    loss: ReconstructionLoss = ReconstructionLoss.MSE
    source: GradientSource = GradientSource.SERVER_AND_REGULARIZER


ClientObjective = ServerGradient | LocalClassifier | Reconstruction


@dataclass(frozen=True)
class SmashMix:
    """LocFedMix-SL's *Mix* part: manifold mixup of smashed data of different clients at the server.

    partners: n_s, the partners drawn per client per step; alpha: λ ~ Beta(α, α); per_sample: one λ per sample
    instead of one per pair; extra_step: the mixed loss drives a second server update instead of joining the first.
    """

    partners: int = 1
    alpha: float = 1.0
    per_sample: bool = False
    extra_step: bool = False


@dataclass(frozen=True)
class GradMix:
    """SGLR's *GradMix* / SplitAvg (Pal et al. 2021), reused by Mix2SFL: each step a random fraction φ of the
    participating clients receives, instead of its own cut gradient, the δ-weighted mean of that group's cut gradients
    (clients with equal batch shapes are averaged together)."""

    fraction: float = 0.5


@dataclass(frozen=True)
class Relay:
    """Sequential SL's hand-off: the client that trains next first receives the lower weights of the last one."""


@dataclass(frozen=True)
class FedAvg:
    """Data-size-weighted averaging of client models (LocFedMix-SL's *Fed* part; SplitFed's fed server).

    every_steps: average every T_c steps (0 = at the end of each round); average_heads: also average the auxiliary
    heads / decoders; average_server_copies: also average per-client upper copies (SplitFed v1).
    """

    every_steps: int = 0
    average_heads: bool = True
    average_server_copies: bool = False


Sync = Relay | FedAvg | None
