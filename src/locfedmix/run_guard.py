"""What a run directory may hold and what a resume may change: the files locfedmix writes there (the only ones it ever
replaces or removes), the checks before a run writes into a folder, and the fingerprint of the experiment a
checkpoint continues (SECURITY.md, section 6)."""

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from locfedmix.config import Config, validate
from locfedmix.errors import UserError
from locfedmix.files import RunLock, reason

# Every name locfedmix writes in a run directory; --overwrite removes these and nothing else.
RUN_FILES = ("config.toml", "metrics.csv", "events.jsonl", "summary.json", "checkpoint.pt", "reconstructions.npz")
TEMPORARY_FILES = tuple(f"{name}.tmp" for name in RUN_FILES)
TENSORBOARD = "tensorboard"
# The only files TensorBoard's writer creates in its folder.
TENSORBOARD_PREFIX = "events.out.tfevents."
# A resume continues one experiment: the config may differ from the checkpoint's in these keys alone.
MAY_GROW = "rounds"


def _refuse_links(path: Path) -> None:
    """A run never writes through a symbolic link, so a link under one of its names is refused before anything."""
    for name in (*RUN_FILES, *TEMPORARY_FILES, TENSORBOARD, RunLock.NAME):
        if (path / name).is_symlink():
            raise UserError(f"'{path / name}' is a symbolic link; locfedmix writes only regular files in a run "
                            "directory: remove the link or choose another --out")


def _entries(path: Path) -> list[str]:
    try:
        return sorted(set(os.listdir(path)) - {RunLock.NAME})
    except NotADirectoryError:
        raise UserError(f"--out '{path}' exists and is not a directory; choose a directory for the run") from None
    except OSError as err:
        raise UserError(f"run directory '{path}' cannot be listed: {reason(err)}") from None


def _refuse_occupied(path: Path, entries: list[str]) -> None:
    if set(entries) >= {"config.toml", "metrics.csv"}:
        raise UserError(f"'{path}' already holds a run; overwrite it (overwrite=True in Python, --overwrite on the "
                        "command line), resume it (resume=True, --resume) or write elsewhere")
    shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
    raise UserError(f"'{path}' is not empty ({shown}) and holds no locfedmix run; choose an empty or new --out, or "
                    f"overwrite it (overwrite=True, --overwrite), which replaces only the files locfedmix writes ({', '.join(RUN_FILES)})")


def _remove_own_files(path: Path) -> None:
    """What a previous run wrote, by name; a user's other files in the folder stay."""
    for name in (*RUN_FILES, *TEMPORARY_FILES):
        (path / name).unlink(missing_ok=True)
    board = path / TENSORBOARD
    if board.is_dir():  # its event files would mix an overwritten run's curves into the new one
        for event_file in board.glob(f"{TENSORBOARD_PREFIX}*"):
            event_file.unlink()
        if not any(board.iterdir()):
            board.rmdir()


def open_run_folder(path: Path, overwrite: bool, resume: bool, lock: bool) -> RunLock | None:
    """Make `path` ready for a run, holding its lock (when `lock`): a new run needs a new or empty folder, or
    --overwrite; a resume needs the folder. Every refusal is one line, before any file in the folder changes."""
    if resume and not (path / "config.toml").is_file():
        raise UserError(f"'{path}' holds no run to resume (no config.toml)")
    if not resume and os.path.lexists(path) and _entries(path) and not overwrite:
        _refuse_occupied(path, _entries(path))
    if path.is_dir():
        _refuse_links(path)  # before the lock file is made; the writes' O_NOFOLLOW covers a link planted later
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out '{path}' exists and is not a directory; choose a directory for the run") from None
    except OSError as err:
        raise UserError(f"run directory '{path}' cannot be created: {reason(err)}") from None
    held = RunLock(path) if lock else None
    try:
        if not resume and _entries(path) and not overwrite:  # written meanwhile by a process that left
            _refuse_occupied(path, _entries(path))
        if not resume:
            _remove_own_files(path)
    except (OSError, UserError) as err:
        if held:
            held.release()
        if isinstance(err, OSError):
            raise UserError(f"run directory '{path}' cannot be prepared: {reason(err)}") from None
        raise
    return held


def experiment_record(config: Config) -> tuple[str, str]:
    """The resolved config as canonical JSON and the fingerprint of the experiment: its SHA-256 without `rounds`."""
    tree = config.model_dump(mode="json")
    fixed = {key: value for key, value in tree.items() if key != MAY_GROW}
    return json.dumps(tree, sort_keys=True), hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


# Settings whose default changed what a run computes when they were added: a config.toml or checkpoint record
# written before them meant the behaviour of its time (pixels in [0, 1] before input standardization).
BEFORE_THEY_EXISTED = {("data", "normalize"): False}


def as_written_then(tree: dict[str, Any]) -> dict[str, Any]:
    """A config tree read from an earlier run with the settings it predates set to what it did then."""
    for (section, key), value in BEFORE_THEY_EXISTED.items():
        if isinstance(tree.setdefault(section, {}), dict):
            tree[section].setdefault(key, value)
    return tree


def _completed(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded experiment with every setting added since at its default (or at what it did then, above): a
    checkpoint from before a new key resumes when the key keeps its default."""
    try:
        return json.loads(experiment_record(validate(as_written_then(copy.deepcopy(record))))[0])
    except UserError:  # a record this version cannot read as a config: compared as it stands
        return record


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def check_same_experiment(state: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse to resume a checkpoint under a config that changes its experiment, naming the keys that differ; only
    `rounds` may grow. A checkpoint written before fingerprints were recorded carries none and is not checked."""
    if "experiment" not in state:
        return
    recorded, fingerprint = state.get("experiment"), state.get("fingerprint")
    try:
        before = json.loads(recorded)
    except (TypeError, ValueError):
        before = None
    if not isinstance(before, dict) or type(before.get(MAY_GROW)) is not int:
        raise UserError(f"checkpoint '{path}' has an unreadable 'experiment' record")
    now = json.loads(experiment_record(config)[0])
    old, new = _flat(_completed(before)), _flat(now)
    changed = [f"{key} ({old.get(key)!r} → {new.get(key)!r})" for key in sorted(old.keys() | new.keys())
               if key != MAY_GROW and old.get(key) != new.get(key)]
    if changed:
        raise UserError(f"config.toml beside '{path}' changes the experiment its checkpoint continues: "
                        f"{', '.join(changed)}; a resume may only raise rounds (start a new run for another "
                        "experiment)")
    if config.rounds < before[MAY_GROW]:
        raise UserError(f"config.toml beside '{path}' lowers rounds from {before[MAY_GROW]} to {config.rounds}; a "
                        "resume may only raise rounds")
    fixed = {key: value for key, value in before.items() if key != MAY_GROW}
    if fingerprint != hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest():
        raise UserError(f"checkpoint '{path}' has an 'experiment' record that does not match its fingerprint")
