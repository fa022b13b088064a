"""Messages to many SuperNodes at once through Flower's Grid, and what came back: every reply checked for an error,
its serialized size and the exchange's wall-clock time counted per kind of message. Where the caller can go on
without a client (a step, FedAvg), a client that does not answer properly — its node is gone, its ClientApp failed,
no reply came in time, or the reply was malformed — is set apart as lost, with the reason logged and recorded;
elsewhere it ends the run with a DeploymentError naming it."""

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from locfedmix.deploy.settings import DeploySettings
from locfedmix.engines.transports.flower_records import wire_bytes
from locfedmix.errors import DeploymentError

MESSAGE_TYPES = {"hello": "query.hello", "forward": "train.forward", "backward": "train.backward",
                 "weights": "query.weights", "load": "train.load", "evaluate": "evaluate.smashed",
                 "save": "train.save", "restore": "train.restore"}
COUNTS = ("messages", "exchanges", "bytes_down", "bytes_up", "seconds")
log = logging.getLogger(__name__)
GONE = {ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.CLIENT_APP_CRASHED}


@dataclass
class Traffic:
    """Per kind of message: how many, in how many exchanges (all sent at once, all replies awaited), the serialized
    bytes each way and the wall-clock seconds of its exchanges; and the wall-clock seconds of the training steps."""

    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    exchanges: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_down: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    step_seconds: float = 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        return {kind: {"messages": self.messages[kind], "exchanges": self.exchanges[kind],
                       "bytes_down": self.bytes_down[kind],
                       "bytes_up": self.bytes_up[kind], "seconds": self.seconds[kind]} for kind in self.messages}

    def state_dict(self) -> dict:
        """The counts so far, as plain data: a resumed deployment goes on counting from them."""
        return {name: dict(getattr(self, name)) for name in COUNTS} | {"step_seconds": self.step_seconds}

    def load_state_dict(self, state: dict) -> None:
        """Add the counts of the checkpoint's runs to this one's (its greeting is counted already)."""
        for name in COUNTS:
            for kind, value in state[name].items():
                getattr(self, name)[kind] += value
        self.step_seconds += state["step_seconds"]


class Messenger:
    """Client id → node id (`nodes`), with the clients whose node was lost; `traffic` counts everything sent. `who`
    names the keys of `nodes` in messages ("SuperNode" while they are node ids, before the greeting)."""

    def __init__(self, grid: Grid, nodes: dict[int, int], settings: DeploySettings, traffic: Traffic | None = None,
                 who: str = "client"):
        self.grid, self.nodes, self.settings, self.who = grid, nodes, settings, who
        self.traffic = traffic or Traffic()
        self.lost: set[int] = set()
        self.losses: list[dict[str, object]] = []  # every time a client was found gone: message, client, why

    def exchange(self, kind: str, contents: dict[int, RecordDict], tolerate: bool = False) -> dict[int, RecordDict]:
        """Send each client its content as one `kind` message, all at once, and wait for every reply. With
        `tolerate`, a client that answers with an error or not in time is lost (`lose`) and left out of the
        replies (it is asked again next time: a node may come back); otherwise it ends the run with a
        DeploymentError naming it."""
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
                if reply.has_error() and not tolerate:
                    raise DeploymentError(f"{self.who} {i} failed {MESSAGE_TYPES[kind]}: {reply.error.reason}")
                if reply.has_error():
                    gone = "node gone" if reply.error.code in GONE else "failed"
                    self.lose(i, kind, f"{gone}: {reply.error.reason}")
                    continue
                self.traffic.bytes_up[kind] += wire_bytes(reply)
                self.lost.discard(i)
                replies[i] = reply.content
            waited = time.perf_counter() - started
            if pending and waited > (self.settings.reply_timeout_s if tolerate else self.settings.timeout_s):
                if not tolerate:
                    raise DeploymentError(f"{self.who}s {sorted(pending.values())} did not answer "
                                          f"{MESSAGE_TYPES[kind]} within {self.settings.timeout_s:g} s")
                for i in pending.values():
                    self.lose(i, kind, f"no reply within {self.settings.reply_timeout_s:g} s")
                break
            if pending:
                time.sleep(self.settings.poll_s)
        self.traffic.messages[kind] += len(contents)
        self.traffic.exchanges[kind] += 1
        self.traffic.seconds[kind] += time.perf_counter() - started
        return replies

    def lose(self, i: int, kind: str, why: str) -> None:
        """Client i is lost at this kind of message, for the reason `why` (logged, and kept in `losses`)."""
        self.lost.add(i)
        self.losses.append({"message": MESSAGE_TYPES[kind], "client": i, "reason": why})
        log.warning("client %d lost at %s: %s", i, MESSAGE_TYPES[kind], why)
