"""The Flower transport: the server's side of a deployment, where every client is a Flower SuperNode on its own
machine. Each call of the flow becomes messages through Flower's Grid (ServerApp → SuperLink → SuperNode →
ClientApp): a step's uploads are `train.forward` replies, its cut gradients go down in `train.backward`, the relay
and FedAvg move weights with `query.weights` and `train.load`. Tensors travel as ArrayRecords
(transports/flower_records.py); every reply is checked before use.

Faults: a client whose node is gone during a step is lost (errors.ClientsLost; the flow drops it for the round, as
a failing client); one that comes back — or a node that restarted and lost its state — is told the global model
(the last FedAvg average) before it computes again; without one (psl, sglr) it starts afresh."""

from dataclasses import replace

import torch
from flwr.app import ConfigRecord, RecordDict

from locfedmix.algorithms.fedavg import average_states
from locfedmix.engines.flow.interfaces import Batches, ClientPool, Smashed, Weights
from locfedmix.engines.transports.flower_exchange import MESSAGE_TYPES, Messenger
from locfedmix.engines.transports.in_process import OneServerProcess
from locfedmix.engines.transports.flower_records import Refused, fingerprint, read_tensors, setting, tensors_message
from locfedmix.errors import ClientsLost, DeploymentError

Templates = dict[str, tuple[tuple[int, ...], torch.dtype]]


