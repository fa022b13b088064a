"""torch.distributed (gloo on loopback): the same experiment on 1, 2 and 3 processes gives the same metrics.csv for
every algorithm, with clients sampled and failing; a resumed distributed run equals an uninterrupted one; a rank
that dies stops the others with a clear error instead of a hang."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.algorithms.parts import FedAvg
from locfedmix.config import validate
from locfedmix.engines.transports.distributed import join, local_gpu, pin_to_loopback
from locfedmix.errors import UserError

RUN = ["-m", "locfedmix", "run", "--no-progress"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
DISTRIBUTED = ["--set", "engine.distributed=true"]
CONFIG = """dataset = "digits"
n_clients = 4
samples_per_client = 60
rounds = {rounds}
batch_size = 10
seed = 3

[participation]  # sampling, failures and stragglers are drawn alike on every rank
fraction = 0.75
dropout = 0.3
stragglers = 0.25

[sweep]
algorithm = [{algorithms}]
"""
# FedAvg sums the clients' weights rank by rank (an all-reduce) instead of client by client: float32 rounding.
FEDAVG_TOLERANCE = 1e-5
EXACT = ("round", "step", "algorithm", "n_clients", "bytes_up", "bytes_down")


def write_config(path, algorithms, rounds=3):
    path.write_text(CONFIG.format(rounds=rounds, algorithms=", ".join(f'"{a}"' for a in algorithms)))
    return path


def rows(path):
    return list(csv.DictReader(path.open()))


def one_thread():
    """torchrun gives each worker one intra-op thread; the single-process reference gets the same."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def succeed(command, env=None):
    """Run to the end; on failure show what the processes said (torchrun's report names the failing rank)."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The all-algorithm sweep on one process and under torchrun with 2 and 3 processes."""
    base = tmp_path_factory.mktemp("distributed")
    config = write_config(base / "sweep.toml", ALGORITHMS)
    succeed([sys.executable, *RUN, "--config", str(config), "--out", str(base / "1")], env=one_thread())
    for world in (2, 3):
        # torchrun sets one thread per worker only where OMP_NUM_THREADS is unset, and tests/conftest.py sets it
        succeed([*TORCHRUN, f"--nproc_per_node={world}", *RUN, "--config", str(config), "--out", str(base / str(world)),
                 *DISTRIBUTED], env=one_thread())
    return base


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_processes_give_the_metrics_of_one(runs, world, algorithm):
    alone, sharded = rows(runs / "1" / algorithm / "metrics.csv"), rows(runs / str(world) / algorithm / "metrics.csv")
    assert len(alone) == len(sharded) == 3
    if not isinstance(ALGORITHMS[algorithm].sync, FedAvg):
        assert sharded == alone  # no reduction anywhere: bit for bit
    for a, b in zip(alone, sharded):
        assert all(a[k] == b[k] for k in EXACT)
        assert all(abs(float(a[k]) - float(b[k])) <= FEDAVG_TOLERANCE for k in a if k not in EXACT)


