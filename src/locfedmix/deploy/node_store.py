"""A client's state kept on its own node between deployments: its lower model (and head) and optimizer, saved when
the server checkpoints, so that a server restarted with `deploy.resume` continues with every client where its
checkpoint left it. The state stays on the client's machine (in psl and SGLR the server never sees a client's
model); the node's `state-dir` (node config) says where. Files are written atomically, read back as data only
(torch's weights-only unpickler, bounded) and named by the deployment's id, so runs never mix."""

import io
import re
from pathlib import Path
from typing import Any

import torch

from locfedmix.files import atomic_write, read_bounded

KEEP = 2  # the server writes its checkpoint after the clients saved, so it is at most one save behind them
_DEPLOYMENT_ID = re.compile(r"[0-9a-f]{32}")
_SAVED = re.compile(r"client-(\d+)-round-(\d+)\.pt")


class NodeStore:
    """Client `client`'s saved states for deployment `deployment` under `root` (the node's state-dir), one file per
    checkpointed round: `root/locfedmix-<deployment>/client-<k>-round-<r>.pt`. `limit` bounds what a load reads."""

    def __init__(self, root: Path, deployment: str, client: int, limit: int):
        if not _DEPLOYMENT_ID.fullmatch(deployment):
            raise ValueError(f"deployment id {deployment[:40]!r} is not 32 hexadecimal digits")
        self.folder, self.client, self.limit = root / f"locfedmix-{deployment}", client, limit

    def path(self, round_index: int) -> Path:
        return self.folder / f"client-{self.client}-round-{round_index}.pt"

    def save(self, state: dict[str, Any], round_index: int) -> None:
        """This round's state on disk; of this client's earlier saves, the last KEEP - 1 are kept, the rest removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.path(round_index), lambda f: f.write(buffer.getvalue()))
        for old in sorted(self._saved_rounds(), reverse=True)[KEEP:]:
            self.path(old).unlink(missing_ok=True)

    def load(self, round_index: int) -> dict[str, Any] | None:
        """The state saved at this round, or None where there is none."""
        path = self.path(round_index)
        if not path.exists():
            return None
        raw = read_bounded(path, self.limit, "saved client state", ValueError)
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)

    def _saved_rounds(self) -> list[int]:
        return [int(m.group(2)) for p in self.folder.iterdir()
                if (m := _SAVED.fullmatch(p.name)) and int(m.group(1)) == self.client]
