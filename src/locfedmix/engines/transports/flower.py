"""The Flower transport: the server's side of a deployment, where every client is a Flower SuperNode on its own
machine. Each call of the flow becomes messages through Flower's Grid (ServerApp → SuperLink → SuperNode →
ClientApp): a step's uploads are `train.forward` replies, its cut gradients go down in `train.backward`, the relay
and FedAvg move weights with `query.weights` and `train.load`. Tensors travel as ArrayRecords
(locfedmix.engines.transports.flower_records); every reply is checked before use. The wall-clock time and the serialized bytes of every
exchange are recorded (`stats`) beside the ledger's count."""

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from locfedmix.algorithms.fedavg import average_states
from locfedmix.engines.transports.flower_records import Refused, read_tensors, setting, tensors_message, wire_bytes
from locfedmix.deploy.settings import DeploySettings
from locfedmix.engines.flow.interfaces import Batches, ClientPool, Smashed, Weights
from locfedmix.errors import DeploymentError

MESSAGE_TYPES = {"hello": "query.hello", "forward": "train.forward", "backward": "train.backward",
                 "weights": "query.weights", "load": "train.load", "evaluate": "evaluate.smashed"}
Templates = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass
class Traffic:
    """Per kind of message: how many, the serialized bytes each way and the wall-clock seconds of its exchanges."""

    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_down: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def summary(self) -> dict[str, dict[str, float]]:
        return {kind: {"messages": self.messages[kind], "bytes_down": self.bytes_down[kind],
                       "bytes_up": self.bytes_up[kind], "seconds": self.seconds[kind]} for kind in self.messages}


class FlowerLink:
    """The server's transport to clients on SuperNodes (`nodes`: client id → node id). `templates` names every
    weight a client's lower model (`lower/...`) and head (`head/...`) holds, with shape and dtype, and `cut_shape`
    the smashed data's shape per sample: what replies are checked against. `restart`: a client that loads weights
    (the relay's hand-over, FedAvg's average) starts its optimizer afresh (`client_optimizer.on_sync = "reset"`).
    `traffic` carries on what an earlier link (the greeting) counted. `step` is set by the step executor."""

    def __init__(self, grid: Grid, nodes: dict[int, int], settings: DeploySettings, cut_shape: tuple[int, ...],
                 templates: Templates, digests: dict[int, str], restart: bool = False, traffic: Traffic | None = None):
        self.grid, self.nodes, self.settings, self.restart = grid, nodes, settings, restart
        self.cut_shape, self.templates, self.digests = cut_shape, templates, digests
        self.traffic = traffic or Traffic()
        self.step = 0
        self._positions: dict[int, torch.Tensor] = {}

    def exchange(self, kind: str, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send each client its content as one `kind` message, all at once, and wait for every reply."""
        if not contents:
            return {}
        started = time.perf_counter()
        messages = {i: Message(c, dst_node_id=self.nodes[i], message_type=MESSAGE_TYPES[kind])
                    for i, c in contents.items()}
        self.traffic.bytes_down[kind] += sum(wire_bytes(m) for m in messages.values())
        pending = dict(zip(self.grid.push_messages(list(messages.values())), messages))
        replies: dict[int, RecordDict] = {}
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                i = pending.pop(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    raise DeploymentError(f"client {i} failed {MESSAGE_TYPES[kind]}: {reply.error.reason}")
                self.traffic.bytes_up[kind] += wire_bytes(reply)
                replies[i] = reply.content
            if pending and time.perf_counter() - started > self.settings.timeout_s:
                raise DeploymentError(f"clients {sorted(pending.values())} did not answer {MESSAGE_TYPES[kind]} "
                                      f"within {self.settings.timeout_s:g} s")
            if pending:
                time.sleep(self.settings.poll_s)
        self.traffic.messages[kind] += len(contents)
        self.traffic.seconds[kind] += time.perf_counter() - started
        return replies

    def read(self, i: int, kind: str, content: RecordDict, expected: Templates) -> dict[str, torch.Tensor]:
        try:
            return read_tensors(content, expected, self.settings.limit_bytes)
        except Refused as err:
            raise DeploymentError(f"client {i}'s reply to {MESSAGE_TYPES[kind]} refused: {err}") from None

    def owns(self, i: int) -> bool:
        """The server speaks for every client (and computes none: `mine`)."""
        return True

    def mine(self, by_client: dict) -> dict:
        return {}

    def upload(self, smashed: Smashed, batches: Batches) -> tuple[Smashed, dict[int, torch.Tensor]]:
        """Every client of the step sends its smashed data and labels (`batches` holds each one's positions)."""
        self._positions = {i: rows for i, (rows, _) in batches.items()}
        replies = self.exchange("forward", {i: tensors_message({"positions": rows}, step=self.step)
                                            for i, rows in self._positions.items()})
        uploads, labels = {}, {}
        for i, content in replies.items():
            b = len(self._positions[i])
            got = self.read(i, "forward", content, {"smashed": ((b, *self.cut_shape), torch.float32),
                                                    "labels": ((b,), torch.int64)})
            uploads[i], labels[i] = got["smashed"], got["labels"]
        return replace(smashed, remote=uploads), labels

    def download(self, cut_grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Every client of the step gets its cut gradient (none where the algorithm sends none) and steps."""
        contents = {}
        for i, rows in self._positions.items():
            values = {"positions": rows} | ({"gradient": cut_grads[i]} if i in cut_grads else {})
            contents[i] = tensors_message(values, step=self.step, gradient=i in cut_grads)
        self._acknowledged("backward", self.exchange("backward", contents))
        return {}

    def _acknowledged(self, kind: str, replies: dict[int, RecordDict]) -> None:
        for i, content in replies.items():
            self.digests[i] = str(setting(content, "digest", ""))

    def fetch(self, ids: list[int], heads: bool) -> dict[int, Weights]:
        """The lower weights (and heads) of clients `ids`, as `lower/...` and `head/...`."""
        expected = {k: v for k, v in self.templates.items() if heads or k.startswith("lower/")}
        replies = self.exchange("weights", {i: RecordDict({"config": ConfigRecord({"heads": heads})}) for i in ids})
        return {i: self.read(i, "weights", content, expected) for i, content in replies.items()}

    def send_weights(self, ids: list[int], weights: Weights) -> None:
        heads = any(k.startswith("head/") for k in weights)
        self._acknowledged("load", self.exchange("load", {i: tensors_message(weights, heads=heads, restart=self.restart) for i in ids}))

    def broadcast_lower(self, pool: ClientPool, i: int) -> Weights:
        return {k.removeprefix("lower/"): v for k, v in self.fetch([i], False)[i].items()}

    def deliver_lower(self, pool: ClientPool, i: int, weights: Weights) -> None:
        self.send_weights([i], {f"lower/{k}": v for k, v in weights.items()})

    def average(self, pool: ClientPool, weights: list[float], heads: bool) -> None:
        """FedAvg on the server: the reporters (weight > 0) upload, the δ-weighted average goes to every client."""
        ids = [i for i, w in enumerate(weights) if w]
        states = self.fetch(ids, heads)
        averaged = average_states([states[i] for i in ids], [weights[i] for i in ids])
        self.send_weights(list(range(len(weights))), averaged)

    def identical(self, pool: ClientPool) -> bool:
        """Whether every client's lower model is the same, by the fingerprints their replies carried."""
        return len(set(self.digests.values())) == 1

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def gather(self, pool_state: dict) -> dict:
        return pool_state

    def scatter(self, state: dict) -> dict:
        return state
