"""The one-call API: `run(config)` trains one algorithm on one federation and returns its summary."""

import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from locfedmix.config import Config
from locfedmix.data.datasets import Dataset, load_dataset
from locfedmix.data.partition import label_histograms, partition, split_validation
from locfedmix.engines.device import resolve_device
from locfedmix.engines.federation import Federation, build_federation, data_step, steps_per_round, train_round
from locfedmix.evaluation import evaluate_federation
from locfedmix.latency.ledger import Direction
from locfedmix.privacy.leakage import THREAT_MODEL, LeakageProbe, auxiliary_split
from locfedmix.results import RunDirectory
from locfedmix.rng import numpy_generator


@dataclass
class FederatedData:
    dataset: Dataset
    client_indices: list[np.ndarray]  # indices into dataset.x_train
    val_indices: np.ndarray  # into dataset.x_train, shuffled (evaluation shards must be random)
    test_order: np.ndarray  # a shuffled order of the test set
    aux_indices: np.ndarray  # into dataset.x_train: the leakage attacker's own data (empty unless leakage is on)

    def histograms(self) -> list[list[int]]:
        labels = self.dataset.y_train.cpu().numpy()
        return label_histograms(labels, self.client_indices, self.dataset.n_classes)


def federate(config: Config) -> FederatedData:
    """Load the dataset, hold out the validation split, and partition the rest among the clients."""
    dataset = load_dataset(config.dataset, config.data.dir, config.seed)
    labels = dataset.y_train.numpy()
    train, val = split_validation(labels, config.data.val_fraction, numpy_generator(config.seed, "validation"))
    parts = partition(
        config.partition, labels[train], config.n_clients, numpy_generator(config.seed, "partition"),
        samples_per_client=config.samples_per_client or None, alpha=config.data.dirichlet_alpha,
        min_samples=config.data.min_samples, classes_per_client=config.data.classes_per_client,
    )
    shuffle = numpy_generator(config.seed, "evaluation-order")
    clients = [train[p] for p in parts]
    aux = (auxiliary_split(len(labels), clients, config.leakage.aux_samples, numpy_generator(config.seed, "auxiliary"))
           if config.leakage.enabled else np.empty(0, np.int64))
    return FederatedData(dataset, clients, shuffle.permutation(val), shuffle.permutation(len(dataset.y_test)), aux)


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
    ds, batch = data.dataset, config.eval.batch_size
    val_loss = val_acc = float("nan")
    if len(data.val_indices):
        val_loss, val_acc = evaluate_federation(fed, ds.x_train[data.val_indices], ds.y_train[data.val_indices], batch,
                                                "validation")
    test_loss, test_acc = evaluate_federation(fed, ds.x_test[data.test_order], ds.y_test[data.test_order], batch,
                                              "test")
    return dict(round=round_index, step=fed.step, algorithm=config.algorithm, n_clients=config.n_clients,
                train_loss=train_loss, val_loss=val_loss, val_accuracy=val_acc, test_loss=test_loss,
                test_accuracy=test_acc, bytes_up=fed.ledger.total(Direction.UP),
                bytes_down=fed.ledger.total(Direction.DOWN), simulated_seconds=fed.clock.seconds)


def summarize(fed: Federation, data: FederatedData, config: Config, rows: list[dict[str, Any]],
              wall_seconds: float, train_seconds: float) -> dict[str, Any]:
    return {
        "algorithm": config.algorithm, "parts": repr(fed.algo), "final": rows[-1], "steps": fed.step,
        "best_test_accuracy": max(r["test_accuracy"] for r in rows),
        "time_to_target": time_to_target(rows, config.latency.target_accuracy),
        "ledger_bytes": fed.ledger.summary(), "simulated": fed.clock.state_dict(),
        "flops_per_sample": asdict(fed.flops), "latency_profile": asdict(fed.profile),
        "wall_seconds": wall_seconds, "engine": type(fed.clients).__name__, "device": str(fed.server.device),
        "train_samples_per_second": config.rounds * sum(fed.sizes) / train_seconds,
        "peak_memory_mb": peak_memory_mb(), "label_histograms": data.histograms(),
    }


def restore(fed: Federation, run_dir: RunDirectory | None, resume: bool) -> dict[str, Any]:
    """Where a run stands: from its last checkpoint when resuming one that has it, else from the start."""
    state = {"round": 0, "rows": [], "train_seconds": 0.0, "leakage": []}
    checkpoint = run_dir.load_checkpoint() if resume and run_dir else None
    if checkpoint is not None:
        fed.load_state_dict(checkpoint["federation"])
        state.update({k: checkpoint[k] for k in state if k in checkpoint})
    if resume and run_dir:
        run_dir.rewrite_metrics(state["rows"])
    return state


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


def run(config: Config, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True,
        label: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train `config.rounds` rounds, evaluating after every `eval.every` rounds; write the run directory if `out`
    (metrics.csv gains a row, flushed, after every evaluation; a checkpoint every `checkpoint_every` rounds).
    `resume` continues the run in `out` from its last checkpoint and ends with the same numbers as an uninterrupted
    run. With leakage on, the smashed data are probed after the last round (or every round)."""
    started = time.perf_counter()
    device = resolve_device(config.engine.device)
    data = federate(config)
    data.dataset = ds = data.dataset.to(device)
    fed = build_federation(config, config.resolved_algorithm(), ds.input_shape, ds.n_classes,
                           [len(i) for i in data.client_indices], device)
    run_dir = RunDirectory(out, config, overwrite, resume) if out is not None else None
    state = restore(fed, run_dir, resume)
    rows, leaks = state["rows"], state["leakage"]
    probe = (LeakageProbe(fed, ds.x_train, data.client_indices, data.aux_indices, config.leakage)
             if config.leakage.enabled else None)
    execute = data_step(ds.x_train, ds.y_train)
    per_round = steps_per_round(fed, data.client_indices, config.batch_size)
    with tqdm(total=config.rounds * per_round, initial=state["round"] * per_round, desc=label or config.algorithm,
              disable=None if progress else True, leave=False, unit="step") as bar:
        for r in range(state["round"] + 1, config.rounds + 1):
            tick = time.perf_counter()
            train_loss = train_round(fed, data.client_indices, config.batch_size, r, execute, on_step=bar.update)
            state["train_seconds"] += time.perf_counter() - tick
            if r % config.eval.every == 0 or r == config.rounds:
                rows.append(evaluate_row(fed, data, config, r, train_loss))
                if run_dir:
                    run_dir.append(rows[-1])
                bar.set_postfix(test_acc=f"{rows[-1]['test_accuracy']:.3f}")
            if probe and (config.leakage.every_round or r == config.rounds):
                leaks.append(measure_leakage(probe, r, run_dir))
            if run_dir and config.checkpoint_every and (r % config.checkpoint_every == 0 or r == config.rounds):
                state["round"] = r
                run_dir.save_checkpoint({**state, "federation": fed.state_dict()})
    summary = summarize(fed, data, config, rows, time.perf_counter() - started, state["train_seconds"])
    summary |= privacy_summary(fed, config, leaks)
    if run_dir:
        run_dir.write_summary(summary)
    return summary
