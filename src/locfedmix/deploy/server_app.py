"""The Flower `ServerApp`: the server of a split-learning run whose clients are SuperNodes. It greets the nodes,
learns which client each one is, and runs the library's own round loop (locfedmix.rounds) with the Flower transport:
the same flow, server step, relay and FedAvg as a run in one process, the clients' halves done on their machines.
The run directory (metrics.csv, summary.json) is written on the server's machine, at `deploy.out`."""

import json
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from locfedmix.api import metrics_row, run_summary
from locfedmix.config import Config
from locfedmix.deploy.node import upper_scores
from locfedmix.deploy.resume import checkpointing, new_deployment_id, restore_clients, resumed_state
from locfedmix.deploy.settings import DeploySettings, deploy_settings, locfedmix_config
from locfedmix.engines.assemble import build_federation, initial_models
from locfedmix.engines.flow.round import StepExecutor
from locfedmix.engines.flow.state import Federation
from locfedmix.engines.flow.step import train_step
from locfedmix.engines.transports.flower import FlowerLink, Templates
from locfedmix.engines.transports.flower_exchange import Messenger, Traffic
from locfedmix.engines.transports.flower_records import tensors_message
from locfedmix.errors import DeploymentError
from locfedmix.evaluation import Shard, combine_scores, deployed_models, deployed_shards
from locfedmix.results import RunDirectory, restore_federation
from locfedmix.rng import numpy_generator
from locfedmix.rounds import Workload, train_rounds

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, dict(context.run_config))


def wait_for_nodes(grid: Grid, n: int, settings: DeploySettings) -> list[int]:
    """The ids of the connected SuperNodes once there are n of them."""
    started = time.perf_counter()
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.perf_counter() - started > settings.timeout_s:
            raise DeploymentError(f"{len(nodes)} of the {n} SuperNodes connected within {settings.timeout_s:g} s")
        time.sleep(0.5)
    return nodes


def greet(grid: Grid, config: Config, settings: DeploySettings) -> tuple[dict[int, dict[str, Any]], Traffic]:
    """Client id → what its node said (node id, samples, histogram, shapes, fingerprint), one node per client; and
    the greeting's traffic."""
    nodes = wait_for_nodes(grid, config.n_clients, settings)
    hello = Messenger(grid, {n: n for n in nodes}, settings, who="SuperNode")
    clients: dict[int, dict[str, Any]] = {}
    for node, content in hello.exchange("hello", {n: RecordDict({"config": ConfigRecord({})}) for n in nodes}).items():
        said = {k: json.loads(v) if k in ("histogram", "input_shape", "evaluation") else v
                for k, v in content.config_records["config"].items()}
        if said["client"] in clients:
            raise DeploymentError(f"two SuperNodes say they are client {said['client']}")
        clients[said["client"]] = said | {"node": node}
    missing = sorted(set(range(config.n_clients)) - set(clients))
    if missing:
        raise DeploymentError(f"no SuperNode is client {missing[0]} (partition-id) of the {config.n_clients}")
    return clients, hello.traffic


def weight_templates(config: Config, input_shape: tuple[int, ...], n_classes: int) -> tuple[tuple[int, ...],
                                                                                             Templates]:
    """The smashed shape per sample and every weight a client sends (name → shape, dtype): what replies must hold."""
    model, head = initial_models(config, config.resolved_algorithm(), input_shape, n_classes)
    modules = {"lower": model.lower} | ({"head": head} if head is not None else {})
    return model.cut_shape, {f"{part}/{k}": (tuple(v.shape), v.dtype)
                             for part, module in modules.items() for k, v in module.state_dict().items()}


def remote_step(link: FlowerLink) -> StepExecutor:
    """A planned step run by the clients on their nodes; the plan's indices are positions in each one's samples.
    Its wall-clock time is counted (`traffic.step_seconds`): less its exchanges, what the server computed."""

    def execute(fed: Federation, plan: dict[int, np.ndarray]) -> float:
        link.step = fed.step
        batches = {i: (torch.as_tensor(rows, dtype=torch.int64), torch.empty(0)) for i, rows in plan.items()}
        mix_rng = numpy_generator(fed.seed, "smashmix", fed.step)
        started = time.perf_counter()
        try:
            return train_step(fed.algo, fed.recipe, fed.clients, fed.server, link, batches, fed.weights(plan),
                              mix_rng, fed.ledger, fed.defence, fed.step)
        finally:
            link.traffic.step_seconds += time.perf_counter() - started

    return execute


def remote_scores(link: FlowerLink, splits: dict[str, list[Shard]], batch_size: int,
                  step: int) -> dict[str, list[tuple[float, float]]]:
    """Every split's shards scored with the lower halves on the clients (one `evaluate.smashed` message per client
    for all its shards, all clients at once) and the upper model here, in the batches the clients computed."""
    asked: dict[int, list[tuple[str, Shard]]] = {}
    for split, shards in splits.items():
        for shard in shards:
            asked.setdefault(shard[0], []).append((split, shard))
    contents = {}
    for i, jobs in asked.items():
        state = jobs[0][1][1]  # the relay's model stands in for client i's in every split alike
        values = {f"lower/{k}": v for k, v in (state or {}).items()}
        contents[i] = tensors_message(values, shards=json.dumps([[split, start, stop] for split, (*_, start, stop)
                                                                 in jobs]),
                                      batch_size=batch_size, step=step, state=state is not None)
    replies = link.messenger.exchange("evaluate", contents)
    scores: dict[str, list[tuple[float, float]]] = {split: [] for split in splits}
    for i, jobs in asked.items():
        expected = {}
        for n, (_, (*_, start, stop)) in enumerate(jobs):
            expected |= {f"smashed/{n}": ((stop - start, *link.cut_shape), torch.float32),
                         f"labels/{n}": ((stop - start,), torch.int64)}
        got = link.read(i, "evaluate", replies[i], expected)
        for n, (split, (_, _, upper, _, _)) in enumerate(jobs):
            scores[split].append(upper_scores(upper, got[f"smashed/{n}"], got[f"labels/{n}"], batch_size))
    return scores


