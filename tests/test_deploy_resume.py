"""A deployment's server that crashes and is restarted with `deploy.resume` ends with the metrics.csv of a run
that was never interrupted: the server from its checkpoint, each client from the state its node saved then (a new
Flower run: every ClientApp context starts empty). A node that kept nothing continues as a restarted node."""

import json

import pytest

import locfedmix
from locfedmix.deploy.loopback import LoopbackGrid
from locfedmix.deploy.node_store import NodeStore
from locfedmix.deploy.server_app import serve
from locfedmix.errors import UserError
from test_deploy import BASE, flat


class ServerCrash(Exception):
    """The server process dies."""


class CrashAfterSave(LoopbackGrid):
    """The server dies at its first message after the clients saved their states of round `at` (its checkpoint of
    that round is written by then)."""

    def __init__(self, run_config, n, node_configs, at):
        super().__init__(run_config, n, node_configs=node_configs)
        self.at, self.saved = at, False

    def push_messages(self, messages):
        messages = list(messages)
        if self.saved and messages[0].metadata.message_type != "train.save":
            raise ServerCrash
        self.saved |= any(m.metadata.message_type == "train.save"
                          and m.content.config_records["config"]["round"] == self.at for m in messages)
        return super().push_messages(messages)


def nodes(tmp_path, keeping=(0, 1, 2)) -> list[dict]:
    """Three nodes, those in `keeping` with a state-dir of their own."""
    return [{"partition-id": k} | ({"state-dir": str(tmp_path / f"node{k}")} if k in keeping else {})
            for k in range(3)]


def crash_and_resume(tmp_path, tree: dict, keeping=(0, 1, 2)) -> dict:
    """The deployment of `tree`, started for one round fewer, crashed after round 2's checkpoint, then resumed (to
    all its rounds) on fresh ClientApp contexts."""
    run_config = flat(tree) | {"deploy.out": str(tmp_path / "deployed")}
    shorter = run_config | {"rounds": tree["rounds"] - 1}
    with pytest.raises(ServerCrash):
        serve(CrashAfterSave(shorter, 3, nodes(tmp_path, keeping), at=2), shorter)
    resumed = run_config | {"deploy.resume": True}
    return serve(LoopbackGrid(resumed, 3, node_configs=nodes(tmp_path, keeping)), resumed)


@pytest.mark.parametrize("algorithm", ["psl", "sl", "locfedmix"])
def test_a_restarted_server_resumes_every_client_where_it_was(tmp_path, one_thread, algorithm):
    """psl's clients never share their models (each must come back from its own node), sl's relay holder keeps the
    model the next client needs, and locfedmix's clients hold Adam moments and a decoder between FedAvg rounds."""
    tree = BASE | {"algorithm": algorithm, "rounds": 4}
    locfedmix.run(locfedmix.validate(tree), tmp_path / "one", progress=False)
    summary = crash_and_resume(tmp_path, tree)
    assert summary["deployment"]["resumed"] == {"from_round": 2, "restored": [0, 1, 2], "not_restored": []}
    messages = summary["deployment"]["messages"]  # counted on from the checkpoint: 4 checkpoints, 3 keeping nodes
    assert messages["save"]["messages"] == 4 * 3 and messages["restore"]["messages"] == 3
    assert (tmp_path / "deployed" / "metrics.csv").read_text() == (tmp_path / "one" / "metrics.csv").read_text()
    events = [json.loads(line) for line in (tmp_path / "deployed" / "events.jsonl").read_text().splitlines()]
    assert [e["resumed_from_round"] for e in events if e["event"] == "run_start"] == [None, 2]
    assert (tmp_path / "deployed" / "config.toml").read_text() == (tmp_path / "one" / "config.toml").read_text()
    assert sorted(p.name for p in (tmp_path / "node1").glob("*/*")) == ["client-1-round-3.pt",
                                                                       "client-1-round-4.pt"]


