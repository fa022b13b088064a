"""The Flower `ClientApp`: one client of a split-learning run on its own SuperNode. Each message the server sends
is one of the client's parts of a step or an exchange (docs/deploy.md says which message carries what):

    query.hello       → the client's id, sample count, label histogram, shapes, model fingerprint, whether it keeps
                        its state between runs (a state-dir)
    train.forward     step, batch positions → smashed data and labels (nothing kept)
    train.backward    step, batch positions, cut gradient (if any) → forward again, backward, optimizer step
    query.weights     → the lower model (and head): the relay's hand-back, FedAvg's upload
    train.load        lower model (and head) → loaded: the relay's hand-over, FedAvg's average
    evaluate.smashed  evaluation shards → their smashed data and labels, for the server's upper model
    train.save        deployment id, round → the client's state saved on its node (state-dir), beside the server's
                        checkpoint
    train.restore     deployment id, round → that saved state loaded: a restarted server's deployment continues

The client's models and optimizer live in the node's context between messages (`context.state`); a message that
does not hold what it must is answered with an error reply naming what is wrong. Its data are partition
`partition-id` of the config's dataset, or the node's own file (`data-path` in the node config; deploy/node.py);
its saved states are under the node's `state-dir` (deploy/node_store.py)."""

import json
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flwr.clientapp import ClientApp
from locfedmix.deploy.node import ClientNode, own_data, partition_data
from locfedmix.deploy.node_store import NodeStore
from locfedmix.engines.transports.flower_records import read_state, read_tensors, setting, state_record, tensors_message
from locfedmix.deploy.settings import client_of, deploy_settings, locfedmix_config

app = ClientApp()


def open_node(context: Context) -> ClientNode:
    """This node's client as the last message left it (the seeded initial models before the first step)."""
    config = locfedmix_config(dict(context.run_config))
    client = client_of(dict(context.node_config), config.n_clients)
    path = context.node_config.get("data-path")
    node = ClientNode(config, client, own_data(Path(str(path)), config) if path else partition_data(config, client))
    if "pool-tensors" in context.state.array_records:
        saved = RecordDict({"tensors": context.state.array_records["pool-tensors"],
                            "config": context.state.config_records["pool-structure"]})
        node.pool.load_state_dict(read_state(saved))
    return node


def keep(node: ClientNode, context: Context) -> None:
    """Store the client's models and optimizer in the node's context for the next message."""
    records = state_record(node.pool.state_dict())
    context.state["pool-tensors"] = records.array_records["tensors"]
    context.state["pool-structure"] = records.config_records["config"]


def limit(context: Context) -> int:
    return deploy_settings(dict(context.run_config)).limit_bytes


def positions(node: ClientNode, message: Message, context: Context) -> torch.Tensor:
    """The batch's positions in this client's samples, checked to be in range."""
    rows = read_tensors(message.content, {"positions": (None, torch.int64)}, limit(context))["positions"]
    if rows.dim() != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= len(node.data.y):
        raise ValueError(f"batch positions out of range for a client with {len(node.data.y)} samples")
    return rows


def acknowledge(node: ClientNode, message: Message) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"digest": node.digest()})}), reply_to=message)


@app.query("hello")
def hello(message: Message, context: Context) -> Message:
    node = open_node(context)
    evaluation = {split: len(y) for split, (_, y) in node.data.evaluation.items()}
    reply = ConfigRecord({"client": node.client, "samples": len(node.data.y), "digest": node.digest(),
                          "histogram": json.dumps(node.data.histogram()), "classes": node.data.n_classes,
                          "input_shape": json.dumps(list(node.data.input_shape)),
                          "evaluation": json.dumps(evaluation), "own": node.data.own,
                          "keeps": "state-dir" in context.node_config})
    return Message(RecordDict({"config": reply}), reply_to=message)


