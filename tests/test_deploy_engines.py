"""Flower's own engines run the deployment, each ClientApp and the ServerApp in processes of their own: the
Simulation Engine (simulated SuperNodes) and the Deployment Engine with three SuperNodes on this machine, secure
(TLS from a local certificate authority, SuperNode authentication). Both give the metrics.csv of a run in one
process. These are the slow tests of the deployment (Flower starts a process per message on a SuperNode); the
protocol's every algorithm and fault is in test_deploy.py."""

import json
import subprocess
import time

import locfedmix
from locfedmix.deploy.app import write_app
from locfedmix.deploy.local import LocalFederation

CONFIG = {"algorithm": "locfedmix", "dataset": "digits", "n_clients": 3, "samples_per_client": 24, "rounds": 1,
          "batch_size": 24, "seed": 5, "engine": {"kind": "loop"}}


def one_process(tmp_path, config: dict) -> str:
    locfedmix.run(locfedmix.validate(config), tmp_path / "one", progress=False)
    return (tmp_path / "one" / "metrics.csv").read_text()


def deployed(tmp_path, config: dict, kill: int | None = None, resume_to: int | None = None,
             **engine) -> tuple[str, dict]:
    """The run's metrics.csv and summary; `kill`: SuperNode `kill` is killed (SIGKILL) when its first cut gradient
    arrives; `resume_to`: the run is then continued to that many rounds by a new `flwr run` (`deploy.resume`)."""
    out = tmp_path / "deployed"
    app = write_app(tmp_path / "app", config, {"out": str(out), "reply-timeout-s": 60.0})
    with LocalFederation(tmp_path / "federation", config["n_clients"], **engine) as federation:
        if kill is None:
            federation.run(app, timeout=900)
            if resume_to:
                federation.run(app, {"rounds": resume_to, "deploy.resume": True}, timeout=900)
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


def test_three_secure_supernodes_give_the_numbers_of_one_process_and_resume_in_a_new_run(tmp_path):
    """Round 1 in one Flower run; round 2 in another (`deploy.resume`, rounds raised to 2), whose ClientApps start
    from empty contexts and load the states their SuperNodes saved: the metrics.csv of 2 rounds in one process."""
    metrics, summary = deployed(tmp_path, CONFIG, resume_to=2)
    assert metrics == one_process(tmp_path, CONFIG | {"rounds": 2})
    assert summary["deployment"]["resumed"] == {"from_round": 1, "restored": [0, 1, 2], "not_restored": []}
    messages = summary["deployment"]["messages"]
    assert messages["forward"]["messages"] == messages["backward"]["messages"] == 2 * 3


def test_a_supernode_killed_mid_round_is_a_dropout_and_the_run_goes_on(tmp_path):
    """SuperNode 2 dies while its first step's cut gradient is on the way: that step is lost to it, it is out for
    the rest of the round (not averaged: FedAvg of the two others), and the run ends with every round's row."""
    config = CONFIG | {"algorithm": "sfl", "batch_size": 12}
    metrics, summary = deployed(tmp_path, config, kill=2, insecure=True)
    assert len(metrics.splitlines()) == 1 + config["rounds"]
    lost = summary["deployment"]["lost"]
    assert {entry["client"] for entry in lost} == {2} and lost[0]["message"] == "train.backward"
    assert summary["deployment"]["messages"]["weights"]["messages"] == 2  # only the clients that reported


def test_the_superlink_will_not_start_without_tls_unless_told_insecure(tmp_path):
    """The SuperLink our docs and LocalFederation start refuses to listen in the clear: without certificates it
    exits naming them and `--insecure`; with `--insecure` it listens."""
    federation = LocalFederation(tmp_path / "federation", 1, insecure=True)
    bare = [arg for arg in federation._superlink_command() if arg != "--insecure"]
    env = federation.env | {"FLWR_HOME": str(tmp_path)}
    refused = subprocess.run(bare, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "Certificates are required unless running in insecure mode" in refused.stdout + refused.stderr
    with federation:  # --insecure: it starts (the context waits until it listens)
        assert federation.processes["superlink"].poll() is None
