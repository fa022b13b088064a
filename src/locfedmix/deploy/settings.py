"""What a deployment reads from Flower's run config and node config. The run config (`[tool.flwr.app.config]` of
the app's pyproject.toml, overridden by `flwr run --run-config`) holds the locfedmix config as its keys (nested
tables flatten to dotted keys: `data.normalize`) and the deployment's own settings under `deploy.`; a node's config
(`flower-supernode --node-config`) says which client it is and where its data are."""

from dataclasses import dataclass
from typing import Any

from locfedmix.config import Config, validate
from locfedmix.errors import UserError

DEPLOY = "deploy."


@dataclass(frozen=True)
class DeploySettings:
    """out: the server's run directory (overwrite: replace a run of ours there; resume: continue the run whose
    checkpoint is there, each client from the state its node saved then); timeout_s: how long the server
    waits for the SuperNodes to connect and for a reply it cannot do without (the greeting, an evaluation);
    reply_timeout_s: how long it waits for a step's or an exchange's reply before that client counts as lost (a
    dead node that Flower has not yet reported); max_message_mb: the largest tensor payload a message may carry;
    poll_s: how often the server asks the SuperLink for replies."""

    out: str = "runs/flower"
    overwrite: bool = False
    resume: bool = False
    timeout_s: float = 600.0
    reply_timeout_s: float = 120.0
    max_message_mb: float = 512.0
    poll_s: float = 0.02

    @property
    def limit_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)


def locfedmix_config(run_config: dict[str, Any]) -> Config:
    """The locfedmix config in a run config: every key not under `deploy.`, dotted keys nested."""
    tree: dict[str, Any] = {}
    for key, value in run_config.items():
        if key.startswith(DEPLOY):
            continue
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return validate(tree)


def deploy_settings(run_config: dict[str, Any]) -> DeploySettings:
    known = {f"{DEPLOY}{name.replace('_', '-')}": name for name in DeploySettings.__dataclass_fields__}
    unknown = sorted(k for k in run_config if k.startswith(DEPLOY) and k not in known)
    if unknown:
        raise UserError(f"unknown deployment setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return DeploySettings(**{known[k]: v for k, v in run_config.items() if k in known})


def client_of(node_config: dict[str, Any], n_clients: int) -> int:
    """The client this node is: its `partition-id` (Flower's name for it), 0 ≤ id < n_clients."""
    if "partition-id" not in node_config:
        raise UserError("the SuperNode's --node-config needs partition-id=<client id>")
    client = node_config["partition-id"]
    if not isinstance(client, int) or not 0 <= client < n_clients:
        raise UserError(f"partition-id={client!r} is invalid; it must be an integer in 0..{n_clients - 1}")
    return client
