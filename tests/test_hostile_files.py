"""The files around a run under attack (issue #26, classes 1-8): every scenario of hostile_scenarios.py as a real
process on real files, ending in its exit code and one line with nothing outside its run directory changed; and the
guarantees a scenario cannot show alone (what --overwrite keeps, provenance, fingerprints, strict JSON, a full disk).
Tests named test_doorN_* belong to class N (benchmarks/reliability.py counts them)."""

import hashlib
import json
import subprocess

import pytest
import torch

from hostile_play import COMMAND, ENV, IDX_NAMES, finished_run, idx_set, mounted_tmpfs, play, run_args, write_config
from hostile_scenarios import SCENARIOS

def locfedmix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_hostile_scenario(scenario, tmp_path):
    outcome = play(scenario, tmp_path)
    assert outcome.matches(scenario), outcome


def test_door1_overwrite_removes_only_the_files_locfedmix_writes(tmp_path):
    out = finished_run(tmp_path, log={"tensorboard": True})
    (out / "notes.txt").write_text("mine\n")
    (out / "tensorboard" / "mine.txt").write_text("mine\n")
    old_events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    done = locfedmix(*run_args(tmp_path / "base.toml", out, "--overwrite", "--set", "log.tensorboard=true"))
    assert done.returncode == 0, done.stderr
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "tensorboard" / "mine.txt").read_text() == "mine\n"
    new_events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert old_events and not set(old_events) & set(new_events) and len(new_events) == 1


def test_door4_a_config_past_the_size_cap_is_refused_on_what_is_read(tmp_path):
    config = write_config(tmp_path / "c.toml")
    with config.open("a") as f:
        f.write("#" * 2**21 + "\n")  # valid TOML (a comment), twice the 1 MiB cap
    done = locfedmix(*run_args(config, tmp_path / "run"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and f"bytes; at most {2**20}" in done.stderr
    assert not (tmp_path / "run").exists()


def test_door5_summary_records_the_data_files_and_their_sha256(tmp_path):
    folder = idx_set(tmp_path / "fm")
    config = write_config(tmp_path / "c.toml", dataset="fashion-mnist", data={"dir": str(folder)})
    assert locfedmix(*run_args(config, tmp_path / "run")).returncode == 0
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["data_files"]
    expected = [{"path": str((folder / name).resolve()), "sha256": hashlib.sha256((folder / name).read_bytes())
                 .hexdigest()} for name in IDX_NAMES]
    assert recorded == expected


def test_door6_a_resume_may_raise_rounds_and_continues_the_same_experiment(tmp_path):
    out = finished_run(tmp_path, rounds=1)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    experiment = json.loads(state["experiment"])
    fixed = json.dumps({k: v for k, v in experiment.items() if k != "rounds"}, sort_keys=True)
    assert state["fingerprint"] == hashlib.sha256(fixed.encode()).hexdigest() and experiment["rounds"] == 1
    (out / "config.toml").write_text((out / "config.toml").read_text().replace("rounds = 1", "rounds = 2"))
    assert locfedmix("run", "--resume", str(out), "--no-progress").returncode == 0
    reference = tmp_path / "reference"
    assert locfedmix(*run_args(tmp_path / "base.toml", reference, "--set", "rounds=2")).returncode == 0
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def test_door6_a_run_from_before_newer_settings_resumes_as_it_was(tmp_path):
    """A run written before three settings existed (its config.toml and checkpoint record lack them): the two
    that arrived with today's behaviour as their default resume as they are, and data.normalize, whose default
    changed the numbers, is read as it was then (off). The resumed run ends with an uninterrupted run's numbers."""
    out = finished_run(tmp_path, rounds=1, data={"normalize": False})
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    experiment = json.loads(state["experiment"])
    for section, key in (("client_optimizer", "on_sync"), ("engine", "threads"), ("data", "normalize")):
        del experiment[section][key]
    fixed = json.dumps({k: v for k, v in experiment.items() if k != "rounds"}, sort_keys=True)
    state["experiment"], state["fingerprint"] = json.dumps(experiment), hashlib.sha256(fixed.encode()).hexdigest()
    torch.save(state, out / "checkpoint.pt")
    old = [line for line in (out / "config.toml").read_text().splitlines()
           if not line.startswith(("on_sync =", "threads =", "normalize ="))]
    (out / "config.toml").write_text("\n".join(old).replace("rounds = 1", "rounds = 2") + "\n")
    done = locfedmix("run", "--resume", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    reference = tmp_path / "reference"
    assert locfedmix(*run_args(tmp_path / "base.toml", reference, "--set", "rounds=2",
                               "--set", "data.normalize=false")).returncode == 0
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def test_door7_summary_json_is_strict_json_with_null_for_what_is_not_finite(tmp_path):
    out = finished_run(tmp_path, data={"val_fraction": 0.0})  # no validation split: its loss is not a number

    def refuse(constant: str):
        raise ValueError(f"summary.json holds {constant}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["final"]["val_loss"] is None and summary["final"]["val_accuracy"] is None
    assert isinstance(summary["final"]["test_loss"], float)


def test_door7_set_values_are_toml_literals_and_quoted_numbers_are_strings(tmp_path):
    config = write_config(tmp_path / "c.toml")
    assert locfedmix(*run_args(config, tmp_path / "a", "--set", "rounds=2")).returncode == 0
    assert len((tmp_path / "a" / "metrics.csv").read_text().splitlines()) == 3  # header and two rounds
    done = locfedmix(*run_args(config, tmp_path / "b", "--set", "rounds='2'"))
    assert done.returncode == 2 and "rounds='2'" in done.stderr and done.stderr.count("\n") == 1


def test_door8_a_full_disk_ends_in_exit_4_and_keeps_the_last_checkpoint(tmp_path):
    size = (finished_run(tmp_path) / "checkpoint.pt").stat().st_size
    config = write_config(tmp_path / "c.toml", rounds=3)
    pages = 8 + -(-size * 3 // 2) // 4096  # the logs and one checkpoint fit, the next one's temporary copy not
    with mounted_tmpfs(tmp_path / "disk", str(pages * 4096)) as disk:
        done = locfedmix(*run_args(config, disk / "run"))
        assert done.returncode == 4 and done.stderr.count("\n") == 1, done.stderr
        assert "No space left on device" in done.stderr and str(disk / "run") in done.stderr
        state = torch.load(disk / "run" / "checkpoint.pt", weights_only=True)
        assert f"(round {state['round']}) is intact" in done.stderr and state["round"] >= 1
        assert not (disk / "run" / "checkpoint.pt.tmp").exists()
