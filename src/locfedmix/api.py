"""The one-call API: `run(config)` trains one algorithm on one federation and returns its summary."""

import resource
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from locfedmix import registry
from locfedmix.config import Config
from locfedmix.data.datasets import DATASETS, Dataset
from locfedmix.data.normalize import Standardization, standardize
from locfedmix.data.streaming import StreamingSteps, evaluation_rows
from locfedmix.data.user import data_path, load_named, to_dataset
from locfedmix.data.partition import label_histograms, partition, split_validation
from locfedmix.engines.backends.denormals import denormals_flushed
from locfedmix.engines.backends.device import resolve_device
from locfedmix.engines.transports.distributed import agree, is_primary, join, world_size
from locfedmix.errors import NothingTrained, NumericalError, UserError
from locfedmix.engines.assemble import build_federation
from locfedmix.engines.flow.round import data_step
from locfedmix.engines.flow.state import Federation
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
from locfedmix.engines.backends.threads import default_threads, intra_op_threads
from locfedmix.evaluation import evaluate_federation
from locfedmix.latency.ledger import Direction
from locfedmix.models import Model
from locfedmix.privacy.leakage import THREAT_MODEL, LeakageProbe, auxiliary_split
from locfedmix.results import RunDirectory, restore_federation
from locfedmix.rng import numpy_generator
from locfedmix.rounds import Workload, train_rounds
from locfedmix.selection import validation_selected


@dataclass
class FederatedData:
    dataset: Dataset
    client_indices: list[np.ndarray]  # indices into dataset.x_train
    val_indices: np.ndarray  # into dataset.x_train, shuffled (evaluation shards must be random)
    test_order: np.ndarray  # a shuffled order of the test set
    aux_indices: np.ndarray  # into dataset.x_train: the leakage attacker's own data (empty unless leakage is on)
    standardization: Standardization | None = None  # what dataset's images were standardized with (data.normalize)

    def histograms(self) -> list[list[int]]:
        labels = self.dataset.y_train.cpu().numpy()
        return label_histograms(labels, self.client_indices, self.dataset.n_classes)