def own_shards(fed: Federation, link: FlowerLink, sizes: dict[int, int]) -> list[Shard]:
    """Every client scoring its own evaluation set in whole (`sizes`: client → its size) with the model deployed
    for it: its own lower model and its upper, or for the relay the current model (fetched from its holder; where
    its node is gone, the model the server last received, if any)."""
    if not fed.recipe.relay:
        return [(i, None, fed.server.upper_of(i), 0, n) for i, n in sizes.items() if n]
    holder, state, upper, _ = deployed_models(fed)[0]
    state = state or link.broadcast_lower(fed.clients, holder) or fed.relay_model
    return [(i, state, upper, 0, n) for i, n in sizes.items() if n]


def remote_row(link: FlowerLink, config: Config, clients: dict[int, dict[str, Any]]):
    """A metrics.csv row measured through the clients: for partitions of a dataset, validation and test shards
    scored as in one process; for clients with their own data, each client's own sets in whole."""
    own = all(c["own"] for c in clients.values())
    shared = clients[0]["evaluation"]

    def row(fed: Federation, round_index: int, train_loss: float) -> dict[str, Any]:
        splits = {}
        for split in ("validation", "test"):
            sizes = {i: c["evaluation"].get(split, 0) for i, c in clients.items()}
            if own and any(sizes.values()):
                splits[split] = own_shards(fed, link, sizes)
            elif not own and shared.get(split):
                splits[split] = deployed_shards(fed, shared[split])
        scores = remote_scores(link, splits, config.eval.batch_size, fed.step)
        result = {split: combine_scores(fed, shards, scores[split], sum(stop - start for *_, start, stop in shards))
                  for split, shards in splits.items()}
        nan = (float("nan"), float("nan"))
        return metrics_row(fed, config, round_index, train_loss, result.get("validation", nan),
                           result.get("test", nan))

    return row


def serve(grid: Grid, run_config: dict[str, Any]) -> dict[str, Any]:
    """Run the deployment the run config describes and return its summary (also written to `deploy.out`); with
    `deploy.resume`, continue the one whose checkpoint is there (deploy/resume.py)."""
    started = time.perf_counter()
    config, settings = locfedmix_config(run_config), deploy_settings(run_config)
    clients, traffic = greet(grid, config, settings)
    input_shape, n_classes = tuple(clients[0]["input_shape"]), max(int(c["classes"]) for c in clients.values())
    if len({c["own"] for c in clients.values()}) > 1:
        raise DeploymentError("some SuperNodes have their own data (data-path) and some a partition (partition-id "
                              "alone); give all of them their own data, or none")
    cut_shape, templates = weight_templates(config, input_shape, n_classes)
    messenger = Messenger(grid, {i: c["node"] for i, c in clients.items()}, settings, traffic)
    link = FlowerLink(messenger, cut_shape, templates, {i: c["digest"] for i, c in clients.items()},
                      config.client_optimizer.on_sync == "reset")
    sizes = [int(clients[i]["samples"]) for i in range(config.n_clients)]
    keeping = [i for i in range(config.n_clients) if clients[i]["keeps"]]
    fed = build_federation(config, config.resolved_algorithm(), input_shape, n_classes, sizes, link=link)
    work = Workload([np.arange(n) for n in sizes], remote_step(link), remote_row(link, config, clients))
    run_dir = RunDirectory(settings.out, config, settings.overwrite, settings.resume)
    state: dict[str, Any] = {"round": 0, "rows": [], "train_seconds": 0.0, "leakage": [], "trained_rounds": 0,
                             "deployment": new_deployment_id()}
    try:
        checkpoint = run_dir.load_checkpoint() if settings.resume else None
        resumed = None
        if checkpoint is not None:
            restore_federation(fed, checkpoint, run_dir.checkpoint)
            state = resumed_state(checkpoint, state, run_dir.checkpoint)
            resumed = restore_clients(fed, link, state, keeping)
            run_dir.write_config()
        work.after_round = checkpointing(link, config, state, keeping)
        run_dir.begin(checkpoint, settings.resume)
        train_rounds(fed, work, config, run_dir, state, False, None, True)
        summary = run_summary(fed, config, state["rows"], time.perf_counter() - started, state["train_seconds"])
        summary |= {"engine": "flower", "label_histograms": [clients[i]["histogram"] for i in range(len(sizes))],
                    "deployment": {"nodes": {i: c["node"] for i, c in clients.items()},
                                   "messages": link.traffic.summary(), "step_seconds": link.traffic.step_seconds,
                                   "lost": messenger.losses, "resumed": resumed}}
        run_dir.finish(summary)
    finally:
        run_dir.close()
    return summary
