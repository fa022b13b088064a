"""Finding and reading run directories: a run directory is a folder holding both metrics.csv and summary.json."""

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locfedmix.errors import UserError
from locfedmix.files import read_bounded


@dataclass(frozen=True)
class Run:
    name: str  # the run's path below the DIR it was found in ('psl' in runs/default), or its folder's name
    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.csv, numbers as floats

    @property
    def algorithm(self) -> str:
        return self.summary["algorithm"]


# Far beyond any run's files (a 10,000-round run's metrics.csv is about 2 MB); a larger file is not one of ours.
MAX_SUMMARY_BYTES = 2**26
MAX_METRICS_BYTES = 2**28
# What the report reads from each file; anything else in them is ignored.
METRICS_USED = ("round", "test_accuracy", "bytes_up", "bytes_down", "simulated_seconds")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv rows with every column but `algorithm` as a float; a file that is not one names itself."""
    try:
        text = read_bounded(path, MAX_METRICS_BYTES, "metrics file").decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [column for column in METRICS_USED if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"it lacks the column(s) {', '.join(missing)}")
        return [{k: (v if k == "algorithm" else float(v)) for k, v in row.items()} for row in reader]
    except (ValueError, TypeError, csv.Error) as err:
        raise UserError(f"'{path}' is not a readable metrics.csv: {err}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary_problem(summary: Any) -> str | None:
    """What keeps `summary` from being a summary.json the report can use, or None."""
    if not isinstance(summary, dict):
        return f"it holds a JSON {type(summary).__name__}, not an object"
    target = summary.get("time_to_target")
    histograms = summary.get("label_histograms")
    if not isinstance(summary.get("algorithm"), str):
        return "'algorithm' is not a string"
    if not (isinstance(target, dict) and isinstance(target.get("reached"), bool)
            and _is_number(target.get("target_accuracy"))
            and (not target["reached"] or all(_is_number(target.get(k)) for k in ("simulated_seconds", "round")))):
        return "'time_to_target' is not {reached, target_accuracy[, simulated_seconds, round]}"
    if not (isinstance(histograms, list) and histograms and all(
            isinstance(h, list) and h and all(type(n) is int and n >= 0 for n in h) for h in histograms)):
        return "'label_histograms' is not a list of per-client lists of counts"
    return None


def read_run(path: Path, name: str) -> Run:
    file = path / "summary.json"
    try:
        summary = json.loads(read_bounded(file, MAX_SUMMARY_BYTES, "summary file"))
    except (ValueError, RecursionError) as err:
        raise UserError(f"'{file}' is not a readable summary: {err}") from None
    problem = _summary_problem(summary)
    if problem:
        raise UserError(f"'{file}' is not a locfedmix summary: {problem}")
    rows = read_metrics(path / "metrics.csv")
    if not rows:
        raise UserError(f"'{path / 'metrics.csv'}' has no rows")
    return Run(name, path, summary, rows)


def _run_paths(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"'{root}' is not a directory; pass a run directory or a folder holding run directories")
    found = sorted(p.parent for p in root.rglob("summary.json") if (p.parent / "metrics.csv").is_file())
    if not found:
        raise UserError(f"'{root}' holds no run (no folder with both metrics.csv and summary.json)")
    return found


def find_runs(directories: list[str | Path]) -> list[Run]:
    """Every run in or under each directory, named by its path below that directory (prefixed by the directory's
    own name when several are given, so that runs/a/psl and runs/b/psl stay apart)."""
    runs: list[Run] = []
    for directory in map(Path, directories):
        label = directory.resolve().name
        for path in _run_paths(directory):
            below = path.relative_to(directory).as_posix()
            name = label if below == "." else below if len(directories) == 1 else f"{label}/{below}"
            runs.append(read_run(path, name))
    seen: dict[str, int] = {}
    for k, run in enumerate(runs):  # the same folder given twice, or two DIRs of the same name
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            runs[k] = Run(f"{run.name}#{seen[run.name]}", run.path, run.summary, run.rows)
    return runs


def file_stem(name: str) -> str:
    """A run name made safe for a file name (run names can hold '/' and '=')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