@app.train("forward")
def forward(message: Message, context: Context) -> Message:
    """The step's upload; a client whose model is not the one the server expects (its node restarted and lost its
    state) says so instead, with its fingerprint, and is brought up to date."""
    node = open_node(context)
    if setting(message.content, "expect", node.digest()) != node.digest():
        return Message(RecordDict({"config": ConfigRecord({"stale": True, "digest": node.digest()})}),
                       reply_to=message)
    smashed, labels = node.upload(positions(node, message, context), int(setting(message.content, "step")))
    return Message(tensors_message({"smashed": smashed, "labels": labels}), reply_to=message)


@app.train("backward")
def backward(message: Message, context: Context) -> Message:
    node = open_node(context)
    rows = positions(node, message, context)
    grad = None
    if setting(message.content, "gradient", False):
        expected = {"gradient": ((len(rows), *node.cut_shape), torch.float32)}
        grad = read_tensors(message.content, expected, limit(context))["gradient"]
    node.step(rows, int(setting(message.content, "step")), grad)
    keep(node, context)
    return acknowledge(node, message)


@app.query("weights")
def weights(message: Message, context: Context) -> Message:
    node = open_node(context)
    return Message(tensors_message(node.weights(bool(setting(message.content, "heads", False)))), reply_to=message)


@app.train("load")
def load(message: Message, context: Context) -> Message:
    node = open_node(context)
    node.load(read_tensors(message.content, node.expected(bool(setting(message.content, "heads", False))),
                           limit(context)))
    if setting(message.content, "restart", False):
        node.pool.restart_optimizer([node.client])
    keep(node, context)
    return acknowledge(node, message)


@app.evaluate("smashed")
def smashed(message: Message, context: Context) -> Message:
    """Each requested shard (split, start, stop) of the evaluation sets through the lower model (or through the
    weights the message brings: the relay's model after its holder failed)."""
    node = open_node(context)
    shards = json.loads(str(setting(message.content, "shards")))
    state = None
    if setting(message.content, "state", False):
        lower = read_tensors(message.content, node.expected(False), limit(context))
        state = {k.removeprefix("lower/"): v for k, v in lower.items()}
    out = {}
    for n, (split, start, stop) in enumerate(shards):
        if split not in node.data.evaluation or not 0 <= start < stop <= len(node.data.evaluation[split][1]):
            raise ValueError(f"evaluation shard {split} {start}..{stop} is not in this client's evaluation sets")
        out[f"smashed/{n}"], out[f"labels/{n}"] = node.inference(
            split, start, stop, int(setting(message.content, "batch_size")), int(setting(message.content, "step")),
            state)
    return Message(tensors_message(out), reply_to=message)


def store(node: ClientNode, message: Message, context: Context) -> tuple[NodeStore | None, int]:
    """Where this client keeps its states for the message's deployment (None: the node has no `state-dir`), and
    the message's round."""
    root = context.node_config.get("state-dir")
    deployment, round_index = str(setting(message.content, "deployment")), int(setting(message.content, "round"))
    return (NodeStore(Path(str(root)), deployment, node.client, limit(context)) if root else None), round_index


@app.train("save")
def save(message: Message, context: Context) -> Message:
    """The client's state saved on this node for the round the server checkpoints."""
    node = open_node(context)
    where, round_index = store(node, message, context)
    if where is None:
        raise ValueError("this node keeps no state between runs (its node config has no state-dir)")
    where.save(node.pool.state_dict(), round_index)
    return acknowledge(node, message)


@app.train("restore")
def restore(message: Message, context: Context) -> Message:
    """The state this node saved at the server's checkpoint round, loaded: the restarted deployment continues it."""
    node = open_node(context)
    where, round_index = store(node, message, context)
    state = where.load(round_index) if where else None
    if state is not None:
        node.pool.load_state_dict(state)
        keep(node, context)
    reply = ConfigRecord({"restored": state is not None, "digest": node.digest()})
    return Message(RecordDict({"config": reply}), reply_to=message)
