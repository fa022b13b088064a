"""Checkpoints of a deployment, and a server restarted from one (`deploy.resume`). The server's checkpoint holds
what it owns: the upper model(s), the ledger, the clock, the relay's state, the last FedAvg average and each
client's fingerprint. The clients' models and optimizers stay on their machines: at every round the server
checkpoints, each client whose node keeps state (a `state-dir`) first saves its state there (`train.save`;
deploy/node_store.py), and a restarted server asks each to load its state of the checkpoint's round
(`train.restore`). A client that cannot (its node
keeps no `state-dir`, or lost it) is found stale at its next step, as a node that restarted is: it takes the last
FedAvg average, or goes on from its initial model where the algorithm has none; a relay holder among them hands
nothing back (its turn is lost, as when a holder fails)."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import ConfigRecord, RecordDict

from locfedmix.config import Config
from locfedmix.engines.flow.state import Federation
from locfedmix.engines.transports.flower import FlowerLink
from locfedmix.engines.transports.flower_records import setting
from locfedmix.errors import UserError
from locfedmix.rounds import checkpoint_due

log = logging.getLogger(__name__)


def new_deployment_id() -> str:
    """The id naming a deployment's saved client states on every node (kept in the server's checkpoint)."""
    return uuid4().hex


def _ask(link: FlowerLink, kind: str, ids: list[int], deployment: str, round_index: int) -> dict[int, RecordDict]:
    record = {"deployment": deployment, "round": round_index}
    contents = {i: RecordDict({"config": ConfigRecord(record)}) for i in ids}
    return link.messenger.exchange(kind, contents, tolerate=True)


def checkpointing(link: FlowerLink, config: Config, state: dict[str, Any],
                  keeping: list[int]) -> Callable[[Federation, int], None]:
    """The round hook (Workload.after_round) of a deployment: at a round the server checkpoints, the clients whose
    nodes keep state (`keeping`: a state-dir) save theirs first, and the link's state joins what the server's
    checkpoint holds (`state`)."""
    others = sorted(set(link.digests) - set(keeping))
    if others and config.checkpoint_every:
        log.info("clients %s keep no state on their nodes (no state-dir): a resumed deployment restarts them from "
                 "the last FedAvg average, or from their initial model", others)

    def after_round(fed: Federation, round_index: int) -> None:
        if checkpoint_due(config, round_index):
            _ask(link, "save", keeping, state["deployment"], round_index)
            state["link"] = link.state_dict()

    return after_round


def resumed_state(checkpoint: dict[str, Any], defaults: dict[str, Any], path: Path) -> dict[str, Any]:
    """The loop's state as the checkpoint left it, with the deployment's id and the link's state; a checkpoint
    that a run in one process wrote (it has neither) is refused in one line."""
    if not isinstance(checkpoint.get("deployment"), str) or not isinstance(checkpoint.get("link"), dict):
        raise UserError(f"checkpoint '{path}' was not written by a deployment (it names no deployment id); resume "
                        "it with `locfedmix run --resume`, or start this deployment in another deploy.out")
    return {key: checkpoint.get(key, default) for key, default in defaults.items()} | {"link": checkpoint["link"]}


def restore_clients(fed: Federation, link: FlowerLink, state: dict[str, Any], keeping: list[int]) -> dict[str, Any]:
    """After the server's checkpoint is loaded: every client that keeps state loads its state of the checkpoint's
    round. Returns which did and which did not (for summary.json)."""
    link.load_state_dict(state["link"])
    replies = _ask(link, "restore", keeping, state["deployment"], state["round"])
    restored = sorted(i for i, content in replies.items() if setting(content, "restored", False))
    behind = sorted(set(link.digests) - set(restored))
    if fed.holder in behind:
        fed.holder = None
    if behind:
        log.warning("clients %s did not restore their state of round %d; they continue as nodes that restarted",
                    behind, state["round"])
    return {"from_round": state["round"], "restored": restored, "not_restored": behind}
