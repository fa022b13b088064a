"""Finding and reading run directories: a run directory is a folder holding both metrics.csv and summary.json."""

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locfedmix.errors import UserError


@dataclass(frozen=True)
class Run:
    name: str  # the run's path below the DIR it was found in ('psl' in runs/default), or its folder's name
    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.csv, numbers as floats

    @property
    def algorithm(self) -> str:
        return self.summary["algorithm"]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv rows with every column but `algorithm` as a float; a file that is not one names itself."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: (v if k == "algorithm" else float(v)) for k, v in row.items()} for row in rows]
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"'{path}' is not a readable metrics.csv: {err}") from None


def read_run(path: Path, name: str) -> Run:
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"'{path / 'summary.json'}' is not a readable summary: {err}") from None
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