def test_two_torchrun_agents_meet_as_two_machines(runs, tmp_path):
    """The multi-machine launch (two agents, --nnodes=2, a c10d rendezvous endpoint), both on this host: the
    same metrics as one process — sfl (FedAvg, within the tolerance) and sl (the relay crosses the two nodes)."""
    config = write_config(tmp_path / "run.toml", ["sl", "sfl"])
    endpoint = f"--rdzv-endpoint=127.0.0.1:{free_port()}"
    launch = lambda host: [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                           "--rdzv-backend=c10d", endpoint, "--rdzv-id=two-nodes", f"--rdzv-conf=is_host={host}",
                           *RUN, "--config", str(config), "--out", str(tmp_path / "out"), *DISTRIBUTED]
    # one worker per agent: torchrun leaves its threads alone, so pin them as the reference's
    agents = [subprocess.Popen(launch(host), env=one_thread(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True) for host in ("true", "false")]
    try:
        for agent in agents:
            try:
                _, stderr = agent.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                _, stderr = agent.communicate()
            assert agent.returncode == 0, f"exit {agent.returncode}: {stderr[-3000:]}"
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    assert rows(tmp_path / "out" / "sl" / "metrics.csv") == rows(runs / "1" / "sl" / "metrics.csv")
    for a, b in zip(rows(runs / "1" / "sfl" / "metrics.csv"), rows(tmp_path / "out" / "sfl" / "metrics.csv"),
                    strict=True):
        assert all(a[k] == b[k] for k in EXACT)
        assert all(abs(float(a[k]) - float(b[k])) <= FEDAVG_TOLERANCE for k in a if k not in EXACT)


def test_training_happened(runs):
    """The comparison above is between runs that learn, not between copies of an untrained model."""
    assert float(rows(runs / "2" / "sl" / "metrics.csv")[-1]["test_accuracy"]) > 0.3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_rows(metrics, count, process, limit=120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > count:
            return
        time.sleep(0.05)
    pytest.fail(f"no {count} metrics rows within {limit} s")


def test_a_resumed_distributed_run_equals_an_uninterrupted_one(tmp_path):
    config = write_config(tmp_path / "run.toml", ["locfedmix"], rounds=4)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    launch = [*TORCHRUN, "--nproc_per_node=2", *RUN, *DISTRIBUTED]
    succeed([*launch, "--config", str(config), "--out", str(whole)])
    process = subprocess.Popen([*launch, "--config", str(config), "--out", str(cut)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_rows(cut / "locfedmix" / "metrics.csv", 2, process)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks
    process.wait()
    resume = [*TORCHRUN, "--nproc_per_node=2", *RUN, "--resume", str(cut / "locfedmix")]  # its config.toml says
    succeed(resume)                                                                          # distributed=true
    assert rows(cut / "locfedmix" / "metrics.csv") == rows(whole / "locfedmix" / "metrics.csv")


def test_a_dead_rank_stops_the_others_with_a_clear_error(tmp_path):
    """Two ranks started by hand (no torchrun agent to clean up): SIGKILL rank 1 mid-run; rank 0 must stop on its
    own, naming the lost contact, well before the collective timeout."""
    config = write_config(tmp_path / "run.toml", ["psl"], rounds=200)
    env = {**one_thread(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    command = [sys.executable, *RUN, "--config", str(config), "--out", str(tmp_path / "out"), *DISTRIBUTED]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    wait_for_rows(tmp_path / "out" / "psl" / "metrics.csv", 1, ranks[0])
    ranks[1].kill()
    _, stderr = ranks[0].communicate(timeout=60)
    assert ranks[0].returncode == 4, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("locfedmix: error: rank 0 lost contact with the other")
    assert "Traceback" not in stderr


def test_launching_several_processes_without_the_switch_is_a_user_error(tmp_path):
    config = write_config(tmp_path / "run.toml", ["psl"])
    done = subprocess.run([*TORCHRUN, "--nproc_per_node=2", *RUN, "--config", str(config)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode != 0  # torchrun's own report follows, with its traceback; ours is one line, once
    ours = [line for line in done.stderr.splitlines() if line.startswith("locfedmix: error:")]
    assert len(ours) == 1 and ours[0].endswith("add --set engine.distributed=true")
    assert "locfedmix/" not in done.stderr  # no frame of our code


@pytest.mark.parametrize("gpus", [0, 1])
def test_more_ranks_on_a_machine_than_gpus_is_a_user_error(monkeypatch, gpus):
    """Local rank 1 on a machine with fewer than two GPUs: refused before any CUDA call, naming both numbers."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(UserError, match=f"local rank 1 needs GPU 1 but this machine has {gpus}"):
        local_gpu(1)
    if gpus:
        assert local_gpu(0) == torch.device("cuda", 0)


def listening_sockets(pid: int) -> dict[str, str]:
    """The TCP sockets process `pid` listens on (Linux /proc): socket inode → local address, e.g. '127.0.0.1'."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in open(f"/proc/{pid}/net/{table}").readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                words = b"".join(raw[k:k + 4][::-1] for k in range(0, len(raw), 4))  # kernel order per 32-bit word
                found[fields[9]] = socket.inet_ntop(family, words)
    return found


def children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")
            and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(pid)]


@pytest.mark.skipif(not os.path.exists("/proc/self/net/tcp"), reason="reads listening sockets from Linux /proc")
def test_on_one_machine_the_workers_listen_on_loopback_only(tmp_path):
    """What locfedmix controls of SECURITY.md section 5: on one machine every socket a worker listens on (gloo's)
    is bound to loopback, whatever the host name resolves to. (torchrun's own stores are the agent's, not ours.)"""
    config = write_config(tmp_path / "run.toml", ["psl"], rounds=40)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SOCKET_IFNAME")}
    agent = subprocess.Popen([*TORCHRUN, "--nproc_per_node=2", *RUN, "--config", str(config), *DISTRIBUTED],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found_by_worker: dict[int, dict[str, str]] = {}
    agents_own: set[str] = set()  # a child briefly holds the agent's sockets between fork and exec
    seen: dict[int, set[str]] = {}
    try:
        while agent.poll() is None and not (len(seen) == 2 and all(seen.values())):
            try:
                agents_own |= set(listening_sockets(agent.pid))
                for worker in children(agent.pid):
                    found_by_worker.setdefault(worker, {}).update(listening_sockets(worker))
            except (FileNotFoundError, ProcessLookupError):
                pass  # a process ended between the listing and the read
            seen = {w: {a for inode, a in found.items() if inode not in agents_own}
                    for w, found in found_by_worker.items()}
            time.sleep(0.05)
    finally:
        agent.kill()
        agent.communicate()
    assert len(seen) == 2 and all(seen.values()), f"did not see both workers listen: {seen}"
    assert all(address in ("127.0.0.1", "::1") for found in seen.values() for address in found), seen


LOOPBACK = next(name for name in ("lo", "lo0") if name in {n for _, n in socket.if_nameindex()})
IFNAMES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def test_joining_on_one_machine_pins_the_collectives_to_loopback(monkeypatch):
    """join() itself pins gloo's and NCCL's sockets when every rank is on this machine (here: a group of one)."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in IFNAMES:
        monkeypatch.delenv(key, raising=False)
    config = validate({"algorithm": "psl", "dataset": "digits", "n_clients": 2, "rounds": 1, "batch_size": 8,
                       "engine": {"distributed": True}})
    try:
        join(config, torch.device("cpu"))
        assert [os.environ.get(key) for key in IFNAMES] == [LOOPBACK, LOOPBACK]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world, local, chosen, expected", [
    ("4", "2", None, None),  # ranks on other machines: loopback would cut them off
    ("2", "2", "eth7", "eth7"),  # the user's choice stands
])
def test_pinning_leaves_multi_machine_runs_and_user_choices_alone(monkeypatch, world, local, chosen, expected):
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    for key in IFNAMES:
        monkeypatch.delenv(key, raising=False)
        if chosen:
            monkeypatch.setenv(key, chosen)
    pin_to_loopback()
    assert [os.environ.get(key) for key in IFNAMES] == [expected, expected]


LEAVE = """
import os
from locfedmix.config import validate
from locfedmix.engines.transports.distributed import join, leave
join(validate({"algorithm": "psl", "dataset": "digits", "rounds": 1, "batch_size": 4, "n_clients": 1,
               "engine": {"distributed": True}}), __import__("torch").device("cpu"))
import torch.distributed.nn.functional  # torch imports it lazily during a run; its defaults capture the group
leave(together=True)
print(sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc (Linux)")
def test_leaving_stops_the_groups_threads_before_interpreter_shutdown():
    """Gloo threads still running when Python shuts down abort the process at exit; after leave() none is left."""
    env = {**one_thread(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "1",
           "RANK": "0", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-c", LEAVE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gloo" not in done.stdout, done.stdout


def _largest_counter(rank: int, port: int, counters: list[int], reported: list[bool], out) -> None:
    from locfedmix.engines.transports.collectives import largest_integers
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(counters))
    try:
        state = {"weight": torch.ones(2), "num_batches_tracked": torch.tensor(counters[rank])}
        largest_integers([state], reported=reported[rank])
        out.put((rank, int(state["num_batches_tracked"]), state["weight"].tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("reported, expected", [([True, True], 9), ([True, False], 5)])
def test_fedavg_of_an_integer_buffer_is_the_largest_among_reporting_ranks(reported, expected):
    """As in one process (algorithms.fedavg): a rank none of whose clients reported does not count."""
    context = torch.multiprocessing.get_context("spawn")
    out = context.SimpleQueue()
    torch.multiprocessing.start_processes(_largest_counter, args=(free_port(), [5, 9], reported, out), nprocs=2,
                                          start_method="spawn")
    assert sorted(out.get() for _ in range(2)) == [(0, expected, [1.0, 1.0]), (1, expected, [1.0, 1.0])]
