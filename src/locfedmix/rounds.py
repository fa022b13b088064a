"""The round loop every way of running shares: rounds trained, rows of metrics evaluated and flushed, checkpoints
written. What a round trains on and how a row is measured come from a `Workload`: the training tensors of this
process (api.py), or clients on other machines (locfedmix.deploy)."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from locfedmix.config import Config
from locfedmix.engines.flow.round import StepExecutor, steps_per_round, train_round
from locfedmix.engines.flow.state import Federation
from locfedmix.results import RunDirectory


def _nothing(fed: Federation, round_index: int) -> None:
    """The default round hook: nothing to prepare or probe."""


@dataclass
class Workload:
    """What the loop trains on: each client's samples as the schedule plans them (`client_indices`), how a planned
    step runs (`execute`), one metrics row after a round (`evaluate(fed, round, train_loss)`), and hooks before a
    round (`begin_round`: a streaming loader's plan) and after it (`after_round`: the leakage probe)."""

    client_indices: list[np.ndarray]
    execute: StepExecutor
    evaluate: Callable[[Federation, int, float], dict[str, Any]]
    begin_round: Callable[[Federation, int], None] = field(default=_nothing)
    after_round: Callable[[Federation, int], None] = field(default=_nothing)


def checkpoint_due(config: Config, round_index: int) -> bool:
    """Whether a run checkpoints after this round: every `checkpoint_every` rounds and after the last."""
    return bool(config.checkpoint_every) and (round_index % config.checkpoint_every == 0
                                              or round_index == config.rounds)


def progress_note(round_index: int, rounds: int, train_loss: float, rows: list[dict[str, Any]]) -> str:
    """The progress bar's text after a round: the round, its training loss and the last test accuracy."""
    accuracy = f"{rows[-1]['test_accuracy']:.3f}" if rows else "-"
    return f"round {round_index}/{rounds}, loss {train_loss:.3f}, test acc {accuracy}"


def train_rounds(fed: Federation, work: Workload, config: Config, run_dir: RunDirectory | None,
                 state: dict[str, Any], progress: bool, label: str | None, checkpoints: bool) -> None:
    """Rounds `state["round"] + 1` .. `config.rounds`, evaluating after every `eval.every` rounds (each row appended,
    flushed, to the run directory's logs) and, if `checkpoints`, checkpointing every `checkpoint_every` rounds;
    `state` (round, rows, train_seconds, leakage, trained_rounds) is updated in place and is exactly what a
    checkpoint holds besides the federation. In a distributed run every rank gathers the checkpoint; only rank 0
    has `run_dir` and writes."""
    per_round = steps_per_round(fed, work.client_indices, config.batch_size)
    with tqdm(total=config.rounds * per_round, initial=state["round"] * per_round, desc=label or config.algorithm,
              disable=None if progress else True, leave=False, unit="step") as bar:
        bar.set_postfix_str(f"round {state['round'] + 1}/{config.rounds}", refresh=False)
        for r in range(state["round"] + 1, config.rounds + 1):
            tick = time.perf_counter()
            work.begin_round(fed, r)
            train_loss = train_round(fed, work.client_indices, config.batch_size, r, work.execute,
                                     on_step=bar.update)
            bar.update(r * per_round - bar.n)  # sampled or dropped clients can make a round shorter
            state["train_seconds"] += time.perf_counter() - tick
            state["round"] = r
            state["trained_rounds"] += math.isfinite(train_loss)  # a round with no step served has a NaN loss
            if r % config.eval.every == 0 or r == config.rounds:
                state["rows"].append(work.evaluate(fed, r, train_loss))
                if run_dir:
                    run_dir.append(state["rows"][-1])
            bar.set_postfix_str(progress_note(r, config.rounds, train_loss, state["rows"]))
            work.after_round(fed, r)
            if checkpoints and checkpoint_due(config, r):
                checkpoint = {**state, "federation": fed.state_dict()}
                if run_dir:
                    run_dir.save_checkpoint(checkpoint)
