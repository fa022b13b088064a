"""The command line end to end: outputs, determinism, and one-line errors with exit code 2 for user mistakes."""

import csv
import gzip
import json
import subprocess
import sys

import pytest

from locfedmix.cli import main
from locfedmix.data import datasets

QUICK = """
algorithm = "locfedmix"
dataset = "synthetic"
model = "cnn"
partition = "iid"
n_clients = 3
samples_per_client = 60
rounds = 2
batch_size = 16
seed = 1
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text(QUICK)
    return path


def run_cli(*args: str) -> int:
    return main(["run", *args, "--no-progress"])


def test_algorithms_lists_every_algorithm_with_a_description(capsys):
    assert main(["algorithms"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix",
                                                   "sglr", "mix2sfl"]
    assert all(len(line.split()) > 3 for line in lines)


def test_run_writes_config_metrics_and_summary(config_file, tmp_path):
    out = tmp_path / "run"
    assert run_cli("--config", str(config_file), "--out", str(out)) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]
    for column in ("round", "step", "algorithm", "n_clients", "train_loss", "test_loss", "test_accuracy"):
        assert column in rows[0]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert rows[-1]["algorithm"] == "locfedmix" and rows[-1]["n_clients"] == "3"
    assert int(rows[-1]["step"]) == 2 * 4  # 60 samples per client, batch 16 → 4 parallel steps per round
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] == float(rows[-1]["test_accuracy"])
    assert [sum(h) for h in summary["label_histograms"]] == [60, 60, 60]
    assert (out / "config.toml").exists()


def test_same_config_and_seed_give_identical_metrics(config_file, tmp_path):
    outs = [tmp_path / name for name in ("a", "b", "c")]
    run_cli("--config", str(config_file), "--out", str(outs[0]))
    run_cli("--config", str(outs[0] / "config.toml"), "--out", str(outs[1]))  # the resolved config re-runs the same
    run_cli("--config", str(config_file), "--out", str(outs[2]), "--set", "seed=2")
    metrics = [(o / "metrics.csv").read_text() for o in outs]
    assert metrics[0] == metrics[1]
    assert metrics[0] != metrics[2]


def test_sweep_runs_every_cell_and_prints_a_table(config_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_cli("--config", str(config_file), "--out", str(out), "--set", "sweep.algorithm=['psl', 'sl']",
                   "--set", "rounds=1") == 0
    assert (out / "psl" / "metrics.csv").exists() and (out / "sl" / "metrics.csv").exists()
    table = capsys.readouterr().out
    assert "| psl" in table and "| sl" in table


def test_an_existing_run_is_not_overwritten_silently(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    run_cli("--config", str(config_file), "--out", str(out), "--set", "rounds=1")
    assert run_cli("--config", str(config_file), "--out", str(out), "--set", "rounds=1") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli("--config", str(config_file), "--out", str(out), "--set", "rounds=1", "--overwrite") == 0


@pytest.mark.parametrize("override, fragment", [
    ("algorithm=locfedmx", "unknown algorithm 'locfedmx'; choose one of: sl, psl"),
    ("dataset=mnst", "unknown dataset 'mnst'"),
    ("partition=iidd", "unknown partitioner 'iidd'"),
    ("model=resnt", "unknown model 'resnt'"),
    ("cut=9", "cut=9 is outside model 'cnn'"),
    ("n_clients=5000", "5000"),
    ("client_optimizer.lr=0", "client_optimizer.lr=0"),
    ("server_optimizer.lr=-1", "server_optimizer.lr=-1"),
    ("foo=1", "unknown config key 'foo'"),
    ("algo.gama=1", "unknown config key 'algo.gama'"),
    ("algo.partners=5", "algo.partners=5"),
    ("algo.mix=true", None),  # locfedmix accepts its own switch
    ("rounds=0", "rounds=0"),
    ("batch_size='x'", "batch_size='x'"),
])
def test_bad_config_values_give_one_line_and_exit_code_2(config_file, tmp_path, capsys, override, fragment):
    code = run_cli("--config", str(config_file), "--out", str(tmp_path / "o"), "--set", override, "--set", "rounds=1"
                   if not override.startswith("rounds") else "seed=1")
    err = capsys.readouterr().err
    if fragment is None:
        assert code == 0
        return
    assert code == 2
    assert err.count("\n") == 1 and fragment in err


def test_missing_dataset_files_name_the_folders_searched(config_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT", tmp_path / "absent")
    monkeypatch.setenv("LOCFEDMIX_DATA", str(tmp_path / "also-absent"))
    code = run_cli("--config", str(config_file), "--out", str(tmp_path / "o"), "--set", "dataset=fashion-mnist")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "absent" in err


def test_truncated_dataset_file_is_named(config_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT", tmp_path / "absent")
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 100)
    code = run_cli("--config", str(config_file), "--out", str(tmp_path / "o"), "--set", "dataset=fashion-mnist",
                   "--set", f"data.dir='{folder}'")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(folder) in err


@pytest.mark.parametrize("args, fragment", [
    (["run", "--config", "/nonexistent.toml"], "/nonexistent.toml"),
    (["run"], "--config"),
    (["frobnicate"], "frobnicate"),
])
def test_command_line_mistakes(args, fragment, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "locfedmix", "run", "--config", str(tmp_path / "none.toml")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
