"""How many intra-op threads a run trains with (engine.threads): the cores this process may use, fewer while other
processes keep them busy.

torch splits each CPU operator over a team of OpenMP threads and waits at its end for all of them. A thread whose core
is held by another process runs only when the scheduler gives it a slice, and every operator of the step waits for
it: on 2 cores beside one busy process, a run with 2 threads trains many times slower than with 1 (measured by
benchmarks/threads.py, figures in docs/performance.md). So the default counts the physical cores among the CPUs this
process may run on and takes away the share that others used in a short look at /proc/stat, at least 1. Where
OMP_NUM_THREADS is set, its count stands: the user (or torchrun, one thread per process) chose it.

How long an idle OpenMP thread spins before it sleeps (OMP_WAIT_POLICY, GOMP_SPINCOUNT) is read once, when the
runtime loads with `import torch`; nothing a run does afterwards can change it, so it stays the environment's.
"""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

LOOK_S = 0.25  # how long the CPUs are watched for other processes' work
PROC_STAT = Path("/proc/stat")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (all of them where the OS does not say)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], topology: Path = CPU_TOPOLOGY) -> int:
    """The physical cores these logical CPUs sit on: SMT siblings share one core's arithmetic units, and torch's own
    default counts cores too. The count of CPUs where the topology is not readable."""
    cores = set()
    for cpu in cpus:
        try:
            where = topology / f"cpu{cpu}" / "topology"
            cores.add(((where / "physical_package_id").read_text().strip(), (where / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores)


def cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each CPU from /proc/stat's text: idle and iowait are not busy; steal (time the
    hypervisor gave away) is, as this process could not have had it either."""
    times = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
            times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return times


def busy_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: set[int]) -> float:
    """The share of these CPUs' time that went to work between two readings of cpu_times (0 where no tick passed)."""
    busy = sum(after[c][0] - before[c][0] for c in cpus if c in before and c in after)
    total = sum(after[c][1] - before[c][1] for c in cpus if c in before and c in after)
    return busy / total if total > 0 else 0.0


def others_busy_share(cpus: set[int], seconds: float = LOOK_S) -> float:
    """The share of these CPUs that other processes keep busy, watched for `seconds` while this process sleeps;
    where /proc/stat is missing (not Linux), the 1-minute load average per CPU, or 0 where there is none."""
    try:
        before = cpu_times(PROC_STAT.read_text())
        time.sleep(seconds)
        return busy_share(before, cpu_times(PROC_STAT.read_text()), cpus)
    except OSError:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return min(1.0, load / max(1, os.cpu_count() or 1))


def threads_for(cores: int, busy: float) -> int:
    """Threads for `cores` cores of which the share `busy` is taken: the free cores, rounded, at least 1."""
    return max(1, min(cores, round(cores * (1 - busy))))


def environment_threads() -> int | None:
    """The count OMP_NUM_THREADS asks for, or None where it is unset or not a positive number."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_threads() -> int:
    """engine.threads = 0: OMP_NUM_THREADS where set, else the usable physical cores less those others keep busy."""
    chosen = environment_threads()
    if chosen is None:
        cpus = usable_cpus()
        chosen = threads_for(physical_cores(cpus), others_busy_share(cpus))
    return agreed(chosen)


def agreed(count: int) -> int:
    """In a distributed run every process takes the smallest count any of them chose, so that no machine is
    oversubscribed and all ranks round alike; alone, the count itself."""
    if not dist.is_initialized():
        return count
    counts: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(counts, count)
    return min(c for c in counts if c is not None)


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[int]:
    """Within the block torch computes with `count` intra-op threads (as many as now where None); afterwards with as
    many as before it, whatever the block set."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
