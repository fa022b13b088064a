"""`locfedmix report` on real runs: valid PNGs, one table row per algorithm with metrics.csv's final accuracy, a
heatmap that shows each run's partition, and one-line errors for bad input."""

import csv
import io
import json
import re

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from locfedmix.api import federate
from locfedmix.cli import main
from locfedmix.config import validate
from locfedmix.report.plots import DPI, FIGSIZE, partition_figure

CONFIG = """
algorithm = "psl"
dataset = "synthetic"
partition = "pathological"
n_clients = 3
samples_per_client = 30
rounds = 2
batch_size = 10
seed = 4
[data]
num_classes_per_partition = 2
[sweep]
algorithm = ["psl", "locfedmix"]
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/sweep: psl and locfedmix on one partition; runs/other: psl with another seed, so another partition."""
    root = tmp_path_factory.mktemp("runs")
    (root / "c.toml").write_text(CONFIG)
    base = ["run", "--config", str(root / "c.toml"), "--no-progress"]
    assert main([*base, "--out", str(root / "sweep")]) == 0
    assert main([*base, "--out", str(root / "other"), "--set", "seed=5", "--set", "sweep.algorithm=['psl']"]) == 0
    return root


@pytest.fixture(scope="module")
def report(runs):
    assert main(["report", str(runs / "sweep"), "--out", str(runs / "report")]) == 0
    return runs / "report" / "report.md"


def images(report_path) -> list[str]:
    return re.findall(r"!\[[^]]*\]\(([^)]+)\)", report_path.read_text())


def table(report_path) -> list[list[str]]:
    lines = [line for line in report_path.read_text().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_every_plot_is_a_valid_png_of_the_expected_size(report):
    pngs = images(report)
    assert {"accuracy-vs-round.png", "accuracy-vs-simulated-seconds.png", "accuracy-vs-megabytes.png"} < set(pngs)
    for name in pngs:
        with Image.open(report.parent / name) as image:
            image.verify()
        with Image.open(report.parent / name) as image:
            assert image.format == "PNG"
            if name.startswith("accuracy"):
                assert image.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))


def test_table_has_one_row_per_algorithm_with_metrics_final_accuracy(report, runs):
    rows = table(report)
    assert sorted(row[1] for row in rows) == ["locfedmix", "psl"]
    for row in rows:
        metrics = list(csv.DictReader((runs / "sweep" / row[0] / "metrics.csv").open()))
        final = metrics[-1]
        assert row[2] == final["round"] == "2"
        assert row[3] == f"{float(final['test_accuracy']):.4f}"
        assert row[4] == f"{max(float(m['test_accuracy']) for m in metrics):.4f}"
        assert float(row[7]) == pytest.approx((int(final["bytes_up"]) + int(final["bytes_down"])) / 1e6, abs=0.005)


def test_the_heatmap_shows_the_runs_partition(report, runs):
    """Both runs of the sweep share one partition, hence one heatmap; its pixels are exactly the heatmap of the label
    counts that the partition gives (counted here from the data), and those hold two classes per client."""
    (heatmap,) = [name for name in images(report) if name.startswith("partition")]
    assert "Used by `locfedmix`, `psl`" in report.read_text()
    summary = json.loads((runs / "sweep" / "psl" / "summary.json").read_text())
    config = validate({"algorithm": "psl", "dataset": "synthetic", "partition": "pathological", "n_clients": 3,
                       "samples_per_client": 30, "rounds": 2, "batch_size": 10, "seed": 4})
    data = federate(config)
    labels = data.dataset.y_train.numpy()
    counted = [np.bincount(labels[idx], minlength=data.dataset.n_classes).tolist() for idx in data.client_indices]
    assert summary["label_histograms"] == counted
    assert all(np.count_nonzero(row) == 2 for row in counted)
    expected = io.BytesIO()
    partition_figure(counted).savefig(expected, format="png", dpi=DPI)
    expected.seek(0)
    np.testing.assert_array_equal(matplotlib.image.imread(report.parent / heatmap), matplotlib.image.imread(expected))


def test_several_dirs_keep_runs_apart_and_draw_each_partition(runs, capsys):
    out = runs / "both"
    assert main(["report", str(runs / "sweep"), str(runs / "other"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {out / 'report.md'}"
    assert [row[0] for row in table(out / "report.md")] == ["sweep/locfedmix", "sweep/psl", "other/psl"]
    assert len([name for name in images(out / "report.md") if name.startswith("partition")]) == 2


def test_the_same_runs_give_the_same_report(runs, report):
    again = runs / "again"
    assert main(["report", str(runs / "sweep"), "--out", str(again)]) == 0
    assert (again / "report.md").read_text() == report.read_text()


def test_default_out_is_a_report_folder_in_the_dir(runs):
    for _ in range(2):  # the second report finds the same one run beside the first report's folder
        assert main(["report", str(runs / "other")]) == 0
        assert [row[0] for row in table(runs / "other" / "report" / "report.md")] == ["psl"]


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "missing", "is not a directory"),
    (lambda tmp: tmp, "holds no run"),
    (lambda tmp: (tmp / "metrics.csv").write_text("round\n1\n") and tmp, "holds no run"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, make, fragment):
    directory = make(tmp_path)
    assert main(["report", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and str(directory) in err


def test_a_corrupt_summary_is_named(runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.csv").write_text((runs / "other" / "psl" / "metrics.csv").read_text())
    (broken / "summary.json").write_text("{not json")
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.json" in err