class FlowerLink(OneServerProcess):
    """The server's transport to clients on SuperNodes. `templates` names every weight a client's lower model
    (`lower/...`) and head (`head/...`) holds, with shape and dtype, and `cut_shape` the smashed data's shape per
    sample: what replies are checked against. `digests`: each client's lower-model fingerprint as the server knows
    it. `restart`: a client that loads weights starts its optimizer afresh (`client_optimizer.on_sync = "reset"`).
    `step` is set by the step executor."""

    def __init__(self, messenger: Messenger, cut_shape: tuple[int, ...], templates: Templates,
                 digests: dict[int, str], restart: bool = False):
        self.messenger, self.cut_shape, self.templates = messenger, cut_shape, templates
        self.digests, self.restart = digests, restart
        self.step = 0
        self.global_weights: Weights | None = None  # the last FedAvg average, for clients that come back
        self._positions: dict[int, torch.Tensor] = {}
        self._departed: set[int] = set()

    @property
    def traffic(self):
        return self.messenger.traffic

    def read(self, i: int, kind: str, content: RecordDict, expected: Templates) -> dict[str, torch.Tensor]:
        try:
            return read_tensors(content, expected, self.messenger.settings.limit_bytes)
        except Refused as err:
            raise DeploymentError(f"client {i}'s reply to {MESSAGE_TYPES[kind]} refused: {err}") from None

    def accept(self, i: int, kind: str, content: RecordDict, expected: Templates) -> dict[str, torch.Tensor] | None:
        """A reply's tensors, or None where they are not what was asked for: the client is then lost, the reason
        logged (a malformed or oversized reply never ends the run)."""
        try:
            return read_tensors(content, expected, self.messenger.settings.limit_bytes)
        except Refused as err:
            self.messenger.lose(i, kind, f"reply refused: {err}")
            return None

    def owns(self, i: int) -> bool:
        """The server speaks for every client (and computes none: `mine`)."""
        return True

    def mine(self, by_client: dict) -> dict:
        return {}

    def upload(self, smashed: Smashed, batches: Batches) -> tuple[Smashed, dict[int, torch.Tensor]]:
        """Every client of the step sends its smashed data and labels (`batches` holds each one's positions). A
        client whose model is not the one the server expects (its node restarted) is brought up to date first."""
        self._positions = {i: rows for i, (rows, _) in batches.items()}
        replies = self._forward(list(self._positions))
        stale = [i for i, content in replies.items() if setting(content, "stale", False)]
        if stale:
            self._refresh(stale, replies)
            replies |= self._forward(stale)
        uploads, labels = {}, {}
        for i, content in replies.items():
            b = len(self._positions[i])
            got = self.accept(i, "forward", content, {"smashed": ((b, *self.cut_shape), torch.float32),
                                                      "labels": ((b,), torch.int64)})
            if got is not None:
                uploads[i], labels[i] = got["smashed"], got["labels"]
        lost = set(self._positions) - set(uploads)
        if lost:
            raise ClientsLost(lost)
        return replace(smashed, remote=uploads), labels

    def _forward(self, ids: list[int]) -> dict[int, RecordDict]:
        contents = {i: tensors_message({"positions": self._positions[i]}, step=self.step, expect=self.digests[i])
                    for i in ids}
        return self.messenger.exchange("forward", contents, tolerate=True)

    def _refresh(self, stale: list[int], replies: dict[int, RecordDict]) -> None:
        """Clients that lost their state: the global model where there is one, else they go on from where they
        are (their own model was never anywhere else)."""
        if self.global_weights is not None:
            self.send_weights(stale, self.global_weights)
            return
        for i in stale:
            self.digests[i] = str(setting(replies[i], "digest"))

    def download(self, cut_grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Every client of the step gets its cut gradient (none where the algorithm sends none) and steps; one that
        is gone by now has lost this step (`departed`)."""
        contents = {}
        for i, rows in self._positions.items():
            values = {"positions": rows} | ({"gradient": cut_grads[i]} if i in cut_grads else {})
            contents[i] = tensors_message(values, step=self.step, gradient=i in cut_grads)
        replies = self.messenger.exchange("backward", contents, tolerate=True)
        self._acknowledged(replies)
        self._departed |= set(contents) - set(replies)
        return {}

    def departed(self) -> set[int]:
        gone, self._departed = self._departed, set()
        return gone

    def _acknowledged(self, replies: dict[int, RecordDict]) -> None:
        for i, content in replies.items():
            self.digests[i] = str(setting(content, "digest", ""))

    def fetch(self, ids: list[int], heads: bool, tolerate: bool = False) -> dict[int, Weights]:
        """The lower weights (and heads) of clients `ids`, as `lower/...` and `head/...`."""
        expected = {k: v for k, v in self.templates.items() if heads or k.startswith("lower/")}
        asked = {i: RecordDict({"config": ConfigRecord({"heads": heads})}) for i in ids}
        replies = self.messenger.exchange("weights", asked, tolerate)
        if not tolerate:
            return {i: self.read(i, "weights", content, expected) for i, content in replies.items()}
        states = {i: self.accept(i, "weights", content, expected) for i, content in replies.items()}
        return {i: state for i, state in states.items() if state is not None}

    def send_weights(self, ids: list[int], weights: Weights) -> None:
        """Clients `ids` load these weights; one whose node is gone gets them when it answers again."""
        heads = any(k.startswith("head/") for k in weights)
        contents = {i: tensors_message(weights, heads=heads, restart=self.restart) for i in ids}
        self._acknowledged(self.messenger.exchange("load", contents, tolerate=True))
        digest = fingerprint({k: v for k, v in weights.items() if k.startswith("lower/")}, "lower/")
        for i in set(ids) & self.messenger.lost:
            self.digests[i] = digest  # what it will hold once it is back

    def broadcast_lower(self, pool: ClientPool, i: int) -> Weights | None:
        """Client i's lower weights (the relay's hand-back), or None where its node is gone: its turn is lost."""
        got = self.fetch([i], False, tolerate=True).get(i)
        return None if got is None else {k.removeprefix("lower/"): v for k, v in got.items()}

    def deliver_lower(self, pool: ClientPool, i: int, weights: Weights) -> None:
        self.send_weights([i], {f"lower/{k}": v for k, v in weights.items()})

    def average(self, pool: ClientPool, weights: list[float], heads: bool) -> None:
        """FedAvg on the server: the reporters (weight > 0) upload, the δ-weighted average of those that answered
        goes to every client (one that is away takes it when it is back). A reporter that does not answer is left out
        of this average alone: the round it belonged to is over."""
        states = self.fetch([i for i, w in enumerate(weights) if w], heads, tolerate=True)
        if not states:
            return
        self.global_weights = average_states([states[i] for i in sorted(states)], [weights[i] for i in sorted(states)])
        self.send_weights(list(range(len(weights))), self.global_weights)

    def state_dict(self) -> dict:
        """What the server knows of its clients beyond the federation's state, for its checkpoint: the last FedAvg
        average, each client's fingerprint, the traffic and the losses so far."""
        return {"global_weights": self.global_weights, "digests": dict(self.digests),
                "traffic": self.traffic.state_dict(), "losses": list(self.messenger.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.global_weights, self.digests = state["global_weights"], dict(state["digests"])
        self.traffic.load_state_dict(state["traffic"])
        self.messenger.losses[:0] = state["losses"]

    def identical(self, pool: ClientPool) -> bool:
        """Whether every client's lower model is the same, by the fingerprints their replies carried."""
        return len(set(self.digests.values())) == 1

