"""best_test_accuracy is picked on the test set; the validation-selected round's test accuracy stands beside it in
summary.json, the CLI's result table and the report."""

import csv
import json
import math

from locfedmix.cli import main
from locfedmix.report.build import table_row
from locfedmix.report.runs import find_runs
from locfedmix.selection import validation_selected

NAN = float("nan")


def row(round_index: int, val: float, test: float) -> dict:
    return {"round": round_index, "val_accuracy": val, "test_accuracy": test}


def test_the_round_of_best_validation_accuracy_is_chosen_never_the_best_test_round():
    rows = [row(1, 0.50, 0.52), row(2, 0.70, 0.66), row(3, 0.69, 0.71), row(4, 0.70, 0.60)]
    # round 3 has the best test accuracy (0.71): picking it would look at the test set
    assert validation_selected(rows) == {"round": 2, "val_accuracy": 0.70, "test_accuracy": 0.66}
    assert validation_selected([row(1, NAN, 0.5), row(2, NAN, 0.6)]) is None


def test_summary_cli_table_and_report_show_the_selected_round(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('algorithm = "psl"\ndataset = "synthetic"\nn_clients = 2\nsamples_per_client = 30\n'
                      'rounds = 4\nbatch_size = 10\nseed = 2\n[sweep]\nalgorithm = ["psl", "sfl"]\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    table = capsys.readouterr().out
    for algorithm in ("psl", "sfl"):
        run_dir = tmp_path / "runs" / algorithm
        rows = [{k: float(v) for k, v in r.items() if k != "algorithm"}
                for r in csv.DictReader((run_dir / "metrics.csv").open())]
        best_val = max(r["val_accuracy"] for r in rows)
        first = next(r for r in rows if r["val_accuracy"] == best_val)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["validation_selected"] == {"round": int(first["round"]), "val_accuracy": best_val,
                                                  "test_accuracy": first["test_accuracy"]}
        assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in rows)
        shown = f"{first['test_accuracy']:.4f} ({int(first['round'])}) |"
        line = next(x for x in table.splitlines() if x.startswith(f"| {algorithm} "))
        assert line.endswith(shown)
        (run,) = find_runs([run_dir])
        assert table_row(run)[-1] == shown.removesuffix(" |")
    no_val = tmp_path / "noval"
    assert main(["run", "--config", str(config), "--out", str(no_val), "--no-progress", "--set", "data.val_fraction=0",
                 "--set", "rounds=1"]) == 0
    assert "no validation split |" in capsys.readouterr().out
    assert json.loads((no_val / "psl" / "summary.json").read_text())["validation_selected"] is None
    assert math.isnan(float(next(csv.DictReader((no_val / "psl" / "metrics.csv").open()))["val_accuracy"]))
