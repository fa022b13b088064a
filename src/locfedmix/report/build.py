"""`locfedmix report`: run directories → one folder with report.md, its PNG plots and a table of results.

The report says what it compares (the setting the runs share, once; the keys in which they differ, per run), names
each curve by its algorithm and those keys, and holds no timestamps, so the same runs give the same report.md."""

from pathlib import Path
from typing import Any

from locfedmix.errors import UserError
from locfedmix.report.plots import accuracy_curves, partition_heatmap
from locfedmix.report.runs import Run, file_stem, find_runs
from locfedmix.report.settings import differing, headline, legend, setting
from locfedmix.selection import validation_selected

TABLE_HEADER = ("run", "algorithm", "rounds", "final test acc", "best test acc", "MB up", "MB down", "MB total",
                "time to target (simulated)", "simulated s", "wall s", "test acc at best val (round)")

# (file, x axis, title) of the curves every report draws
CURVES = [
    ("accuracy-vs-round.png", "round", "Test accuracy per round"),
    ("accuracy-vs-simulated-seconds.png", "simulated_seconds", "Test accuracy against simulated time"),
    ("accuracy-vs-megabytes.png", "megabytes", "Test accuracy against bytes sent (up + down)"),
]


def _time_to_target(target: dict[str, Any]) -> str:
    if not target["reached"]:
        return f"not reached ({target['target_accuracy']:.0%})"
    return f"{target['simulated_seconds']:.1f} s to {target['target_accuracy']:.0%} (round {target['round']})"


def table_row(run: Run) -> tuple[str, ...]:
    """The final row of metrics.csv, its bytes, the time to target from summary.json, and the run's simulated time
    beside the wall-clock time it took here."""
    final = run.rows[-1]
    best = max(row["test_accuracy"] for row in run.rows)
    chosen = validation_selected(run.rows)
    selected = f"{chosen['test_accuracy']:.4f} ({chosen['round']})" if chosen else "no validation split"
    up, down = final["bytes_up"] / 1e6, final["bytes_down"] / 1e6
    wall = run.summary.get("wall_seconds")
    return (run.name, run.algorithm, str(int(final["round"])), f"{final['test_accuracy']:.4f}", f"{best:.4f}",
            f"{up:.2f}", f"{down:.2f}", f"{up + down:.2f}", _time_to_target(run.summary["time_to_target"]),
            f"{final['simulated_seconds']:.1f}", "-" if wall is None else f"{wall:.1f}", selected)


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """The first two columns left-aligned, the numbers right-aligned."""
    rule = "|" + "|".join("---" if k < 2 else "---:" for k in range(len(header))) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)])


def partition_section(runs: list[Run], out: Path) -> list[str]:
    """One heatmap per distinct partition (runs of one sweep usually share theirs), saying which runs use it."""
    shared: dict[str, list[Run]] = {}
    for run in runs:
        shared.setdefault(repr(run.summary["label_histograms"]), []).append(run)
    lines = ["## Partitions", "", "Samples of each class held by each client (rows: clients, columns: classes).", ""]
    for group in shared.values():
        histograms = group[0].summary["label_histograms"]
        png = f"partition-{file_stem(group[0].name)}.png"
        names = ", ".join(f"`{run.name}`" for run in group)
        partition_heatmap(histograms, out / png)
        sizes = [sum(h) for h in histograms]
        lines += [f"Used by {names}: {min(sizes)}–{max(sizes)} samples per client.", "", f"![partition]({png})", ""]
    return lines


def _targets(runs: list[Run]) -> list[float]:
    return sorted({run.summary["time_to_target"]["target_accuracy"] for run in runs})


def write_report(directories: list[str | Path], out: str | Path | None = None) -> Path:
    """Read every run in `directories` (run directories or folders holding them) and write report.md with its plots
    into `out` (default: a `report` folder in the first directory); return report.md's path."""
    runs = find_runs(directories)
    out = Path(out) if out is not None else Path(directories[0]) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"report folder '{out}' cannot be created: {err.strerror}") from None
    settings = [setting(run) for run in runs]
    varying = differing(settings)
    groups: dict[str, list] = {}
    for run, run_setting in zip(runs, settings):
        label = legend(run, run_setting, varying)
        groups[label if label not in groups else f"{label} [{run.name}]"] = [run.rows]
    columns = [key for key in varying if key not in TABLE_HEADER]  # `rounds` has its column already
    rows = [table_row(run) + tuple(s.get(key, "-") for key in columns) for run, s in zip(runs, settings)]
    lines = ["# locfedmix report", "", f"{len(runs)} runs from {', '.join(f'`{d}`' for d in directories)}.", ""]
    if shared := headline(settings, varying):
        lines += [f"**Compared on**: {shared}.", ""]
    if varying:
        lines += [f"**Differing in**: {', '.join(f'`{key}`' for key in varying)} (the table's columns).", ""]
    lines += ["## Results", "", markdown_table(TABLE_HEADER + tuple(columns), rows), "",
              "Final and best test accuracy from metrics.csv (the best is picked on the test set, so it flatters; the "
              "test accuracy at the round of best validation accuracy is picked without it); bytes are cumulative "
              "over the run; the time to target "
              "and the simulated seconds come from the run's `[latency]` profile and `target_accuracy`; wall s is "
              "the time the run took on the machine that trained it.", "", "## Curves", ""]
    for png, x, title in CURVES:
        accuracy_curves(groups, x, out / png, title, targets=_targets(runs))
        lines += [f"![{title}]({png})", ""]
    lines += partition_section(runs, out)
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
