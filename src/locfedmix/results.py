"""The run directory: resolved config, metrics.csv and events.jsonl flushed after every evaluation (TensorBoard
scalars too when `log.tensorboard`), an atomic checkpoint every `checkpoint_every` rounds, summary.json at the end."""

import csv
import json
import math
import os
import pickle
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

import numpy as np
import tomli_w
import torch

from locfedmix.config import Config
from locfedmix.errors import RunFault, UserError
from locfedmix.files import atomic_write, open_regular, open_write, reason
from locfedmix.logs import EventLog, TensorBoardLog
from locfedmix.run_guard import check_same_experiment, experiment_record, open_run_folder

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


def _plain(value: Any) -> Any:
    """summary.json is strict JSON: a float that is not finite (the loss of an empty validation split, a run in which
    nothing trained) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


class _KeepsWriteError:
    """A file for torch.save that keeps the OSError a write met (a full disk): torch's zip writer swallows it and
    reports only 'unexpected pos'."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(state: dict[str, Any], file: BinaryIO) -> None:
    sink = _KeepsWriteError(file)
    try:
        torch.save(state, sink)
    except RuntimeError:
        if sink.error:
            raise sink.error from None
        raise


class RunDirectory:
    """Owns the files of one run; refuses to mix a new run into an old one, or to touch a folder it did not write,
    unless told to overwrite or resume; holds the folder's lock (when `lock`) until `close`."""

    def __init__(self, path: str | Path, config: Config, overwrite: bool = False, resume: bool = False,
                 lock: bool = True):
        self.path = Path(path)
        self.config = config
        self.metrics = self.path / "metrics.csv"
        self.checkpoint = self.path / "checkpoint.pt"
        self.events = EventLog(self.path / "events.jsonl")
        self.tensorboard: TensorBoardLog | None = None
        self.saved_round: int | None = None  # the round of the last checkpoint on disk
        self.lock = open_run_folder(self.path, overwrite, resume, lock)
        if resume:
            return
        try:
            self.write_config()
            self.rewrite_metrics([])
            self.events.reset()
        except OSError as err:
            self.close()
            raise UserError(f"run directory '{self.path}' cannot be written: {reason(err)}") from None

    def fault(self, path: Path, err: OSError) -> RunFault:
        """A write refused mid-run, said with the checkpoint it leaves intact (there may be none)."""
        kept = (f"the last checkpoint '{self.checkpoint}' (round {self.saved_round}) is intact (--resume "
                f"'{self.path}' once the cause is fixed)" if self.saved_round is not None else
                "no checkpoint had been written yet")
        return RunFault(f"cannot write '{path}': {reason(err)}; {kept}")

    def write_config(self) -> None:
        """config.toml: the run's config (a resumed deployment, whose config comes from Flower's run config, writes
        it again: its rounds may have grown)."""
        atomic_write(self.path / "config.toml", lambda f: f.write(self._config_toml().encode()))

    def _config_toml(self) -> str:
        return tomli_w.dumps(self.config.model_dump(mode="json", exclude_none=True))

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """A refused write (full disk, read-only filesystem, a link planted mid-run) as one RunFault naming it."""
        try:
            yield
        except OSError as err:
            raise self.fault(Path(err.filename) if err.filename else path, err) from None

    def begin(self, checkpoint: dict[str, Any] | None, resume: bool) -> None:
        """Open the logs and record the start. A resumed run first cuts metrics.csv and events.jsonl back to its
        checkpoint (a run killed before its first checkpoint starts over, so both are emptied)."""
        rows, done = (checkpoint["rows"], checkpoint["round"]) if checkpoint else ([], 0)
        with self._writing(self.path):
            if resume:
                self.rewrite_metrics(rows)
                self.events.cut_to(checkpoint.get("events_bytes") if checkpoint else 0, rows)
            if self.config.log.tensorboard:
                self.tensorboard = TensorBoardLog(self.path / "tensorboard", done + 1, resume, self._config_toml())
            self.events.write("run_start", {"algorithm": self.config.algorithm, "rounds": self.config.rounds,
                                            "seed": self.config.seed, "resumed_from_round": done if resume else None})

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv holding exactly these rows (a resumed run drops rows written after its checkpoint)."""
        with open_write(self.metrics, "w") as f:
            writer = csv.writer(f)
            writer.writerow(METRIC_COLUMNS)
            writer.writerows([row[c] for c in METRIC_COLUMNS] for row in rows)

    def append(self, row: dict[str, Any]) -> None:
        """One evaluation row, in every log: metrics.csv, events.jsonl and TensorBoard."""
        with self._writing(self.metrics):
            with open_write(self.metrics, "a") as f:
                csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
                f.flush()
                os.fsync(f.fileno())
            self.events.write("evaluation", row)
            if self.tensorboard:
                self.tensorboard.write(row)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """One atomic save: a temporary file renamed over the last checkpoint, so a crash or a full disk keeps the
        previous one. It records how far events.jsonl has got, where a resume cuts it back to, and the experiment
        (the resolved config and its fingerprint), which a resume must continue."""
        experiment, fingerprint = experiment_record(self.config)
        record = {**state, "events_bytes": self.events.size(), "experiment": experiment, "fingerprint": fingerprint}
        with self._writing(self.checkpoint):
            atomic_write(self.checkpoint, lambda f: _torch_save(record, f))
        self.saved_round = state["round"]

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run stopped before its first one (it then starts over). A run
        directory may come from elsewhere, so the file is read as data only (torch's weights-only unpickler: tensors,
        containers, numbers, strings) and its layout is checked before anything uses it."""
        if not self.checkpoint.exists():
            return None
        try:
            with warnings.catch_warnings(), open_regular(self.checkpoint, "checkpoint") as f:
                warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols; the error says it all
                state = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            wanted = re.search(r"GLOBAL (\S+)", str(err))
            what = f"builds '{wanted.group(1)}'" if wanted else "holds pickle opcodes or objects"
            raise UserError(f"checkpoint '{self.checkpoint}' refused: it {what}, but a checkpoint may hold only "
                            f"tensors and plain data; resume only run directories written by locfedmix") from None
        except UserError:
            raise
        except Exception as err:  # a truncated or foreign file: name it instead of a traceback
            raise UserError(f"checkpoint '{self.checkpoint}' cannot be read: {type(err).__name__}") from None
        _check_layout(state, self.checkpoint)
        check_same_experiment(state, self.config, self.checkpoint)
        self.saved_round = state["round"]
        return state

    def write_examples(self, arrays: dict[str, np.ndarray]) -> None:
        """The leakage attack's example reconstructions (uint8 originals and reconstructions), replaced atomically."""
        path = self.path / "reconstructions.npz"
        with self._writing(path):
            atomic_write(path, lambda f: np.savez_compressed(f, **arrays))

    def finish(self, summary: dict[str, Any]) -> None:
        final, path = summary["final"], self.path / "summary.json"
        with self._writing(path):
            self._finish(summary, final, path)

    def _finish(self, summary: dict[str, Any], final: dict[str, Any], path: Path) -> None:
        self.events.write("run_end", {"round": final["round"], "step": final["step"],
                                      "test_accuracy": final["test_accuracy"],
                                      "best_test_accuracy": summary["best_test_accuracy"],
                                      "time_to_target": summary["time_to_target"],
                                      "wall_seconds": summary["wall_seconds"]})
        text = json.dumps(_plain(summary), indent=2, allow_nan=False) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))

    def close(self) -> None:
        """Release the TensorBoard writer and the lock (also after a failed or interrupted run: every row is already
        flushed)."""
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None
        if self.lock:
            self.lock.release()