def test_a_node_that_kept_no_state_continues_from_the_global_model(tmp_path, one_thread):
    """Client 2's node has no state-dir: after the restart it is found stale and takes the last FedAvg average,
    so with Adam restarted at every FedAvg the numbers are still those of the uninterrupted run."""
    tree = BASE | {"algorithm": "sfl", "rounds": 4, "client_optimizer": {"on_sync": "reset"}, "algo": {"sync_every": 1}}
    locfedmix.run(locfedmix.validate(tree), tmp_path / "one", progress=False)
    summary = crash_and_resume(tmp_path, tree, keeping=(0, 1))
    assert summary["deployment"]["resumed"]["not_restored"] == [2]
    assert summary["deployment"]["messages"]["save"]["messages"] == 4 * 2  # only the nodes that keep state save
    assert (tmp_path / "deployed" / "metrics.csv").read_text() == (tmp_path / "one" / "metrics.csv").read_text()


def test_a_checkpoint_of_a_run_in_one_process_is_not_resumed_as_a_deployment(tmp_path):
    tree = BASE | {"algorithm": "psl"}
    locfedmix.run(locfedmix.validate(tree), tmp_path / "one", progress=False)
    run_config = flat(tree) | {"deploy.out": str(tmp_path / "one"), "deploy.resume": True}
    with pytest.raises(UserError, match=r"^checkpoint '.*checkpoint.pt' was not written by a deployment"):
        serve(LoopbackGrid(run_config, 3), run_config)


def test_a_node_keeps_its_last_two_saved_states_and_refuses_a_foreign_deployment_id(tmp_path):
    store = NodeStore(tmp_path, "ab" * 16, 4, limit=2**20)
    for r in (1, 2, 3):
        store.save({"round": r}, r)
    assert sorted(p.name for p in store.folder.iterdir()) == ["client-4-round-2.pt", "client-4-round-3.pt"]
    assert store.load(2) == {"round": 2} and store.load(1) is None
    with pytest.raises(ValueError, match="is not 32 hexadecimal digits"):
        NodeStore(tmp_path, "../../etc", 0, limit=1)


class Vanish(LoopbackGrid):
    """The node that the first `kind` message goes to is unavailable for that exchange (none: a clean run); the
    model fingerprint each node is expected to hold at its first `train.forward` is noted."""

    def __init__(self, run_config, n, kind=None):
        super().__init__(run_config, n)
        self.kind, self.gone, self.expected = kind, False, {}

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            if m.metadata.message_type == "train.forward":
                self.expected.setdefault(m.metadata.dst_node_id, m.content.config_records["config"]["expect"])
        if not self.gone and any(m.metadata.message_type == self.kind for m in messages):
            self.gone = True
            self.offline.add(messages[0].metadata.dst_node_id)
            try:
                return super().push_messages(messages)
            finally:
                self.offline.clear()
        return super().push_messages(messages)


def test_a_relay_holder_gone_at_its_hand_back_loses_its_turn_and_the_relay_goes_on(tmp_path):
    """sl: the first holder's node is gone when the server asks for its model back. Its turn is lost to the relay,
    which goes on from the model the server last received: before any hand-back, the shared initial model, which
    the next holder starts from (in a clean run it starts from the first holder's model)."""
    tree = BASE | {"algorithm": "sl", "rounds": 2}
    grids = {}
    for kind in ("query.weights", None):
        run_config = flat(tree) | {"deploy.out": str(tmp_path / str(kind))}
        grids[kind] = grid = Vanish(run_config, 3, kind)
        summary = serve(grid, run_config)
        assert [(loss["message"], loss["client"]) for loss in summary["deployment"]["lost"]] == (
            [("query.weights", 0)] if kind else [])
        rows = (tmp_path / str(kind) / "metrics.csv").read_text().splitlines()[1:]
        assert [row.split(",")[0] for row in rows] == ["1", "2"]
    first, second = list(grids[None].expected)[:2]  # the first two holders, in the order they trained
    assert grids["query.weights"].expected[second] == grids["query.weights"].expected[first]
    assert grids[None].expected[second] != grids[None].expected[first]
