"""The run directory: resolved config, metrics.csv flushed after every evaluation, an atomic checkpoint every
`checkpoint_every` rounds, summary.json at the end."""

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from locfedmix.config import Config
from locfedmix.errors import UserError

METRIC_COLUMNS = [
    "round", "step", "algorithm", "n_clients", "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
    "bytes_up", "bytes_down", "simulated_seconds",
]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    """Owns the files of one run; refuses to mix a new run into an old one unless told to overwrite or resume."""

    def __init__(self, path: str | Path, config: Config, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.metrics = self.path / "metrics.csv"
        self.checkpoint = self.path / "checkpoint.pt"
        if resume:
            return
        if self.metrics.exists() and not overwrite:
            raise UserError(f"'{self.path}' already holds a run; pass --overwrite, --resume it, or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint.unlink(missing_ok=True)
        _atomic_write(self.path / "config.toml", tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
        self.rewrite_metrics([])

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv holding exactly these rows (a resumed run drops rows written after its checkpoint)."""
        with self.metrics.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            writer.writerows([row[c] for c in METRIC_COLUMNS] for row in rows)

    def append(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
            f.flush()
            os.fsync(f.fileno())

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """One atomic save: a temporary file renamed over the last checkpoint, so a crash keeps the previous one."""
        tmp = self.checkpoint.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run stopped before its first one (it then starts over)."""
        if not self.checkpoint.exists():
            return None
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: name it instead of a traceback
            raise UserError(f"checkpoint '{self.checkpoint}' cannot be read: {type(err).__name__}") from None

    def write_examples(self, arrays: dict[str, np.ndarray]) -> None:
        """The leakage attack's example reconstructions (uint8 originals and reconstructions), replaced atomically."""
        tmp = self.path / "reconstructions.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self.path / "reconstructions.npz")

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
