"""events.jsonl and TensorBoard: one entry per metrics.csv row, nothing duplicated or lost across an interrupted and
resumed run, and no TensorBoard files unless asked for."""

import csv
import json
import sys

import pytest

import locfedmix.api
import locfedmix.rounds
from locfedmix.api import run
from locfedmix.config import validate
from locfedmix.errors import UserError

BASE = {"algorithm": "sfl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 30, "rounds": 4,
        "batch_size": 10, "seed": 2, "checkpoint_every": 2}


def config(**changes):
    tree = {**BASE, **changes}
    return validate(tree)


def metrics_rows(out) -> list[dict]:
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return [{k: (v if k == "algorithm" else float(v)) for k, v in row.items()} for row in rows]


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def events(out) -> list[dict]:
    return [strict(line) for line in (out / "events.jsonl").read_text().splitlines()]


def evaluations(out) -> list[dict]:
    """The evaluation events without their wall-clock time, numbers as floats, to compare with metrics.csv rows."""
    return [{k: (v if k == "algorithm" else float("nan") if v is None else float(v)) for k, v in e.items()
             if k not in ("event", "time")} for e in events(out) if e["event"] == "evaluation"]


def interrupt_at(monkeypatch, round_index: int) -> None:
    """Stop the run the way Ctrl-C does, mid-way through `round_index` (after the rows of the rounds before)."""
    real = locfedmix.rounds.train_round

    def train_round(fed, indices, batch_size, r, execute, on_step=None):
        if r == round_index:
            raise KeyboardInterrupt
        return real(fed, indices, batch_size, r, execute, on_step=on_step)

    monkeypatch.setattr(locfedmix.rounds, "train_round", train_round)


def test_one_event_per_metrics_row_between_start_and_end(tmp_path):
    summary = run(config(), tmp_path / "r", progress=False)
    log = events(tmp_path / "r")
    assert [e["event"] for e in log] == ["run_start"] + ["evaluation"] * 4 + ["run_end"]
    assert evaluations(tmp_path / "r") == metrics_rows(tmp_path / "r")
    assert log[-1]["test_accuracy"] == summary["final"]["test_accuracy"] and log[0]["resumed_from_round"] is None


def test_an_empty_validation_split_writes_null_not_nan(tmp_path):
    run(config(rounds=1, data={"val_fraction": 0.0}), tmp_path / "r", progress=False)
    (row,) = [e for e in events(tmp_path / "r") if e["event"] == "evaluation"]
    assert row["val_loss"] is None and row["val_accuracy"] is None


def test_resume_neither_duplicates_nor_loses_rows(tmp_path, monkeypatch):
    """Interrupted in round 4 with the last checkpoint at round 2: round 3's row was written after that checkpoint,
    and a kill left half a line. The resumed run redoes rounds 3 and 4; each row is in the log exactly once."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run(config(), reference, progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 4)
        with pytest.raises(KeyboardInterrupt):
            run(config(), killed, progress=False)
    assert len(evaluations(killed)) == 3
    with (killed / "events.jsonl").open("a") as f:
        f.write('{"event": "evalu')
    run(config(), killed, progress=False, resume=True)
    assert evaluations(killed) == evaluations(reference) == metrics_rows(reference)
    assert (killed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    starts = [e["resumed_from_round"] for e in events(killed) if e["event"] == "run_start"]
    assert starts == [None, 2]


def assert_scalars_match(directory, rows: list[dict]) -> None:
    """TensorBoard's test-accuracy curve (as TensorBoard itself reads it back) has one point per metrics.csv row, at
    that row's round, with its value (stored as float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    points = accumulator.Scalars("accuracy/test")
    assert [e.step for e in points] == [int(r["round"]) for r in rows]
    assert [e.value for e in points] == pytest.approx([r["test_accuracy"] for r in rows], rel=1e-6)


def test_tensorboard_holds_the_metrics_when_enabled(tmp_path):
    run(config(rounds=2, log={"tensorboard": True}), tmp_path / "r", progress=False)
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert_scalars_match(tmp_path / "r" / "tensorboard", metrics_rows(tmp_path / "r"))


def test_tensorboard_writes_nothing_when_disabled(tmp_path):
    out = tmp_path / "r"
    run(config(rounds=1, log={"tensorboard": True}), out, progress=False)
    run(config(rounds=1), out, progress=False, overwrite=True)  # the overwritten run's curves go too
    assert not (out / "tensorboard").exists() and not list(out.rglob("*tfevents*"))


def test_tensorboard_after_resume_has_each_round_once(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at(patch, 4)
        with pytest.raises(KeyboardInterrupt):
            run(config(log={"tensorboard": True}), tmp_path / "r", progress=False)
    run(config(log={"tensorboard": True}), tmp_path / "r", progress=False, resume=True)
    assert_scalars_match(tmp_path / "r" / "tensorboard", metrics_rows(tmp_path / "r"))


def test_tensorboard_needs_a_run_directory():
    with pytest.raises(UserError, match="log.tensorboard=true needs a run directory"):
        run(config(log={"tensorboard": True}), progress=False)


def test_tensorboard_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    with pytest.raises(UserError, match=r"pip install 'locfedmix\[tensorboard\]'"):
        run(config(rounds=1, log={"tensorboard": True}), tmp_path / "r", progress=False)