def federate(config: Config, source: Any = None) -> FederatedData:
    """Load the dataset (`source`, the user's own data, in place of config.dataset when given), hold out the
    validation split, standardize a built-in dataset's images by the rest (data.normalize; a user's data arrive as
    given), and partition the rest among the clients."""
    budget = config.data.memory_mb
    dataset = (load_named(config.dataset, config.data.dir, config.seed, budget) if source is None
               else to_dataset(source, "user", budget))
    if config.leakage.enabled and data_path(dataset) == "streaming":
        raise UserError(f"[leakage] needs the data in memory; raise data.memory_mb above {budget:g}")
    labels = dataset.y_train.numpy()
    train, val = split_validation(labels, config.data.val_fraction, numpy_generator(config.seed, "validation"))
    stats = None
    if config.data.normalize and source is None and config.dataset in DATASETS:
        dataset, stats = standardize(dataset, train)
    parts = partition(
        config.partition, labels[train], config.n_clients, numpy_generator(config.seed, "partition"),
        samples_per_client=config.samples_per_client or None,
        **config.data.model_dump(include={"alpha", "min_partition_size", "num_classes_per_partition",
                                          "class_assignment_mode", "num_shards_per_partition", "shard_size"}),
    )
    shuffle = numpy_generator(config.seed, "evaluation-order")
    clients = [train[p] for p in parts]
    aux = (auxiliary_split(len(labels), clients, config.leakage.aux_samples, numpy_generator(config.seed, "auxiliary"))
           if config.leakage.enabled else np.empty(0, np.int64))
    return FederatedData(dataset, clients, shuffle.permutation(val), shuffle.permutation(len(dataset.y_test)), aux,
                         stats)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (the accelerator's peak allocation when training ran on one)."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_to_target(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Simulated seconds and steps until the test accuracy first reaches the target (at evaluation granularity)."""
    reached = next((r for r in rows if r["test_accuracy"] >= target), None)
    if reached is None:
        return {"target_accuracy": target, "reached": False}
    return {"target_accuracy": target, "reached": True, "round": reached["round"], "step": reached["step"],
            "simulated_seconds": reached["simulated_seconds"]}


def evaluate_row(fed: Federation, data: FederatedData, config: Config, round_index: int,
                 train_loss: float) -> dict[str, Any]:
    """One metrics.csv row: validation and test metrics of the deployed models, cumulative bytes and simulated time."""
    ds, batch, budget = data.dataset, config.eval.batch_size, config.data.memory_mb
    validation = (float("nan"), float("nan"))
    if len(data.val_indices):
        validation = evaluate_federation(fed, evaluation_rows(ds.x_train, data.val_indices, budget),
                                         ds.y_train[data.val_indices], batch, "validation")
    test = evaluate_federation(fed, evaluation_rows(ds.x_test, data.test_order, budget), ds.y_test[data.test_order],
                               batch, "test")
    return metrics_row(fed, config, round_index, train_loss, validation, test)


def metrics_row(fed: Federation, config: Config, round_index: int, train_loss: float,
                validation: tuple[float, float], test: tuple[float, float]) -> dict[str, Any]:
    """A metrics.csv row from the round's validation and test (loss, accuracy), with the ledger and the clock."""
    return dict(round=round_index, step=fed.step, algorithm=config.algorithm, n_clients=config.n_clients,
                train_loss=train_loss, val_loss=validation[0], val_accuracy=validation[1], test_loss=test[0],
                test_accuracy=test[1], bytes_up=fed.ledger.total(Direction.UP),
                bytes_down=fed.ledger.total(Direction.DOWN), simulated_seconds=fed.clock.seconds)


def summarize(fed: Federation, data: FederatedData, config: Config, rows: list[dict[str, Any]],
              wall_seconds: float, train_seconds: float) -> dict[str, Any]:
    return run_summary(fed, config, rows, wall_seconds, train_seconds) | {
        "normalization": data.standardization.summary() if data.standardization else None,
        "label_histograms": data.histograms(),
        "data_files": [{"path": path, "sha256": digest} for path, digest in data.dataset.files],
    }


def run_summary(fed: Federation, config: Config, rows: list[dict[str, Any]], wall_seconds: float,
                train_seconds: float) -> dict[str, Any]:
    """summary.json's entries that come from the federation and the rows, wherever its clients ran."""
    return {
        "algorithm": config.algorithm, "parts": repr(fed.algo), "final": rows[-1], "steps": fed.step,
        "best_test_accuracy": max(r["test_accuracy"] for r in rows),  # picked on the test set: optimistic
        "validation_selected": validation_selected(rows),  # the round picked on validation, and its test accuracy
        "time_to_target": time_to_target(rows, config.latency.target_accuracy),
        "ledger_bytes": fed.ledger.summary(), "simulated": fed.clock.state_dict(),
        "flops_per_sample": asdict(fed.flops), "latency_profile": asdict(fed.profile),
        "wall_seconds": wall_seconds, "engine": type(fed.clients).__name__, "device": str(fed.server.device),
        "processes": world_size(), "threads": torch.get_num_threads(),
        "train_samples_per_second": config.rounds * sum(fed.sizes) / train_seconds,
        "peak_memory_mb": peak_memory_mb(),
    }


def nothing_trained(state: dict[str, Any]) -> dict[str, Any]:
    """A warning (and summary.json's `warnings`) when no round trained any model: the numbers are the initial
    models', which a NaN training loss alone would not say."""
    if state["trained_rounds"]:
        return {}
    message = (f"no step trained any model in {state['round']} rounds (every upload missed the deadline, or every "
               "client dropped out); the accuracies are those of the initial models")
    warnings.warn(message, NothingTrained, stacklevel=3)
    return {"warnings": [message]}


def measure_leakage(probe: LeakageProbe, round_index: int, run_dir: RunDirectory | None) -> dict[str, Any]:
    """The round's leakage numbers; the reconstructions kept for pictures go to the run directory at once."""
    measurement = probe.measure(round_index)
    if run_dir:
        run_dir.write_examples(measurement.examples)
    return measurement.metrics


def privacy_summary(fed: Federation, config: Config, leaks: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's privacy entries, present only where a defence or the leakage measurement is on."""
    out: dict[str, Any] = {}
    if fed.defence.active:
        out["privacy"] = fed.defence.summary()
    if leaks:
        settings = config.leakage.model_dump(exclude={"enabled", "every_round", "examples"})
        out["leakage"] = {"threat_model": THREAT_MODEL, "settings": settings, "final": leaks[-1],
                          **({"rounds": leaks} if config.leakage.every_round else {})}
    return out


def local_workload(fed: Federation, data: FederatedData, config: Config, run_dir: RunDirectory | None,
                   state: dict[str, Any]) -> Workload:
    """The rounds on this process's training tensors (read per step when they stream), evaluated on its validation
    and test sets, with the leakage probe after the rounds `[leakage]` names (its numbers into state["leakage"])."""
    ds = data.dataset
    streaming = data_path(ds) == "streaming"
    execute = (StreamingSteps(ds.x_train, ds.y_train, config.data.workers, fed.server.device, data_step) if streaming
               else data_step(ds.x_train, ds.y_train))
    work = Workload(data.client_indices, execute, lambda f, r, loss: evaluate_row(f, data, config, r, loss))
    if streaming:
        work.begin_round = lambda f, r: execute.begin_round(f, data.client_indices, config.batch_size, r)
    if config.leakage.enabled:
        probe = LeakageProbe(fed, ds.x_train, ds.y_train, data.client_indices, data.aux_indices, config.leakage,
                             data.standardization)

        def after_round(f: Federation, r: int) -> None:
            if config.leakage.every_round or r == config.rounds:
                state["leakage"].append(measure_leakage(probe, r, run_dir))

        work.after_round = after_round
    return work


def run(config: Config, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True,
        label: str | None = None, resume: bool = False, model: Model | None = None, dataset: Any = None,
        tune_process: bool = False) -> dict[str, Any]:
    """Train `config.rounds` rounds and return the summary; write the run directory if `out` (metrics.csv and
    events.jsonl gain a row, flushed, after every evaluation; a checkpoint every `checkpoint_every` rounds).
    `resume` continues the run in `out` from its last checkpoint and ends with the same numbers as an uninterrupted
    run. With leakage on, the smashed data are probed after the last round (or every round). `model` (a
    locfedmix.Model) and `dataset` (data/sources.py) replace config.model and config.dataset with the caller's own.
    `tune_process` applies the process-wide settings the config's [engine] asks for (host memory kept, denormals
    flushed while training, the thread count engine.threads = 0 picks); the CLI asks for them, a library call leaves
    its caller's process alone unless it does. An explicit engine.threads holds while the run lasts, either way."""
    if config.log.tensorboard and out is None:
        raise UserError("log.tensorboard=true needs a run directory to write into; pass out=DIR (--out)")
    started = time.perf_counter()
    if tune_process and config.engine.keep_host_memory:
        keep_freed_host_memory()
    shard, device = join(config, resolve_device(config.engine.device))
    with intra_op_threads(config.engine.threads or (default_threads() if tune_process else None)):
        data = federate(config, dataset)
        data.dataset = ds = data.dataset.to(device)
        with given_model(config, model) as model_config:
            fed = build_federation(model_config, config.resolved_algorithm(), ds.input_shape, ds.n_classes,
                                   [len(i) for i in data.client_indices], device, shard)
        run_dir = _open_run(out, config, overwrite, resume)
        state: dict[str, Any] = {"round": 0, "rows": [], "train_seconds": 0.0, "leakage": [], "trained_rounds": 0,
                                 "threads": torch.get_num_threads()}
        writer = run_dir if is_primary() else None  # every rank computes the same rows; rank 0 writes them
        try:
            checkpoint = run_dir.load_checkpoint() if resume and run_dir else None
            if checkpoint is not None:
                restore_federation(fed, checkpoint, run_dir.checkpoint)
                state = {key: checkpoint.get(key, default) for key, default in state.items()}
                if tune_process and not config.engine.threads:  # the count the run started with: its numbers
                    torch.set_num_threads(state["threads"])
            if writer:
                writer.begin(checkpoint, resume)
            with denormals_flushed(tune_process and config.engine.flush_denormals):
                train_rounds(fed, local_workload(fed, data, config, writer, state), config, writer, state,
                             progress and is_primary(), label, out is not None)
            summary = summarize(fed, data, config, state["rows"], time.perf_counter() - started, state["train_seconds"])
            summary |= privacy_summary(fed, config, state["leakage"]) | nothing_trained(state)
            summary["data"] = data_path(ds)
            if writer:
                writer.finish(summary)
        except NumericalError as err:
            err.checkpoint = run_dir.checkpoint if run_dir and run_dir.saved_round is not None else None
            raise
        finally:
            if run_dir:
                run_dir.close()
    return summary


@contextmanager
def given_model(config: Config, model: Model | None) -> Iterator[Config]:
    """The config the federation is built from: `model`, when given, registered for the build under a name no
    config can hold, in place of config.model."""
    if model is None:
        yield config
        return
    if not isinstance(model, Model):
        raise UserError(f"model= takes a locfedmix.Model (network and cut), not a {type(model).__name__}")
    with registry.given(registry.MODELS, "<python>", model) as name:
        yield config.model_copy(update={"model": name, "cut": 0})


def _open_run(out: str | Path | None, config: Config, overwrite: bool, resume: bool) -> RunDirectory | None:
    """The run directory: opened for writing by rank 0 alone, for reading a checkpoint by every rank (a shared
    filesystem on several machines); all ranks agree on whether it could be opened."""
    if out is None:
        return None
    run_dir, error = None, None
    if is_primary() or resume:
        try:
            run_dir = RunDirectory(out, config, overwrite, resume, lock=is_primary())
        except UserError as err:
            error = str(err)
    agree(error)
    return run_dir

