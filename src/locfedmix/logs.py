"""The run's logs beside metrics.csv: events.jsonl (always) and TensorBoard scalars (`log.tensorboard = true`).

Both are kept consistent with `--resume`: a resumed run cuts them back to its checkpoint, so that a row redone after
the checkpoint appears once, and no row the checkpoint holds is lost."""

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from locfedmix.errors import UserError
from locfedmix.files import open_write


def _plain(value: Any) -> Any:
    """JSON has no NaN (an empty validation split gives NaN losses): write null, so every line parses strictly."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class EventLog:
    """events.jsonl: one JSON object per line (run start, every evaluation row, run end), flushed and synced as it is
    written, so that a reader tailing the file, or a run killed mid-way, has every event up to that moment."""

    def __init__(self, path: Path):
        self.path = path

    def reset(self) -> None:
        open_write(self.path, "w").close()

    def size(self) -> int:
        """Bytes written so far; the checkpoint records it so that a resume can cut the log back to that point."""
        return self.path.stat().st_size if self.path.exists() else 0

    def write(self, event: str, fields: dict[str, Any]) -> None:
        record = {"event": event, "time": datetime.now(UTC).isoformat(timespec="milliseconds")}
        record.update((key, _plain(value)) for key, value in fields.items())
        with open_write(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def cut_to(self, size: int | None, rows: list[dict[str, Any]]) -> None:
        """Drop what was written after the checkpoint (rows about to be redone, a line cut short by a kill). Without a
        usable size — a checkpoint older than this log, or a log shortened by hand — rebuild it from the rows."""
        if size is not None and self.size() >= size:
            with open_write(self.path, "ab") as f:  # O_NOFOLLOW, like every write of the run
                f.truncate(size)
            return
        self.reset()
        for row in rows:
            self.write("evaluation", row)


# metrics.csv column → TensorBoard tag; the x axis is the round.
TENSORBOARD_TAGS = {
    "test_accuracy": "accuracy/test", "val_accuracy": "accuracy/val", "train_loss": "loss/train",
    "val_loss": "loss/val", "test_loss": "loss/test", "bytes_up": "bytes/up", "bytes_down": "bytes/down",
    "simulated_seconds": "time/simulated_seconds",
}


class TensorBoardLog:
    """Every evaluation row as TensorBoard scalars, one step per round. A resumed run opens the writer with
    `purge_step` = the first round it redoes, so TensorBoard hides what the killed run wrote after its checkpoint."""

    def __init__(self, directory: Path, first_round: int, resumed: bool, config_toml: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("log.tensorboard=true needs the tensorboard package: "
                            "pip install 'locfedmix[tensorboard]' (or set log.tensorboard=false)") from None
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=first_round if resumed else None)
        if not resumed:
            self.writer.add_text("config", f"```toml\n{config_toml}```", global_step=0)

    def write(self, row: dict[str, Any]) -> None:
        for column, tag in TENSORBOARD_TAGS.items():
            self.writer.add_scalar(tag, row[column], global_step=row["round"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
