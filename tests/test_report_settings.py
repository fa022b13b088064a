"""The report says what it compares: the setting every run shares once, the keys in which runs differ as columns and
in the legends (by algorithm, never by folder), the target accuracy as a line, and wall time beside simulated time."""

import json

import pytest

from locfedmix.cli import main
from locfedmix.report import build
from test_report import CONFIG as REPORT_CONFIG

CONFIG = REPORT_CONFIG.replace("[sweep]", "[latency]\ntarget_accuracy = 0.6\n[sweep]")  # test_report's sweep


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "c.toml").write_text(CONFIG)
    base = ["run", "--config", str(root / "c.toml"), "--no-progress"]
    assert main([*base, "--out", str(root / "a")]) == 0
    assert main([*base, "--out", str(root / "b"), "--set", "seed=5", "--set", "algorithm=psl",
                 "--set", "engine.kind=loop"]) == 0
    return root


def report(runs, monkeypatch, *dirs: str) -> tuple[str, list[dict]]:
    drawn = []

    def record(groups, x, path, title, targets=()):
        drawn.append({"labels": list(groups), "targets": list(targets)})
        return real(groups, x, path, title, targets)

    real = build.accuracy_curves
    monkeypatch.setattr(build, "accuracy_curves", record)
    assert main(["report", *(str(runs / d) for d in dirs), "--out", str(runs / "report")]) == 0
    return (runs / "report" / "report.md").read_text(), drawn


def table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_one_sweep_is_described_once_and_drawn_by_algorithm(runs, monkeypatch):
    text, drawn = report(runs, monkeypatch, "a")
    assert ("**Compared on**: synthetic, model cnn, 3 clients × 30 samples, partition pathological "
            "(num_classes_per_partition=2, class_assignment_mode=balanced), 2 rounds.") in text
    assert "Differing in" not in text and "alpha" not in text  # config.toml's alpha (dirichlet's) does not apply
    assert all(d == {"labels": ["locfedmix", "psl"], "targets": [0.6]} for d in drawn) and len(drawn) == 3


def test_runs_that_differ_show_the_difference_and_wall_beside_simulated_time(runs, monkeypatch):
    text, drawn = report(runs, monkeypatch, "a", "b")
    assert "**Differing in**: `seed`" in text and "engine" not in text  # the engine only places a run
    header, _, *rows = table(text)
    assert header[-4:] == ["simulated s", "wall s", "test acc at best val (round)", "seed"]
    assert [(row[0], row[-1]) for row in rows] == [("a/locfedmix", "4"), ("a/psl", "4"), ("b", "5")]
    for row, path in zip(rows, ["a/locfedmix", "a/psl", "b"]):
        summary = json.loads((runs / path / "summary.json").read_text())
        assert row[-3] == f"{summary['wall_seconds']:.1f}"
        assert row[-4] == f"{summary['final']['simulated_seconds']:.1f}"
    assert drawn[0]["labels"] == ["locfedmix (seed=4)", "psl (seed=4)", "psl (seed=5)"]
