"""The Flower deployment's protocol held to a run in one process: every algorithm through the loopback Grid (every
message built, its arrays serialized, each reply checked; the ClientApps in this process) gives the very
metrics.csv of `locfedmix.run`; replies that are malformed, oversized or missing are refused with the client named."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Message

import locfedmix
from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.deploy.client_app import app as client_app
from locfedmix.deploy.loopback import LoopbackGrid, run_loopback
from locfedmix.deploy.server_app import serve
from locfedmix.engines.transports.flower_records import tensors_message
from locfedmix.errors import DeploymentError, UserError

BASE = {"dataset": "digits", "n_clients": 3, "samples_per_client": 24, "rounds": 2, "batch_size": 12, "seed": 3,
        "engine": {"kind": "loop"}}


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested config as a Flower run config (tables flattened to dotted keys)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def both(tmp_path, **changes) -> tuple[str, str]:
    """metrics.csv of the run in one process and of the same config deployed through the loopback Grid."""
    tree = BASE | changes
    locfedmix.run(locfedmix.validate(tree), tmp_path / "one", progress=False)
    run_loopback(flat(tree) | {"deploy.out": str(tmp_path / "deployed")}, tree["n_clients"])
    return ((tmp_path / "one" / "metrics.csv").read_text(), (tmp_path / "deployed" / "metrics.csv").read_text())


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_deployed_gives_the_numbers_of_one_process(tmp_path, one_thread, algorithm):
    one, deployed = both(tmp_path, algorithm=algorithm)
    assert deployed == one


def test_participation_faults_and_optimizer_reset_deployed_equal_one_process(tmp_path, one_thread):
    """Sampled clients, clients failing mid-round, and Adam restarted at every FedAvg and relay hand-over."""
    one, deployed = both(tmp_path, algorithm="sflv2", n_clients=4, rounds=3,
                         participation={"fraction": 0.75, "dropout": 0.3},
                         client_optimizer={"on_sync": "reset"})
    assert deployed == one
    one, deployed = both(tmp_path / "b", algorithm="sfl", client_optimizer={"on_sync": "reset"}, algo={"sync_every": 1})
    assert deployed == one


def test_summary_reports_the_wire_bytes_and_time_of_every_kind_of_message(tmp_path):
    run_config = flat(BASE | {"algorithm": "sfl", "rounds": 1}) | {"deploy.out": str(tmp_path)}
    summary = run_loopback(run_config, 3)
    messages = json.loads((tmp_path / "summary.json").read_text())["deployment"]["messages"]
    assert summary["engine"] == "flower"
    assert set(messages) == {"hello", "forward", "backward", "weights", "load", "evaluate"}  # no node keeps state
    steps = summary["steps"]
    assert messages["forward"]["messages"] == messages["backward"]["messages"] == 3 * steps
    # the smashed data and labels go up in the forward replies (what the ledger counts, plus Flower's framing and
    # the arrays' headers), the cut gradients down in the backward messages, the weights both ways at FedAvg
    ledger = summary["ledger_bytes"]["totals"]
    smashed = ledger["up/smashed"] + ledger["up/labels"]
    assert smashed < messages["forward"]["bytes_up"] < smashed + 3 * steps * 2000
    assert ledger["down/gradient"] < messages["backward"]["bytes_down"] < ledger["down/gradient"] + 3 * steps * 2000
    assert ledger["up/lower"] < messages["weights"]["bytes_up"] < 1.1 * ledger["up/lower"]


class Tampered:
    """The ClientApp, except that client `client`'s replies to `kind` are replaced by `reply(message)`."""

    def __init__(self, client: int, kind: str, reply):
        self.client, self.kind, self.reply = client, kind, reply

    def __call__(self, message: Message, context) -> Message:
        if (context.node_config["partition-id"] == self.client and message.metadata.message_type == self.kind):
            return self.reply(message)
        return client_app(message, context)


def deploy(tmp_path, app, **settings) -> dict:
    run_config = flat(BASE | {"algorithm": "psl", "rounds": 1}) | {"deploy.out": str(tmp_path)} | settings
    return serve(LoopbackGrid(run_config, 3, app), run_config)


def losses(summary: dict) -> list[tuple[str, int, str]]:
    return [(e["message"], e["client"], e["reason"]) for e in summary["deployment"]["lost"]]


def test_a_reply_of_the_wrong_shape_is_refused_and_its_client_lost_for_the_round(tmp_path):
    wrong = Tampered(1, "train.forward", lambda m: Message(
        tensors_message({"smashed": torch.zeros(3, 2), "labels": torch.zeros(12, dtype=torch.int64)}), reply_to=m))
    summary = deploy(tmp_path, wrong)
    assert losses(summary) == [("train.forward", 1, "reply refused: tensor 'smashed' has shape (3, 2), expected "
                                "(12, 64, 2, 2)")]
    # the round went on without it: its second step was never asked of it
    assert summary["deployment"]["messages"]["forward"]["messages"] == 3 + 2 + 2


