"""What a training round spends its time on: torch.profiler's operator table for one algorithm at N clients × k
samples per client (the throughput benchmark's model and data), next to centralized training of the same samples.

    python benchmarks/profile_step.py                              # psl, sfl, locfedmix at 100 × 16 and 1000 × 1
    python benchmarks/profile_step.py --cells sflv1/1000/1 --device cuda

Writes benchmarks/results/PROFILE.md (PROFILE-cuda.md on a GPU): per cell the share of wall time in each operator
(self time, top rows) and the share left to Python outside any operator — the simulator's own overhead — and the
round's operator calls (views included; on a GPU most of the rest are kernel launches). Each cell's time is split
into compute kernels (convolutions, matrix products, pooling, the fused optimizer), the other operators (copies,
fills, elementwise, views: per-client bookkeeping) and time outside any operator, in µs per training sample, with
centralized training's split beside it: where the split's gap to centralized training lies.
"""

import argparse
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from locfedmix.engines.backends.denormals import denormals_flushed
from locfedmix.engines.backends.device import resolve_device
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
from locfedmix.engines.flow.round import train_round
from throughput import BATCH, CENTRAL_BATCH, RESULTS, centralized_step, split_meter, warm_federation

TOP = 10
# Operators whose cost grows with the samples (the work itself); the rest are per-call bookkeeping.
KERNELS = ("conv", "mm", "bmm", "pool", "im2col", "col2im", "_fused_adam", "_fused_sgd", "linear")


def profiled(work, device: torch.device):
    """`work` run once under the profiler; returns the profile and its wall seconds."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return prof, seconds


def profiled_round(algorithm: str, n_clients: int, per_client: int, device: torch.device):
    """One warm round of the algorithm under the profiler; returns the profile, its wall seconds and the pool."""
    fed, indices, execute = warm_federation(algorithm, n_clients, per_client, "auto", device)
    prof, seconds = profiled(lambda: train_round(fed, indices, BATCH, 1, execute), device)
    return prof, seconds, type(fed.clients).__name__


def profiled_centralized(samples: int, device: torch.device):
    """Centralized training of at least `samples` samples, in steps of CENTRAL_BATCH, under the profiler."""
    step, steps = centralized_step(device), -(-samples // CENTRAL_BATCH)
    step()

    def work() -> None:
        for _ in range(steps):
            step()

    return (*profiled(work, device), steps * CENTRAL_BATCH)


def split(prof, seconds: float) -> dict[str, float]:
    """Seconds in compute kernels, in the other operators, and outside any operator."""
    events = prof.key_averages()
    kernels = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in KERNELS)) / 1e6
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    return {"kernels": kernels, "other operators": ops - kernels, "outside": max(seconds - ops, 0.0)}


def table(prof, seconds: float) -> list[str]:
    """Top operators by self CPU time as shares of the round's wall time, and what no operator accounts for."""
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    outside = split(prof, seconds)["outside"]
    lines = ["| operator | calls | self CPU s | share of wall |", "|---|---:|---:|---:|"]
    for e in events[:TOP]:
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | "
                     f"{e.self_cpu_time_total / 1e6 / seconds:.0%} |")
    lines.append(f"| *outside any operator (Python, the simulator)* | | {outside:.3f} | {outside / seconds:.0%} |")
    return lines


def split_line(name: str, parts: dict[str, float], samples: int) -> str:
    per = {k: v / samples * 1e6 for k, v in parts.items()}
    return f"| {name} | " + " | ".join(f"{v:.0f}" for v in per.values()) + f" | {sum(per.values()):.0f} |"


def cell_section(cell: str, device: torch.device) -> list[str]:
    algorithm, n, k = cell.split("/")
    samples = int(n) * int(k)
    rate = split_meter(algorithm, int(n), int(k), "auto", device)[0](2.0)
    prof, seconds, engine = profiled_round(algorithm, int(n), int(k), device)
    central, central_seconds, central_samples = profiled_centralized(samples, device)
    calls = sum(e.count for e in prof.key_averages())
    busy = (sum(e.self_device_time_total for e in prof.key_averages()) / 1e6 if device.type == "cuda" else None)
    print(f"{cell}: {seconds:.2f} s per round", flush=True)
    return [f"## {algorithm}, {n} clients × {k} ({engine}): {rate:.0f} samples/s, "
            f"{seconds:.2f} s and {calls} operator calls per profiled round"
            + (f", GPU kernels busy {busy:.3f} s" if busy is not None else ""), "", *table(prof, seconds), "",
            "µs per training sample:", "", "| | compute kernels | other operators | outside any operator | total |",
            "|---|---:|---:|---:|---:|", split_line(f"{algorithm}, {n} × {k}", split(prof, seconds), samples),
            split_line(f"centralized, batch {CENTRAL_BATCH}", split(central, central_seconds), central_samples), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["psl/100/16", "sfl/100/16", "locfedmix/100/16", "psl/1000/1",
                                                       "sfl/1000/1", "locfedmix/1000/1"], help="ALGORITHM/N/K")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="where to write (default: results/PROFILE[-device].md)")
    args = parser.parse_args()
    keep_freed_host_memory()  # as a `locfedmix run` and throughput.py do
    device = resolve_device(args.device)
    out = [f"# Where a round's time goes ({device.type}, {torch.get_num_threads()} threads)", "",
           "One warm round under torch.profiler (`python benchmarks/profile_step.py` regenerates this file). Shares "
           "are of the round's wall time; operators' self times exclude their children. *samples/s* is measured "
           f"without the profiler, as in THROUGHPUT.md. 1-minute load average at the start: {os.getloadavg()[0]:.2f}.",
           ""]
    with denormals_flushed():  # as a run trains by default (engine.flush_denormals)
        for cell in args.cells:
            out += cell_section(cell, device)
    out.append(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}.")
    name = "PROFILE.md" if device.type == "cpu" else f"PROFILE-{device.type}.md"
    (args.out or RESULTS / name).write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
