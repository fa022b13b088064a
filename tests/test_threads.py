"""engine.threads: the count a run trains with (its default from the usable cores and the others' load), applied only
where the config or the command line asks, recorded in summary.json and kept by a resumed run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import interrupted_in_round
from locfedmix import api, rounds
from locfedmix.cli import main
from locfedmix.config import validate
from locfedmix.engines.backends import threads
from locfedmix.errors import UserError

TINY = {"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8, "rounds": 2,
        "batch_size": 4}
STAT_BEFORE = """cpu  10 0 10 100 0 0 0 0 0 0
cpu0 5 0 5 50 0 0 0 0 0 0
cpu1 5 0 5 50 0 0 0 0 0 0
intr 12345
"""
# cpu0: 30 busy ticks (user 20, system 5, steal 5) and 10 idle; cpu1: 2 busy (irq 1, softirq 1), 36 idle, 2 iowait
STAT_AFTER = """cpu  40 0 20 156 2 1 1 5 0 0
cpu0 25 0 10 60 0 0 0 5 0 0
cpu1 5 0 5 86 2 1 1 0 0 0
"""


def test_cpu_times_count_idle_and_iowait_as_free_and_steal_as_taken():
    before, after = threads.cpu_times(STAT_BEFORE), threads.cpu_times(STAT_AFTER)
    assert before == {0: (10, 60), 1: (10, 60)}
    assert after == {0: (40, 100), 1: (12, 100)}
    assert threads.busy_share(before, after, {0}) == 30 / 40
    assert threads.busy_share(before, after, {1}) == 2 / 40
    assert threads.busy_share(before, after, {0, 1}) == 32 / 80
    assert threads.busy_share(before, after, {7}) == 0.0  # a CPU /proc/stat does not list: no ticks seen


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.0, 2), (2, 0.2, 2), (2, 0.5, 1), (2, 0.8, 1), (2, 1.0, 1),
                                                   (8, 0.25, 6), (4, 0.1, 4), (16, 0.9, 2), (1, 0.0, 1)])
def test_the_default_takes_the_free_cores_rounded_and_at_least_one(cores, busy, expected):
    assert threads.threads_for(cores, busy) == expected


def test_smt_siblings_count_as_one_core(tmp_path):
    for cpu, core in [(0, 0), (1, 1), (2, 0), (3, 1), (4, 2)]:  # CPUs 0 and 2, 1 and 3 are siblings
        where = tmp_path / f"cpu{cpu}" / "topology"
        where.mkdir(parents=True)
        (where / "physical_package_id").write_text("0\n")
        (where / "core_id").write_text(f"{core}\n")
    assert threads.physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert threads.physical_cores({0, 2, 4}, tmp_path) == 2
    assert threads.physical_cores({0, 1, 2, 3, 9}, tmp_path) == 5  # cpu9 has no topology: count CPUs


@pytest.mark.parametrize("value, expected", [("3", 3), ("4,2", 4), (" 2 ", 2), ("", None), ("0", None),
                                             ("many", None), ("-1", None)])
def test_omp_num_threads_is_read_as_openmp_reads_it(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert threads.environment_threads() == expected


def test_omp_num_threads_stands_over_the_measured_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(threads, "others_busy_share", lambda cpus: pytest.fail("looked at the load"))
    assert threads.default_threads() == 3


SPIN = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); print(flush=True); exec('while True: pass')"


@pytest.mark.skipif(not (hasattr(os, "sched_setaffinity") and os.path.exists("/proc/stat")),
                    reason="pinning a process and /proc/stat are Linux's")
def test_a_process_spinning_on_a_cpu_is_seen_taking_it():
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)], stdout=subprocess.PIPE)
    try:
        spinner.stdout.readline()  # pinned and about to spin
        assert threads.others_busy_share({cpu}, seconds=0.3) > 0.8
    finally:
        spinner.kill()
        spinner.wait()


def run_threads(monkeypatch, count: int | None, **kwargs) -> tuple[int, int]:
    """(the count summary.json records, the count torch had during the rounds) of a tiny run."""
    seen = []
    train_rounds = api.train_rounds
    monkeypatch.setattr(api, "train_rounds", lambda *a: (seen.append(torch.get_num_threads()), train_rounds(*a))[1])
    config = validate({**TINY, "engine": {"threads": count}} if count is not None else TINY)
    return api.run(config, progress=False, **kwargs)["threads"], seen[0]


@pytest.fixture
def one_thread_now():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_library_call_trains_with_its_callers_thread_count(monkeypatch, one_thread_now):
    monkeypatch.setattr(threads, "others_busy_share", lambda cpus: pytest.fail("looked at the load"))
    assert run_threads(monkeypatch, None) == (1, 1)
    assert torch.get_num_threads() == 1


def test_an_explicit_count_holds_for_the_run_and_is_undone_after(monkeypatch, one_thread_now):
    assert run_threads(monkeypatch, 3) == (3, 3)
    assert torch.get_num_threads() == 1
    assert run_threads(monkeypatch, 2, tune_process=True) == (2, 2)
    assert torch.get_num_threads() == 1


def test_a_tuned_run_takes_the_default_and_undoes_it(monkeypatch, one_thread_now):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "physical_cores", lambda cpus: 4)
    monkeypatch.setattr(threads, "others_busy_share", lambda cpus: 0.5)
    assert run_threads(monkeypatch, None, tune_process=True) == (2, 2)
    assert torch.get_num_threads() == 1


def test_the_count_is_undone_when_the_run_fails(one_thread_now):
    with pytest.raises(UserError):
        api.run(validate({**TINY, "dataset": "cifar10", "data": {"dir": "/nonexistent"}, "engine": {"threads": 3}}),
                progress=False)
    assert torch.get_num_threads() == 1


def test_the_command_line_records_its_count_in_summary_json(monkeypatch, tmp_path, one_thread_now):
    config = tmp_path / "c.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items()) + "\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["threads"] == 2
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["-1", "1025", "2.0", "true"])
def test_a_bad_count_is_one_line_naming_the_key(tmp_path, capsys, value):
    config = tmp_path / "c.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items()) + "\n")
    assert main(["run", "--config", str(config), "--set", f"engine.threads={value}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine.threads" in err


def test_a_resumed_run_keeps_the_count_it_started_with(monkeypatch, tmp_path, one_thread_now):
    """Cut after two rounds at 2 threads, then resumed where the default would pick 1: the other rounds train at 2,
    as the uninterrupted run's did, and end with its metrics."""
    config = validate({**TINY, "rounds": 4})
    monkeypatch.setattr(api, "default_threads", lambda: 2)
    whole = api.run(config, tmp_path / "whole", progress=False, tune_process=True)
    with interrupted_in_round(monkeypatch, 3):
        api.run(config, tmp_path / "cut", progress=False, tune_process=True)
    monkeypatch.setattr(api, "default_threads", lambda: 1)
    seen = []
    train_round = rounds.train_round
    monkeypatch.setattr(rounds, "train_round", lambda *a, **k: (seen.append(torch.get_num_threads()),
                                                                train_round(*a, **k))[1])
    resumed = api.run(config, tmp_path / "cut", progress=False, resume=True, tune_process=True)
    assert seen == [2, 2] and resumed["threads"] == whole["threads"] == 2
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()
    assert torch.get_num_threads() == 1


