"""Checkpoint and resume: a run killed with SIGKILL at a random point and resumed ends with the metrics.csv and
events.jsonl rows of an uninterrupted run, for every algorithm, and with clients sampled, failing and missing the step
deadline."""

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.api import run
from locfedmix.cli import main
from locfedmix.config import validate
from test_logs import evaluations

BASE = {"dataset": "synthetic", "n_clients": 3, "samples_per_client": 40, "rounds": 6, "batch_size": 10,
        "seed": 5, "data": {"val_fraction": 0.1}}
COMMAND = [sys.executable, "-m", "locfedmix", "run", "--no-progress"]


def write_config(path, algorithm: str, **extra) -> None:
    lines = [f'algorithm = "{algorithm}"'] + [f"{k} = {v!r}".replace("'", '"') for k, v in BASE.items()
                                               if not isinstance(v, dict)]
    lines += ["[data]", "val_fraction = 0.1"] + [line for section in extra.values() for line in section]
    path.write_text("\n".join(lines) + "\n")


def rows_written(out) -> int:
    try:
        return max(0, len((out / "metrics.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def kill_mid_run(config_path, out, rng: random.Random) -> None:
    """Start a real run and SIGKILL it as soon as a randomly chosen round has been evaluated: mid-way through the
    next round, or between the evaluation and its checkpoint."""
    process = subprocess.Popen([*COMMAND, "--config", str(config_path), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = rng.randint(1, BASE["rounds"] - 2)
    deadline = time.monotonic() + 120
    while rows_written(out) < kill_after:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert rows_written(out) < BASE["rounds"], "the run finished before it was killed"


# 2 of 3 clients per round, each failing with probability 0.3; client 2 is 4× slower and, beside one other client,
# its upload arrives after 0.07 s (≈ 0.092 s against ≈ 0.042 s for the others; alone, as in sl, it makes it)
FAULTS = ["[participation]", "fraction = 0.67", "dropout = 0.3", "stragglers = 0.34", "straggler_slowdown = 4.0",
          "deadline_s = 0.07"]
CASES = [(a, "auto", []) for a in ALGORITHMS] + [("locfedmix", "vectorized", []), ("sfl", "auto", FAULTS),
                                                 ("sl", "auto", FAULTS)]


@pytest.mark.parametrize("algorithm, engine, participation", CASES,
                         ids=[f"{a}-{e}{'-faults' if p else ''}" for a, e, p in CASES])
def test_killed_and_resumed_run_equals_an_uninterrupted_run(algorithm, engine, participation, tmp_path):
    extra = {"engine": ["[engine]", f'kind = "{engine}"'], "participation": participation}
    config_path = tmp_path / "c.toml"
    write_config(config_path, algorithm, **extra)
    reference = tmp_path / "reference"
    assert main(["run", "--config", str(config_path), "--out", str(reference), "--no-progress"]) == 0
    killed = tmp_path / "killed"
    kill_mid_run(config_path, killed, random.Random(f"{algorithm}-{engine}" + ("-faults" if participation else "")))
    resumed = subprocess.run([*COMMAND, "--resume", str(killed)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert evaluations(killed) == evaluations(reference)  # events.jsonl: no row twice, none lost


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    config = validate({**BASE, "algorithm": "sfl", "rounds": 2})
    first = run(config, tmp_path / "r", progress=False)
    again = run(config, tmp_path / "r", progress=False, resume=True)
    assert first["final"] == again["final"]


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    config = validate({**BASE, "algorithm": "psl", "rounds": 1})
    run(config, tmp_path / "r", progress=False)
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["run", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt" in err


@pytest.mark.parametrize("args, fragment", [
    (["--resume", "{d}", "--set", "rounds=3"], "drop --config and --set"),
    (["--resume", "{d}/nowhere"], "nowhere"),
])
def test_resume_mistakes(args, fragment, tmp_path, capsys):
    config = validate({**BASE, "algorithm": "psl", "rounds": 1})
    run(config, tmp_path / "r", progress=False)
    assert main(["run", *[a.format(d=tmp_path / "r") for a in args]]) == 2
    assert fragment in capsys.readouterr().err


def test_a_non_finite_value_names_the_step_client_and_algorithm(tmp_path):
    import numpy as np
    import torch

    from conftest import make_federation
    from locfedmix.engines.flow.round import data_step, train_round
    from locfedmix.errors import NumericalError

    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    x[7] = float("nan")  # one sample of client 1
    fed = make_federation("sfl", sizes=[6, 6], n_clients=2)
    with pytest.raises(NumericalError, match=r"client 1's smashed data are not finite at step 1 \(round 1\) of sfl"):
        train_round(fed, [np.arange(0, 6), np.arange(6, 12)], 3, 1, data_step(x, y))


def test_divergence_stops_the_run_with_one_line_and_keeps_the_checkpoint(tmp_path, capsys):
    config_path = tmp_path / "c.toml"
    write_config(config_path, "psl")
    out = tmp_path / "r"
    code = main(["run", "--config", str(config_path), "--out", str(out), "--no-progress",
                 "--set", "client_optimizer.name='sgd'", "--set", "client_optimizer.lr=1e30",
                 "--set", "server_optimizer.name='sgd'", "--set", "server_optimizer.lr=1e30"])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "of psl" in err and "not finite" in err


class _RunsCode:
    """Pickles as a call to os.system: unpickled by anything but a data-only reader, it creates `marker`."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def _one_round_run(tmp_path_factory):
    """A finished one-round run, trained once for all the tests that plant checkpoints in copies of it."""
    out = tmp_path_factory.mktemp("finished") / "r"
    run(validate({**BASE, "algorithm": "psl", "rounds": 1}), out, progress=False)
    return out


@pytest.fixture
def finished_run(_one_round_run, tmp_path):
    return Path(shutil.copytree(_one_round_run, tmp_path / "r"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(writer, finished_run, tmp_path, capsys):
    directory, marker = finished_run, tmp_path / "MARKER"
    payload = {"round": 1, "rows": [], "train_seconds": 0.0, "federation": {"x": _RunsCode(marker)}}
    checkpoint = directory / "checkpoint.pt"
    if writer == "torch.save":
        torch.save(payload, checkpoint)
    else:
        checkpoint.write_bytes(pickle.dumps(payload, protocol=4))
    assert main(["run", "--resume", str(directory), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(checkpoint) in err and "refused" in err, err
    assert "posix.system" in err or writer == "pickle.dump"  # the zip format names the global it refused
    assert not marker.exists()
    # The planted file is a live exploit: an unrestricted unpickler runs it.
    if writer == "pickle.dump":
        pickle.loads(checkpoint.read_bytes())
        assert marker.exists()


@pytest.mark.parametrize("tamper, fragment", [
    (lambda state: [1, 2, 3], "holds a list"),
    (lambda state: {k: v for k, v in state.items() if k != "rows"}, "valid 'rows' entry"),
    (lambda state: {**state, "round": "1"}, "valid 'round' entry"),
    (lambda state: {**state, "rows": [{"round": 1}]}, "without the columns"),
    (lambda state: {**state, "federation": {}}, "does not fit"),
    (lambda state: {**state, "federation": {**state["federation"], "server": {"uppers": [{"w": 1}],
                                                                               "optimizers": []}}}, "does not fit"),
])
def test_a_tampered_checkpoint_gives_one_line_naming_it(tamper, fragment, finished_run, capsys):
    checkpoint = finished_run / "checkpoint.pt"
    torch.save(tamper(torch.load(checkpoint, weights_only=True)), checkpoint)
    assert main(["run", "--resume", str(finished_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(checkpoint) in err and fragment in err, err
