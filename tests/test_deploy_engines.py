"""Flower's own engines run the deployment, each ClientApp and the ServerApp in processes of their own: the
Simulation Engine (simulated SuperNodes) and the Deployment Engine with three SuperNodes on this machine, secure
(TLS from a local certificate authority, SuperNode authentication). Both give the metrics.csv of a run in one
process. These are the slow tests of the deployment (Flower starts a process per message on a SuperNode); the
protocol's every algorithm and fault is in test_deploy.py."""

import json
import time

import locfedmix
from locfedmix.deploy.app import write_app
from locfedmix.deploy.local import LocalFederation

CONFIG = {"algorithm": "locfedmix", "dataset": "digits", "n_clients": 3, "samples_per_client": 24, "rounds": 1,
          "batch_size": 24, "seed": 5, "engine": {"kind": "loop"}}


def one_process(tmp_path, config: dict) -> str:
    locfedmix.run(locfedmix.validate(config), tmp_path / "one", progress=False)
    return (tmp_path / "one" / "metrics.csv").read_text()


def deployed(tmp_path, config: dict, kill: int | None = None, **engine) -> tuple[str, dict]:
    """The run's metrics.csv and summary; `kill`: SuperNode `kill` is killed (SIGKILL) when its first cut gradient
    arrives."""
    out = tmp_path / "deployed"
    app = write_app(tmp_path / "app", config, {"out": str(out), "reply-timeout-s": 60.0})
    with LocalFederation(tmp_path / "federation", config["n_clients"], **engine) as federation:
        if kill is None:
            federation.run(app, timeout=900)
        else:
            run = federation.launch(app)
            while "train.backward" not in federation.log(f"supernode-{kill}") and run.poll() is None:
                time.sleep(0.1)
            federation.kill_node(kill)
            output, _ = run.communicate(timeout=900)
            assert (out / "summary.json").exists(), output[-3000:]
    return (out / "metrics.csv").read_text(), json.loads((out / "summary.json").read_text())


def test_the_simulation_engine_gives_the_numbers_of_one_process(tmp_path):
    config = CONFIG | {"algorithm": "sflv2", "rounds": 2}
    metrics, summary = deployed(tmp_path, config, simulation=True)
    assert metrics == one_process(tmp_path, config)
    assert summary["engine"] == "flower" and summary["deployment"]["messages"]["load"]["messages"] > 0


def test_three_secure_supernodes_give_the_numbers_of_one_process(tmp_path):
    metrics, summary = deployed(tmp_path, CONFIG)
    assert metrics == one_process(tmp_path, CONFIG)
    messages = summary["deployment"]["messages"]
    assert messages["forward"]["messages"] == messages["backward"]["messages"] == 3


def test_a_supernode_killed_mid_round_is_a_dropout_and_the_run_goes_on(tmp_path):
    """SuperNode 2 dies while its first step's cut gradient is on the way: that step is lost to it, it is out for
    the rest of the round (not averaged: FedAvg of the two others), and the run ends with every round's row."""
    config = CONFIG | {"algorithm": "sfl", "batch_size": 12}
    metrics, summary = deployed(tmp_path, config, kill=2, insecure=True)
    assert len(metrics.splitlines()) == 1 + config["rounds"]
    lost = summary["deployment"]["lost"]
    assert {entry["client"] for entry in lost} == {2} and lost[0]["message"] == "train.backward"
    assert summary["deployment"]["messages"]["weights"]["messages"] == 2  # only the clients that reported