def test_a_reply_larger_than_allowed_is_refused(tmp_path):
    big = Tampered(0, "train.forward", lambda m: Message(
        tensors_message({"smashed": torch.zeros(12, 64, 2, 2), "labels": torch.zeros(12, dtype=torch.int64),
                         "padding": torch.zeros(2**19)}), reply_to=m))
    (message, client, reason), = losses(deploy(tmp_path, big, **{"deploy.max-message-mb": 1.0}))
    assert (message, client) == ("train.forward", 0) and "more than the 1,048,576 allowed" in reason


def test_an_error_on_a_client_loses_it_for_the_round_with_the_reason(tmp_path):
    def fail(message):
        raise ValueError("disk on fire")

    summary = deploy(tmp_path, Tampered(2, "train.backward", fail))
    assert losses(summary) == [("train.backward", 2, "failed: ValueError: disk on fire")]
    assert summary["deployment"]["messages"]["backward"]["messages"] == 3 + 2


def test_a_node_that_never_answers_ends_the_wait_naming_it(tmp_path):
    run_config = flat(BASE | {"algorithm": "psl", "rounds": 1}) | {"deploy.out": str(tmp_path),
                                                                   "deploy.timeout-s": 0.2}
    grid = LoopbackGrid(run_config, 3)
    grid.silent.add(101)
    with pytest.raises(DeploymentError, match=r"SuperNodes \[101\] did not answer query.hello within 0.2 s"):
        serve(grid, run_config)


def test_bad_node_and_deployment_settings_are_one_line_errors(tmp_path):
    run_config = flat(BASE | {"algorithm": "psl"}) | {"deploy.out": str(tmp_path)}
    with pytest.raises(UserError, match="unknown deployment setting 'deploy.outt'"):
        run_loopback(run_config | {"deploy.outt": "x"}, 3)
    grid = LoopbackGrid(run_config, 3, node_configs=[{"partition-id": 0}, {"partition-id": 1}, {"partition-id": 1}])
    with pytest.raises(DeploymentError, match="two SuperNodes say they are client 1"):
        serve(grid, run_config)


class Outage(LoopbackGrid):
    """Node `node` unavailable from the message of step `start` until the first of step `stop`."""

    def __init__(self, run_config, n, node, start, stop):
        super().__init__(run_config, n)
        self.node, self.start, self.stop = node, start, stop

    def push_messages(self, messages):
        messages = list(messages)
        steps = [m.content.config_records["config"].get("step") for m in messages
                 if "config" in m.content.config_records]
        if any(s is not None and self.start <= s < self.stop for s in steps):
            self.offline.add(self.node)
        elif any(s is not None and s >= self.stop for s in steps):
            self.offline.discard(self.node)
        return super().push_messages(messages)


def test_a_node_lost_mid_round_is_a_client_failing_there(tmp_path, one_thread):
    """Client 1's node goes down at its second batch of round 1 and is back for round 2: the metrics of a run in
    one process where the participation policy fails client 1 at exactly that batch (found by seed)."""
    from locfedmix.engines.flow.participation import Participation

    def fails(seed):
        policy = Participation(3, seed, dropout=0.3)
        return [policy.failures(r, {0: 2, 1: 2, 2: 2}) for r in (1, 2)]

    seed = next(s for s in range(200) if fails(s) == [{1: 2}, {}])
    tree = BASE | {"algorithm": "sfl", "seed": seed}
    locfedmix.run(locfedmix.validate(tree | {"participation": {"dropout": 0.3}}), tmp_path / "one", progress=False)
    run_config = flat(tree) | {"deploy.out": str(tmp_path / "deployed")}
    serve(Outage(run_config, 3, node=101, start=1, stop=2), run_config)
    one = (tmp_path / "one" / "metrics.csv").read_text()
    assert (tmp_path / "deployed" / "metrics.csv").read_text() == one


