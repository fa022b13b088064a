"""What a training round spends its time on: torch.profiler's operator table for one algorithm at N clients × k
samples per client (the throughput benchmark's model and data), next to the same table for centralized training.

    python benchmarks/profile_step.py                              # psl and locfedmix at 1000 × 1 and 100 × 16
    python benchmarks/profile_step.py --cells sflv1/1000/1 --device cuda

Writes benchmarks/results/PROFILE.md (PROFILE-cuda.md on a GPU): per cell the share of wall time in each operator
(self time, top rows) and the share left to Python outside any operator — the simulator's own overhead — and the
round's operator calls (views included; on a GPU most of the rest are kernel launches).
"""

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from locfedmix.engines.backends.denormals import denormals_flushed
from locfedmix.engines.backends.device import resolve_device
from locfedmix.engines.flow.round import train_round
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
from throughput import BATCH, RESULTS, split_meter, warm_federation

TOP = 8


def profiled_round(algorithm: str, n_clients: int, per_client: int, device: torch.device):
    """One warm round of the algorithm under the profiler; returns the profile and the round's wall seconds."""
    fed, indices, execute = warm_federation(algorithm, n_clients, per_client, "auto", device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        train_round(fed, indices, BATCH, 1, execute)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return prof, seconds, type(fed.clients).__name__


def table(prof, seconds: float) -> list[str]:
    """Top operators by self CPU time as shares of the round's wall time, and what no operator accounts for."""
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    lines = ["| operator | calls | self CPU s | share of wall |", "|---|---:|---:|---:|"]
    for e in events[:TOP]:
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | "
                     f"{e.self_cpu_time_total / 1e6 / seconds:.0%} |")
    lines.append(f"| *outside any operator (Python, the simulator)* | | {max(seconds - total_ops, 0):.3f} | "
                 f"{max(seconds - total_ops, 0) / seconds:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["psl/1000/1", "locfedmix/1000/1", "psl/100/16",
                                                       "locfedmix/100/16"], help="ALGORITHM/N/K")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    keep_freed_host_memory()  # as a `locfedmix run` and throughput.py do
    device = resolve_device(args.device)
    out = [f"# Where a round's time goes ({device.type}, {torch.get_num_threads()} threads)", "",
           "One warm round under torch.profiler (`python benchmarks/profile_step.py` regenerates this file). Shares "
           "are of the round's wall time; operators' self times exclude their children. *samples/s* is measured "
           "without the profiler, as in THROUGHPUT.md.", ""]
    with denormals_flushed():  # as a run trains by default (engine.flush_denormals)
        for cell in args.cells:
            algorithm, n, k = cell.split("/")
            rate = split_meter(algorithm, int(n), int(k), "auto", device)[0](2.0)
            prof, seconds, engine = profiled_round(algorithm, int(n), int(k), device)
            calls = sum(e.count for e in prof.key_averages())
            busy = (sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
                    if device.type == "cuda" else None)
            out += [f"## {algorithm}, {n} clients × {k} ({engine}): {rate:.0f} samples/s, "
                    f"{seconds:.2f} s and {calls} operator calls per profiled round"
                    + (f", GPU kernels busy {busy:.3f} s" if busy is not None else ""), "", *table(prof, seconds), ""]
            print(f"{cell}: {seconds:.2f} s per round", flush=True)
    name = "PROFILE.md" if device.type == "cpu" else f"PROFILE-{device.type}.md"
    Path(RESULTS / name).write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
