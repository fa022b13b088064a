"""The report of benchmarks/reproduce.py: tables (mean ± std over seeds), CSVs, PNG plots and plain sentences on
where each of the paper's claims holds, built from whatever cells of a grid have finished."""

import csv
import json
import os
import tomllib
from pathlib import Path

import numpy as np

from locfedmix.report.plots import accuracy_curves, finish, new_axes
from locfedmix.report.runs import read_metrics
from locfedmix.selection import validation_selected


def load_cells(grid_dir: Path, experiment: str) -> dict[str, list[dict]]:
    """label → one record per finished seed: its summary and its metrics rows (numbers as floats)."""
    cells: dict[str, list[dict]] = {}
    for summary_path in sorted((grid_dir / experiment).glob("*/seed*/summary.json")):
        rows = read_metrics(summary_path.parent / "metrics.csv")
        cells.setdefault(summary_path.parent.parent.name, []).append(
            {"summary": json.loads(summary_path.read_text()), "rows": rows})
    return cells


def stats(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean, std = stats(values)
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def cell_table(cells: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Markdown table and CSV records: final test accuracy, the test accuracy of the round picked on validation
    beside the best over rounds (picked on the test set itself, so optimistic), time to target, bytes, seeds."""
    lines = ["| cell | seeds | final test acc (%) | test acc, round picked on val (%) | best test acc (%) "
             "| final val acc (%) | time to target (sim. s) | MB up | MB down |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    records = []
    for label, runs in cells.items():
        final = [r["rows"][-1]["test_accuracy"] for r in runs]
        best = [max(x["test_accuracy"] for x in r["rows"]) for r in runs]
        val = [r["rows"][-1]["val_accuracy"] for r in runs]
        picked = [chosen["test_accuracy"] for r in runs if (chosen := validation_selected(r["rows"]))]
        reached = [r["summary"]["time_to_target"] for r in runs]
        times = [t["simulated_seconds"] for t in reached if t["reached"]]
        target = f"{np.mean(times):.0f} ({len(times)}/{len(runs)} reached)" if times else f"not reached (0/{len(runs)})"
        up = np.mean([r["rows"][-1]["bytes_up"] for r in runs]) / 1e6
        down = np.mean([r["rows"][-1]["bytes_down"] for r in runs]) / 1e6
        on_val = fmt(picked) if len(picked) == len(runs) else "no validation split"
        lines.append(f"| {label} | {len(runs)} | {fmt(final)} | {on_val} | {fmt(best)} | {fmt(val)} | {target} "
                     f"| {up:.0f} | {down:.0f} |")
        records.append({"cell": label, "seeds": len(runs), "final_mean": stats(final)[0], "final_std": stats(final)[1],
                        "val_selected_test_mean": stats(picked)[0] if len(picked) == len(runs) else "",
                        "best_mean": stats(best)[0], "val_mean": stats(val)[0],
                        "time_to_target_mean": float(np.mean(times)) if times else "", "reached": len(times),
                        "mb_up": up, "mb_down": down})
    return "\n".join(lines), records


def curves(cells: dict[str, list[dict]], x_key: str, path: Path, title: str) -> None:
    """Mean test accuracy (shaded ± std over seeds) against rounds or simulated seconds, one line per cell."""
    accuracy_curves({label: [r["rows"] for r in runs] for label, runs in cells.items()}, x_key, path, title)


def scalability_plot(cells: dict[str, list[dict]], path: Path, title: str) -> None:
    by_algo: dict[str, list[tuple[int, float, float]]] = {}
    for label, runs in cells.items():
        algorithm, n = label.rsplit("-n", 1)
        mean, std = stats([r["rows"][-1]["test_accuracy"] for r in runs])
        by_algo.setdefault(algorithm, []).append((int(n), mean, std))
    fig, ax = new_axes()
    for algorithm, points in by_algo.items():
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, label=algorithm)
    ax.set_xscale("log")
    finish(fig, ax, "clients N", "final test accuracy", title, path)


def verdict(ours: list[float], theirs: list[float]) -> str:
    """'ahead' / 'behind' only when the mean ± std intervals do not overlap; otherwise 'level'. One seed on either
    side has no spread to judge by, so it gets no verdict."""
    if min(len(ours), len(theirs)) < 2:
        return "one seed: no verdict"
    (m1, s1), (m2, s2) = stats(ours), stats(theirs)
    if m1 - s1 > m2 + s2:
        return "ahead"
    if m1 + s1 < m2 - s2:
        return "behind"
    return "level (within one std)"


def claims(cells: dict[str, list[dict]], reference: str = "locfedmix") -> list[str]:
    """One sentence per baseline: how LocFedMix-SL's final accuracy and time to target compare."""
    if reference not in cells:
        return []
    ours = [r["rows"][-1]["test_accuracy"] for r in cells[reference]]
    sentences = []
    for label, runs in cells.items():
        if label == reference:
            continue
        theirs = [r["rows"][-1]["test_accuracy"] for r in runs]
        gap = 100 * (np.mean(ours) - np.mean(theirs))
        sentences.append(f"- vs `{label}`: final accuracy {gap:+.2f} points, {verdict(ours, theirs)}.")
    return sentences


# SGLR (Pal et al. 2021), Fashion-MNIST, 5 clients, AlexNet with one conv + pool on the client: its reported accuracy
SGLR_REPORTED = {"psl": 0.847, "sfl": 0.860}


def calibration_lines(cells: dict[str, list[dict]]) -> list[str]:
    lines = []
    for label, reported in SGLR_REPORTED.items():
        if label in cells:
            ours = [r["rows"][-1]["test_accuracy"] for r in cells[label]]
            lines.append(f"- `{label}`: ours {fmt(ours)} % vs SGLR's reported {100 * reported:.1f} % "
                         f"({100 * (np.mean(ours) - reported):+.2f} points).")
    return lines


def final_values(runs: list[dict], key: str) -> list[float]:
    return [r["rows"][-1][key] for r in runs]


def readings_lines(readings: dict[str, list[dict]], convergence: dict[str, list[dict]]) -> list[str]:
    """Each reading against the default `locfedmix` (and `sfl`) of the convergence experiment, on the validation
    split; the winner on validation is then shown on test against `sfl` — tuning never looks at the test set."""
    baseline = {k: convergence[k] for k in ("locfedmix", "sfl", "psl") if k in convergence}
    if "locfedmix" not in baseline:
        return []
    lines = [f"Default `locfedmix` final val acc {fmt(final_values(baseline['locfedmix'], 'val_accuracy'))} %"
             + "".join(f", `{k}` {fmt(final_values(v, 'val_accuracy'))} %" for k, v in baseline.items()
                       if k != "locfedmix") + " (convergence cells). Readings, best validation accuracy first:", ""]
    ranked = sorted(readings.items(), key=lambda kv: -np.mean(final_values(kv[1], "val_accuracy")))
    for label, runs in ranked:
        reference = "sfl" if label.startswith("sfl ") and "sfl" in baseline else "locfedmix"
        val, ref_val = final_values(runs, "val_accuracy"), final_values(baseline[reference], "val_accuracy")
        gap = 100 * (np.mean(val) - np.mean(ref_val))
        lines.append(f"- `{label}`: val {fmt(val)} % ({gap:+.2f} points vs default `{reference}`, "
                     f"{verdict(val, ref_val)}; {len(runs)} seed(s)).")
    default_val = final_values(baseline["locfedmix"], "val_accuracy")
    ahead = [k for k, v in ranked if not k.startswith("sfl ")
             and verdict(final_values(v, "val_accuracy"), default_val) == "ahead"]
    if ahead:
        lines += ["", f"Ahead of the default on validation beyond one std: {', '.join(f'`{k}`' for k in ahead)}."]
    else:
        lines += ["", "No reading is ahead of the default on validation beyond one std, so the default reading is "
                      "the one we ship."]
    best_label, best_runs = next(((k, v) for k, v in ranked if not k.startswith("sfl ")), (None, None))
    if best_label and "sfl" in baseline:
        rival = f"sfl {best_label}" if f"sfl {best_label}" in readings else "sfl"
        test = final_values(best_runs, "test_accuracy")
        rival_test = final_values(readings.get(rival) or baseline["sfl"], "test_accuracy")
        lines += ["", f"Best LocFedMix-SL reading on validation: `{best_label}`; on test {fmt(test)} % against "
                      f"`{rival}` {fmt(rival_test)} % ({100 * (np.mean(test) - np.mean(rival_test)):+.2f} points, "
                      f"{verdict(test, rival_test)})."]
    return lines


def copies_note(grid_dir: Path) -> str:
    """How many runs stand in two experiments (equal configs up to placement: reproduce.identity)."""
    summaries = [json.loads(p.read_text()) for p in grid_dir.glob("*/*/seed*/summary.json")]
    copied = sum("copied_from" in s for s in summaries)
    if not copied:
        return ""
    return (f" {copied} of the {len(summaries)} runs stand in a second experiment with the same configuration "
            "(up to device, engine and evaluation batch; e.g. `scalability` at N = 10 is `convergence`): their "
            "summary.json names the run (`copied_from`).")


MODEL_NOTES = {"cnn": "the small CNN cut after its two conv blocks (the 2-core CPU budget)",
               "resnet": "the ResNet cut after its second stage"}


INPUT_NOTES = {True: "standardized per channel by the training split's mean and std (data.normalize)",
               False: "unstandardized, pixels in [0, 1] (data.normalize=false)"}


def setup_note(grid_dir: Path) -> str:
    """The model of the grid's convergence runs (the calibration cells name their own) and the devices of all runs."""
    configs = [tomllib.loads(p.read_text()) for p in grid_dir.glob("convergence/*/seed*/config.toml")]
    models = sorted({c["model"] for c in configs}) or ["cnn"]
    devices = sorted({json.loads(p.read_text()).get("device", "cpu").split(":")[0]  # older summaries: CPU runs
                      for p in grid_dir.glob("*/*/seed*/summary.json")}) or ["cpu"]
    return f"{', '.join(MODEL_NOTES.get(m, m) for m in models)}, run on {' and '.join(devices)}"


def inputs_note(grid_dir: Path) -> str:
    """What the grid's runs fed their models, read from their config.toml (data.normalize, default on)."""
    configs = [tomllib.loads(p.read_text()) for p in grid_dir.glob("*/*/seed*/config.toml")]
    kinds = sorted({c.get("data", {}).get("normalize", True) for c in configs}, reverse=True)
    return " Inputs: " + " in some runs, ".join(INPUT_NOTES[k] for k in kinds) + "." if kinds else ""


def replay_note(grid_dir: Path, path: Path) -> str:
    """A pointer to the grid's latency findings under the specification's charges (benchmarks/latency_replay.py),
    where they have been replayed."""
    replayed = path.parent / f"LATENCY-AS-SPECIFIED-{grid_dir.name}.md"
    if not replayed.exists():
        return ""
    return (f" The latency findings under the design specification's per-step charges, replayed from these runs "
            f"without training: [{replayed.name}]({replayed.name}).")


def side_by_side(grid_dir: Path, grid: dict) -> list[str]:
    """Final test accuracy of every cell the grid shares with its unstandardized twin (`<grid>-unstandardized`,
    pixels in [0, 1]), both beside each other: what standardizing the inputs changed. Empty for the twin itself."""
    twin = grid_dir.with_name(grid_dir.name + "-unstandardized")
    if grid_dir.name.endswith("-unstandardized") or not twin.is_dir():
        return []
    rows = []
    for experiment in grid:
        ours, theirs = load_cells(grid_dir, experiment), load_cells(twin, experiment)
        for label in sorted(set(ours) & set(theirs)):
            new, old = (final_values(runs, "test_accuracy") for runs in (ours[label], theirs[label]))
            rows.append(f"| {experiment} | {label} | {fmt(old)} ({len(old)}) | {fmt(new)} ({len(new)}) "
                        f"| {100 * (np.mean(new) - np.mean(old)):+.2f} | {verdict(new, old)} |")
    if not rows:
        return []
    return ["## Standardized inputs against pixels in [0, 1]", "",
            "Final test accuracy (%, mean ± std, seeds in brackets) of the cells this grid shares with "
            f"`{os.path.relpath(twin)}`, whose runs fed the models unstandardized pixels; *change*: standardized minus "
            "unstandardized, in points; *verdict*: the standardized run's mean ± std interval against the other's.",
            "", "| experiment | cell | pixels in [0, 1] | standardized | change | verdict |",
            "|---|---|---:|---:|---:|---|", *rows, ""]


def write_report(grid_dir: Path, grid: dict, path: Path, preface: list[str]) -> str:
    """The whole report: the header, `preface` (the findings), then one section per experiment."""
    parts = [f"# Reproduction of LocFedMix-SL's claims ({grid_dir.name} grid)", "",
             "Generated by `python benchmarks/reproduce.py` from the finished cells under "
             f"`{os.path.relpath(grid_dir)}`; every number is mean ± std over seeds. "
             "Fashion-MNIST, 1,000 IID samples per client unless the cell says otherwise, "
             f"{setup_note(grid_dir)}, Adam 1e-3 on clients and server, batch 32. "
             "Simulated seconds use the `phone-lte` profile; the target accuracy is 80%." + inputs_note(grid_dir)
             + copies_note(grid_dir) + replay_note(grid_dir, path),
             "", *preface, *side_by_side(grid_dir, grid)]
    for experiment in grid:
        cells = load_cells(grid_dir, experiment)
        if not cells:
            continue
        table, records = cell_table(cells)
        with open(path.parent / f"reproduction-{grid_dir.name}-{experiment}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        parts += [f"## {experiment}", "", table, ""]
        if "convergence" in experiment or experiment == "ablations":
            for x_key in ("round", "simulated_seconds"):
                png = f"reproduction-{grid_dir.name}-{experiment}-{x_key}.png"
                curves(cells, x_key, path.parent / png, f"{experiment}: accuracy vs {x_key.replace('_', ' ')}")
                parts += [f"![{experiment} vs {x_key}]({png})", ""]
            parts += claims(cells, "locfedmix" if experiment != "ablations" else "full") + [""]
        if experiment == "small-data":
            parts += claims(cells) + [""]
        if experiment == "readings":
            parts += readings_lines(cells, load_cells(grid_dir, "convergence")) + [""]
        if experiment == "calibration":
            parts += calibration_lines(cells) + [""]
        if "scalability" in experiment:
            png = f"reproduction-{grid_dir.name}-{experiment}.png"
            scalability_plot(cells, path.parent / png, f"{experiment}: final accuracy vs N")
            parts += [f"![{experiment}]({png})", ""]
    text = "\n".join(parts)
    path.write_text(text + "\n")
    return text