def test_a_node_that_restarted_without_its_state_takes_the_global_model(tmp_path, one_thread):
    """After round 1 client 2's node forgets everything (a restart); the server finds out from its fingerprint
    and sends it the last FedAvg average: the run's numbers are those of one process where every client restarts
    its optimizer at FedAvg (the restarted node lost its optimizer state too)."""
    tree = BASE | {"algorithm": "sfl", "rounds": 3, "client_optimizer": {"on_sync": "reset"}}
    locfedmix.run(locfedmix.validate(tree), tmp_path / "one", progress=False)
    run_config = flat(tree) | {"deploy.out": str(tmp_path / "deployed")}

    class Amnesia(LoopbackGrid):
        forgot = False

        def push_messages(self, messages):
            messages = list(messages)
            if not self.forgot and any(m.metadata.message_type == "train.forward"
                                       and m.content.config_records["config"]["step"] == 2 for m in messages):
                self.contexts[102].state, self.forgot = type(self.contexts[102].state)(), True
            return super().push_messages(messages)

    grid = Amnesia(run_config, 3)
    summary = serve(grid, run_config)
    assert (tmp_path / "deployed" / "metrics.csv").read_text() == (tmp_path / "one" / "metrics.csv").read_text()
    assert summary["deployment"]["messages"]["load"]["messages"] > 3 * 3  # the averages, and one catch-up


def test_the_command_line_writes_an_app_and_refuses_what_cannot_be_deployed(tmp_path, capsys):
    from locfedmix.cli import main

    (tmp_path / "one.toml").write_text('algorithm = "sfl"\ndataset = "digits"\nrounds = 1\nbatch_size = 8\n')
    (tmp_path / "sweep.toml").write_text('algorithm = "sfl"\ndataset = "digits"\n[sweep]\nseed = [0, 1]\n')
    assert main(["deploy", str(tmp_path / "app"), "--config", str(tmp_path / "one.toml"), "--set", "n_clients=3",
                 "--credentials", "3"]) == 0
    app = (tmp_path / "app" / "pyproject.toml").read_text()
    assert 'clientapp = "locfedmix.deploy.client_app:app"' in app and "n_clients = 3" in app
    assert sorted(p.name for p in (tmp_path / "app" / "credentials").iterdir()) == [
        "ca.crt", "node-0", "node-0.pub", "node-1", "node-1.pub", "node-2", "node-2.pub", "server.key", "server.pem"]
    assert (tmp_path / "app" / ".gitignore").read_text() == "credentials/\n"
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "app" / "credentials").iterdir()}
    assert {name for name, mode in modes.items() if mode == 0o600} == {"node-0", "node-1", "node-2", "server.key"}
    capsys.readouterr()
    assert main(["deploy", str(tmp_path / "app"), "--config", str(tmp_path / "one.toml")]) == 2
    assert main(["deploy", str(tmp_path / "other"), "--config", str(tmp_path / "sweep.toml")]) == 2
    assert main(["deploy", str(tmp_path / "third"), "--config", str(tmp_path / "one.toml"),
                 "--set", "n_clients=0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert [e.split(":")[1].strip() for e in errors] == ["error"] * 3 and len(errors) == 3
    assert "exists" in errors[0] and "[sweep]" in errors[1] and "n_clients" in errors[2]


def test_nodes_with_their_own_files_train_on_them_and_score_their_own_test_sets(tmp_path):
    """Each node reads its own .npz (data-path): the server learns only sizes, shapes and label counts; a run of
    psl (every client keeps its own model) scores each client's own test set in whole."""
    rng = np.random.default_rng(0)
    configs = []
    for k, n in enumerate((20, 12, 16)):
        path = tmp_path / f"client-{k}.npz"
        np.savez(path, x_train=rng.random((n, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 4, n),
                 x_test=rng.random((5 + k, 1, 8, 8), dtype=np.float32), y_test=rng.integers(0, 4, 5 + k))
        configs.append({"partition-id": k, "data-path": str(path)})
    run_config = flat({"algorithm": "psl", "dataset": "synthetic", "n_clients": 3, "rounds": 1, "batch_size": 8,
                       "seed": 0}) | {"deploy.out": str(tmp_path / "out")}
    summary = serve(LoopbackGrid(run_config, 3, node_configs=configs), run_config)
    assert summary["label_histograms"] == [np.bincount(np.load(tmp_path / f"client-{k}.npz")["y_train"],
                                                       minlength=4).tolist() for k in range(3)]
    assert summary["steps"] == 3  # ceil(20 / 8) steps of the largest client
    evaluate = summary["deployment"]["messages"]["evaluate"]
    assert evaluate["messages"] == 3 and math.isnan(summary["final"]["val_loss"])  # no validation sets were given
    correct = summary["final"]["test_accuracy"] * (5 + 6 + 7)  # over the three clients' own test sets together
    assert abs(correct - round(correct)) < 1e-9
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    bad = [c if c["partition-id"] else {"partition-id": 0, "data-path": str(tmp_path / "bad.npz")} for c in configs]
    with pytest.raises(DeploymentError, match="SuperNode 100 failed query.hello: DataError: node data .*bad.npz"):
        serve(LoopbackGrid(run_config, 3, node_configs=bad), run_config | {"deploy.overwrite": True})