def test_the_benchmark_table_holds_medians_and_same_repeat_ratios():
    path = Path(__file__).parent.parent / "benchmarks" / "threads.py"
    spec = importlib.util.spec_from_file_location("threads_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # it imports throughput.py beside it
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(path.parent))
    # per repeat: the 1-thread rate, then 2 threads at half, a quarter, a tenth of it; busy runs at half the rate
    rates = {"1": [100, 200, 400], "2": [50, 50, 40], "default": [100, 200, 400], "2, passive": [90, 200, 400]}
    samples = [{"repeat": r, "load": load, "others_busy": 0.5 if load == "alone" else 1.0, "setting": setting,
                "threads": 1, "samples_per_s": rate[r] / (1 if load == "alone" else 2)}
               for setting, rate in rates.items() for r in range(3) for load in ("alone", "busy")]
    rows = {(row["load"], row["setting"]): row for row in bench.table_rows(samples)}
    assert rows["alone", "2"]["samples_per_s"] == 50 and rows["busy", "1"]["samples_per_s"] == 100
    assert rows["alone", "2"]["vs_1_thread"] == (0.25, 0.1, 0.5)  # ratios 0.5, 0.25, 0.1: not 50 / 200
    assert rows["busy", "2, passive"]["vs_1_thread"] == (1.0, 0.9, 1.0)
    assert rows["busy", "2"]["busy_vs_alone"] == (0.5, 0.5, 0.5)
    assert rows["busy", "1"]["others_busy"] == [1.0, 1.0]
