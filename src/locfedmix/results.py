"""The run directory: resolved config, metrics.csv and events.jsonl flushed after every evaluation (TensorBoard
scalars too when `log.tensorboard`), an atomic checkpoint every `checkpoint_every` rounds, summary.json at the end."""

import csv
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w
import torch

from locfedmix.config import Config
from locfedmix.errors import UserError
from locfedmix.logs import EventLog, TensorBoardLog

if TYPE_CHECKING:
    from locfedmix.engines.flow.state import Federation

METRIC_COLUMNS = [
    "round", "step", "algorithm", "n_clients", "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
    "bytes_up", "bytes_down", "simulated_seconds",
]


# What api.run stores in a checkpoint (extra keys are tolerated: later versions may add some).
CHECKPOINT_LAYOUT = {"round": int, "rows": list, "train_seconds": (int, float), "federation": dict}


def _check_layout(state: Any, path: Path) -> None:
    """Refuse a checkpoint whose top level a resume could not use, naming the file instead of a KeyError later."""
    if not isinstance(state, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(state).__name__}, not a locfedmix checkpoint dict")
    for key, kind in CHECKPOINT_LAYOUT.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            needed = ", ".join(CHECKPOINT_LAYOUT)
            raise UserError(f"checkpoint '{path}' lacks a valid '{key}' entry; a checkpoint holds {needed}")
    if not all(isinstance(row, dict) and set(METRIC_COLUMNS) <= row.keys() for row in state["rows"]):
        raise UserError(f"checkpoint '{path}' has metric rows without the columns {', '.join(METRIC_COLUMNS)}")


def restore_federation(fed: "Federation", state: dict[str, Any], path: Path) -> None:
    """Load the checkpoint's federation state; a checkpoint made for another config (or edited) fails inside torch's
    load_state_dict with a KeyError, shape RuntimeError or similar, which names neither the file nor the cause."""
    try:
        fed.load_state_dict(state["federation"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(f"checkpoint '{path}' does not fit this run's config.toml ({reason})") from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    """Owns the files of one run; refuses to mix a new run into an old one unless told to overwrite or resume."""

    def __init__(self, path: str | Path, config: Config, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.config = config
        self.metrics = self.path / "metrics.csv"
        self.checkpoint = self.path / "checkpoint.pt"
        self.events = EventLog(self.path / "events.jsonl")
        self.tensorboard: TensorBoardLog | None = None
        if resume:
            return
        if self.metrics.exists() and not overwrite:
            raise UserError(f"'{self.path}' already holds a run; pass --overwrite, --resume it, "
                            "or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint.unlink(missing_ok=True)
        shutil.rmtree(self.path / "tensorboard", ignore_errors=True)  # an overwritten run's curves would mix in
        (self.path / "reconstructions.npz").unlink(missing_ok=True)  # an overwritten run's leakage pictures too
        _atomic_write(self.path / "config.toml", self._config_toml())
        self.rewrite_metrics([])
        self.events.reset()

    def _config_toml(self) -> str:
        return tomli_w.dumps(self.config.model_dump(mode="json", exclude_none=True))

    def begin(self, checkpoint: dict[str, Any] | None, resume: bool) -> None:
        """Open the logs and record the start. A resumed run first cuts metrics.csv and events.jsonl back to its
        checkpoint (a run killed before its first checkpoint starts over, so both are emptied)."""
        rows, done = (checkpoint["rows"], checkpoint["round"]) if checkpoint else ([], 0)
        if resume:
            self.rewrite_metrics(rows)
            self.events.cut_to(checkpoint.get("events_bytes") if checkpoint else 0, rows)
        if self.config.log.tensorboard:
            self.tensorboard = TensorBoardLog(self.path / "tensorboard", done + 1, resume, self._config_toml())
        self.events.write("run_start", {"algorithm": self.config.algorithm, "rounds": self.config.rounds,
                                        "seed": self.config.seed, "resumed_from_round": done if resume else None})

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv holding exactly these rows (a resumed run drops rows written after its checkpoint)."""
        with self.metrics.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            writer.writerows([row[c] for c in METRIC_COLUMNS] for row in rows)

    def append(self, row: dict[str, Any]) -> None:
        """One evaluation row, in every log: metrics.csv, events.jsonl and TensorBoard."""
        with self.metrics.open("a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
            f.flush()
            os.fsync(f.fileno())
        self.events.write("evaluation", row)
        if self.tensorboard:
            self.tensorboard.write(row)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """One atomic save: a temporary file renamed over the last checkpoint, so a crash keeps the previous one. It
        records how far events.jsonl has got, where a resume cuts it back to."""
        tmp = self.checkpoint.with_suffix(".pt.tmp")
        torch.save({**state, "events_bytes": self.events.size()}, tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run stopped before its first one (it then starts over). A run
        directory may come from elsewhere, so the file is read as data only (torch's weights-only unpickler: tensors,
        containers, numbers, strings) and its layout is checked before anything uses it."""
        if not self.checkpoint.exists():
            return None
        try:
            with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error below says it all
                warnings.simplefilter("ignore")
                state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            wanted = re.search(r"GLOBAL (\S+)", str(err))
            what = f"builds '{wanted.group(1)}'" if wanted else "holds pickle opcodes or objects"
            raise UserError(f"checkpoint '{self.checkpoint}' refused: it {what}, but a checkpoint may hold only "
                            f"tensors and plain data; resume only run directories written by locfedmix") from None
        except Exception as err:  # a truncated or foreign file: name it instead of a traceback
            raise UserError(f"checkpoint '{self.checkpoint}' cannot be read: {type(err).__name__}") from None
        _check_layout(state, self.checkpoint)
        return state

    def write_examples(self, arrays: dict[str, np.ndarray]) -> None:
        """The leakage attack's example reconstructions (uint8 originals and reconstructions), replaced atomically."""
        tmp = self.path / "reconstructions.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self.path / "reconstructions.npz")

    def finish(self, summary: dict[str, Any]) -> None:
        final = summary["final"]
        self.events.write("run_end", {"round": final["round"], "step": final["step"],
                                      "test_accuracy": final["test_accuracy"],
                                      "best_test_accuracy": summary["best_test_accuracy"],
                                      "time_to_target": summary["time_to_target"],
                                      "wall_seconds": summary["wall_seconds"]})
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        """Release the TensorBoard writer (also after a failed or interrupted run: every row is already flushed)."""
        if self.tensorboard:
            self.tensorboard.close()
