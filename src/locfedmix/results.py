"""The run directory: resolved config, metrics.csv flushed after every evaluation, summary.json at the end."""

import csv
import json
import os
from pathlib import Path
from typing import Any

import tomli_w

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
    """Owns the files of one run; refuses to mix a new run into an old one unless told to overwrite."""

    def __init__(self, path: str | Path, config: Config, overwrite: bool = False):
        self.path = Path(path)
        self.metrics = self.path / "metrics.csv"
        if self.metrics.exists() and not overwrite:
            raise UserError(f"'{self.path}' already holds a run; pass --overwrite or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / "config.toml", tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
        with self.metrics.open("w", newline="") as f:
            csv.writer(f).writerow(METRIC_COLUMNS)

    def append(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
