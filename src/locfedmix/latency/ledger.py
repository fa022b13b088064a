"""The communication ledger: every message between a client and the server, counted once as numel × element size."""

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn


class Direction(StrEnum):
    UP = "up"  # client → server
    DOWN = "down"  # server → client


class Kind(StrEnum):
    SMASHED = "smashed"  # cut-layer activations s_i
    LABELS = "labels"  # y_i (label sharing)
    GRADIENT = "gradient"  # cut-layer gradient ∂L_i/∂s_i
    LOWER = "lower"  # lower-model weights (FedAvg or relay hand-off)
    HEAD = "head"  # auxiliary classifier or decoder weights (FedAvg)


@dataclass(frozen=True)
class Message:
    client: int
    kind: Kind
    direction: Direction
    nbytes: int


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def module_bytes(module: nn.Module) -> int:
    """What sending a model costs: its whole state dict (parameters and buffers such as BatchNorm statistics)."""
    return sum(tensor_bytes(t) for t in module.state_dict().values())


class Ledger:
    """Collects the messages of the current step (or sync) and keeps running totals per direction, kind and client.

    label_bytes: bytes per label on the wire (labels are int64 in memory; a deployment may send them narrower).
    """

    def __init__(self, label_bytes: int = 8):
        self.label_bytes = label_bytes
        self.pending: list[Message] = []
        self.totals: dict[tuple[Direction, Kind], int] = defaultdict(int)
        self.per_client: dict[int, dict[Direction, int]] = defaultdict(lambda: {Direction.UP: 0, Direction.DOWN: 0})

    def send(self, client: int, kind: Kind, direction: Direction, nbytes: int) -> None:
        self.pending.append(Message(client, kind, direction, nbytes))

    def send_tensor(self, client: int, kind: Kind, direction: Direction, tensor: torch.Tensor) -> None:
        size = tensor.numel() * self.label_bytes if kind is Kind.LABELS else tensor_bytes(tensor)
        self.send(client, kind, direction, size)

    def close(self) -> list[Message]:
        """End the current step or sync: add its messages to the totals and hand them to the latency model."""
        messages, self.pending = self.pending, []
        for m in messages:
            self.totals[m.direction, m.kind] += m.nbytes
            self.per_client[m.client][m.direction] += m.nbytes
        return messages

    def total(self, direction: Direction) -> int:
        return sum(n for (d, _), n in self.totals.items() if d is direction)

    def summary(self) -> dict:
        """JSON-friendly totals: by direction/kind and by client."""
        return {
            "totals": {f"{d}/{k}": n for (d, k), n in sorted(self.totals.items())},
            "per_client": {c: {str(d): n for d, n in v.items()} for c, v in sorted(self.per_client.items())},
        }

    def state_dict(self) -> dict:
        """Plain strings and numbers only, so a checkpoint loads with torch.load(weights_only=True)."""
        return {"totals": {f"{d}/{k}": n for (d, k), n in self.totals.items()},
                "per_client": {c: {str(d): n for d, n in v.items()} for c, v in self.per_client.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.totals.clear()
        for key, n in state["totals"].items():
            direction, kind = key.split("/")
            self.totals[Direction(direction), Kind(kind)] = n
        self.per_client.clear()
        for client, sent in state["per_client"].items():
            self.per_client[client].update({Direction(d): n for d, n in sent.items()})
