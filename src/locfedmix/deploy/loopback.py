"""A Flower Grid that delivers every message to ClientApps in this very process: the deployment's protocol (every
message built, its arrays serialized, every reply checked) without a SuperLink, SuperNodes or processes. It is how
the tests hold a deployment to the numbers of a run in one process for every algorithm in seconds, and how a user
tries a deployment config before starting machines. Time and reply order are not a network's."""

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from locfedmix.deploy.client_app import app as client_app
from locfedmix.deploy.server_app import serve


class LoopbackGrid(Grid):
    """`n` nodes, node k holding `node_configs[k]` (default: client k, `partition-id=k`), each with its own
    context kept between messages as a SuperNode keeps it; `silent` nodes never answer, `offline` ones are answered
    for by the Grid as the SuperLink answers for a node it lost (node unavailable)."""

    def __init__(self, run_config: dict[str, Any], n: int, app: ClientApp = client_app,
                 node_configs: list[dict[str, Any]] | None = None):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.app, self.run_config = app, run_config
        configs = node_configs or [{"partition-id": k, "num-partitions": n} for k in range(n)]
        self.contexts = {100 + k: Context(run_id=1, node_id=100 + k, node_config=c, state=RecordDict(),
                                          run_config=run_config) for k, c in enumerate(configs)}
        self.replies: dict[str, Message] = {}
        self.silent: set[int] = set()
        self.offline: set[int] = set()

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            if node in self.offline:
                self.replies[message.metadata.message_id] = Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"), reply_to=message)
            elif node not in self.silent:
                self.replies[message.metadata.message_id] = self.deliver(message)
        return ids

    def deliver(self, message: Message) -> Message:
        try:
            return self.app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as err:  # a ClientApp's exception reaches the server as an error reply, as on a SuperNode
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {err}"),
                           reply_to=message)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def set_run(self, run_id: int) -> None:
        """Nothing: one run."""

    @property
    def run(self) -> Any:
        return None

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_loopback(run_config: dict[str, Any], n: int) -> dict[str, Any]:
    """The deployment `run_config` describes, its n clients in this process; returns the summary."""
    return serve(LoopbackGrid(run_config, n), run_config)
