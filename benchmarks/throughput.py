"""Simulation speed: training samples per second of every algorithm at N clients × k samples per client, as a ratio to
centralized training of the same model measured in the same process (so machine noise cancels), plus peak memory.
Both rates are measured `--repeats` times, alternately; a row holds the median ratio and the range of the ratios.

    python benchmarks/throughput.py                 # the full grid, N ∈ {1, 10, 100, 1000}, k ∈ {16, 1}
    python benchmarks/throughput.py --quick         # N ∈ {10, 100}, k ∈ {16, 1}, psl / sfl / locfedmix
    python benchmarks/throughput.py --device cuda --engine loop vectorized   # both pools on the GPU
    python benchmarks/throughput.py --algorithms psl sfl locfedmix --clients 1000 --per-client 16 \
        --engine loop vectorized --activation-mb 1e9 2048 --tag cpu-memory     # activations kept or recomputed
    python benchmarks/throughput.py --report-only   # the Markdown again from the last run's JSON (no measuring)

Each cell runs in its own process (peak memory is per process). Model: the small CNN on CIFAR-shaped 3×32×32
inputs, cut after its two conv blocks; Adam; batch 16 per client; centralized baseline: batch 64.

Writes benchmarks/results/throughput_<device>.csv, .json and THROUGHPUT.md (THROUGHPUT-cuda.md on a GPU; --quick
writes the same names with a -quick suffix; --tag names them). The Markdown ends with the issue's targets: where psl,
sfl and locfedmix land, and what each would reach at psl's FLOP rate (throughput_targets.py).
"""

import argparse
import copy
import csv
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.algorithms.parts import Parallel
from locfedmix.api import peak_memory_mb
from locfedmix.config import Layout, validate
from locfedmix.engines.backends.looped import loop_layout
from locfedmix.engines.backends.denormals import denormals_flushed
from locfedmix.engines.backends.device import resolve_device
from locfedmix.engines.assemble import build_federation
from locfedmix.engines.flow.round import data_step, train_round
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
from locfedmix.latency.flops import count_flops
from locfedmix.latency.model import mixed_samples
from locfedmix.models import build_split_model
from throughput_targets import ratio_cell, targets_markdown

RESULTS = Path(__file__).parent / "results"
SHAPE, CLASSES, BATCH, CENTRAL_BATCH = (3, 32, 32), 10, 16, 64


def clock(device: torch.device) -> float:
    """Wall time after the device has finished the work queued so far (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def centralized_meter(device: torch.device) -> Callable[[float], float]:
    """Plain training of lower∘upper (centralized_step), warmed up by one step; the meter trains for `seconds` and
    returns samples/s."""
    step = centralized_step(device)
    step()
    return lambda seconds: timed(step, CENTRAL_BATCH, seconds, device)


def centralized_step(device: torch.device) -> Callable[[], None]:
    """One step of plain training of lower∘upper on CENTRAL_BATCH samples, in the layout the loop pool would use
    (channels-last on the CPU, as in the issue's reference measurement)."""
    model = build_split_model("cnn", SHAPE, CLASSES)
    layout = loop_layout(model.lower.to(device), Layout.AUTO)
    net = torch.nn.Sequential(model.lower, model.upper).to(device, memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(CENTRAL_BATCH, *SHAPE, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, CLASSES, (CENTRAL_BATCH,), device=device)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def timed(work: Callable[[], None], samples: int, seconds: float, device: torch.device) -> float:
    """Samples/s of `work` (`samples` each call), called until `seconds` have passed (at least once)."""
    calls, start = 0, clock(device)
    while calls == 0 or clock(device) - start < seconds:
        work()
        calls += 1
    return calls * samples / (clock(device) - start)


def warm_federation(algorithm: str, n_clients: int, per_client: int, engine: str, device: torch.device,
                    activation_mb: float | None = None):
    """The algorithm's federation on random CIFAR-shaped data, after one warm-up round; returns it with the
    per-client indices and the step function that train_round takes."""
    budget = {} if activation_mb is None else {"activation_memory_mb": activation_mb}
    config = validate({"algorithm": algorithm, "dataset": "synthetic", "n_clients": n_clients, "rounds": 1,
                       "batch_size": BATCH, "engine": {"kind": engine, "device": str(device), **budget}})
    fed = build_federation(config, config.resolved_algorithm(), SHAPE, CLASSES, [per_client] * n_clients, device)
    x = torch.rand(n_clients * per_client, *SHAPE, device=device)
    y = torch.randint(0, CLASSES, (n_clients * per_client,), device=device)
    indices = [np.arange(i * per_client, (i + 1) * per_client) for i in range(n_clients)]
    execute = data_step(x, y)
    train_round(fed, indices, BATCH, 0, execute)
    return fed, indices, execute


def split_meter(algorithm: str, n_clients: int, per_client: int, engine: str, device: torch.device,
                activation_mb: float | None = None) -> tuple[Callable[[float], float], str, float, float]:
    """A warm meter of whole rounds' samples/s, the pool, the work per sample, and the share of clients whose
    forward is recomputed in backward (engines/backends/memory.py)."""
    fed, indices, execute = warm_federation(algorithm, n_clients, per_client, engine, device, activation_mb)
    rounds = itertools.count(1)
    meter = lambda seconds: timed(lambda: train_round(fed, indices, BATCH, next(rounds), execute),
                                  n_clients * per_client, seconds, device)
    stepping = list(range(n_clients)) if isinstance(fed.algo.schedule, Parallel) else [0]
    one_batch = (torch.zeros(min(BATCH, per_client), *SHAPE, device=device), torch.zeros(min(BATCH, per_client)))
    plan = fed.clients.budget.plan(dict.fromkeys(stepping, one_batch), [[i] for i in stepping])
    return meter, type(fed.clients).__name__, work_per_sample(fed, per_client), sum(plan) / len(plan)


def work_per_sample(fed, per_client: int) -> float:
    """FLOPs the algorithm spends per training sample, relative to plain training of lower∘upper, as this process
    computes them (the decoder's factored first layer at its real cost): the decoder or auxiliary head and
    SmashMix's extra server samples are real work of the algorithm, not simulator overhead."""
    modules = [fed.clients.lower(0), fed.server.uppers[0], fed.clients.head(0)]
    f = count_flops(*[copy.deepcopy(m).cpu() if m is not None else None for m in modules], SHAPE, as_computed=True)
    plain = f.lower_fwd + f.lower_bwd + f.upper_fwd + f.upper_bwd
    mixed = mixed_samples(fed.algo, {i: per_client for i in range(fed.clients.n)}) / (fed.clients.n * per_client)
    return (plain + f.head_fwd + f.head_bwd + mixed * (f.upper_fwd + f.upper_bwd)) / plain


def run_cell(args: argparse.Namespace) -> None:
    """Both rates measured `--repeats` times, alternately, so that a slow spell of the machine falls on both: the
    row holds the medians and the median of the per-repeat ratios, with their range."""
    algorithm, n_clients, per_client = args.cell[0], int(args.cell[1]), int(args.cell[2])
    if args.host_memory == "keep":  # before either rate: both run under the same allocator settings
        keep_freed_host_memory()
    device = resolve_device(args.device)
    load = os.getloadavg()[0]  # the machine's 1-minute load before measuring: others' work competes for the cores
    central = centralized_meter(device)
    split, engine, work, recomputed = split_meter(algorithm, n_clients, per_client, args.engine[0], device,
                                                  args.activation_mb[0] if args.activation_mb else None)
    with denormals_flushed():  # as a run trains by default (engine.flush_denormals), for both rates
        pairs = [(split(args.seconds), central(args.seconds)) for _ in range(args.repeats)]
    ratios = [s / c for s, c in pairs]
    ratio = float(np.median(ratios))
    print(json.dumps({"cell": f"{algorithm}/{n_clients}/{per_client}", "algorithm": algorithm, "n_clients": n_clients,
                      "per_client": per_client, "engine": engine, "recomputed": recomputed,
                      "samples_per_s": float(np.median([s for s, _ in pairs])),
                      "centralized_samples_per_s": float(np.median([c for _, c in pairs])), "ratio": ratio,
                      "ratio_min": min(ratios), "ratio_max": max(ratios), "repeats": args.repeats,
                      "work_per_sample": work, "work_ratio": ratio * work,
                      "peak_memory_mb": peak_memory_mb(), "threads": torch.get_num_threads(),
                      "host_memory": args.host_memory, "denormals": "flushed", "load": [load, os.getloadavg()[0]],
                      "processor": processor(), "cpus": os.cpu_count(),
                      "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None}))


def processor() -> str:
    """The CPU's model name (Linux), else what the platform module reports."""
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "unknown"


def machine_line(rows: list[dict], device: str) -> str:
    """Which machine, how fast it trained centrally, and how loaded it was, from the rows themselves."""
    central = sorted(r["centralized_samples_per_s"] for r in rows)
    loads = [v for r in rows for v in r.get("load", [])]
    where = f"{rows[0]['processor']}, {rows[0]['cpus']} CPUs" if "processor" in rows[0] else "not recorded"
    text = (f"Machine: {where}; centralized training on the {device} ran at {float(np.median(central)):,.0f} "
            f"samples/s (median over the cells; {central[0]:,.0f}–{central[-1]:,.0f})")
    return text + (f"; 1-minute load average {min(loads):.2f}–{max(loads):.2f} at the cells' start and end."
                   if loads else "; load not recorded.")


def markdown(rows: list[dict], device: str) -> str:
    threads = rows[0]["threads"]
    where = f"{threads} thread{'s' if threads != 1 else ''}"
    if device == "cuda":
        where = rows[0].get("card") or "GPU not recorded"
    lines = [f"# Throughput ({device}, {where})", "",
             "Training samples/s of each algorithm relative to centralized training of the same CNN, measured in "
             f"the same process, {rows[0].get('repeats', 1)} times each, alternately; the medians, and the median "
             "of the per-repeat ratios with their range in brackets (the range is the machine's noise). *work* is "
             "the algorithm's FLOPs per sample over plain training's, as computed here "
             "(the decoder, the auxiliary head and SmashMix's extra server samples are the algorithm's own work; the "
             "decoder's first layer runs factored, models.auxiliary.UpsampledConv); *work ratio* = "
             "ratio × work, the FLOP rate achieved relative to centralized training. *recomputed*: the share of "
             "clients whose forward the step recomputes in backward instead of keeping its activations "
             "(engine.activation_memory_mb). Both rates run under one host-memory setting (`keep`: freed host "
             "memory reused, as a `locfedmix run` does by default, engine.keep_host_memory; `system`: glibc's "
             f"defaults); this table: `{rows[0]['host_memory']}`. Denormal floats: "
             f"{rows[0].get('denormals', 'computed as such (measured before runs flushed them)')} "
             "(engine.flush_denormals). "
             "`python benchmarks/throughput.py` regenerates this file. *load*: the machine's 1-minute load average "
             "when the cell started and ended.", "", machine_line(rows, device), "",
             "| algorithm | clients | samples/client | engine | recomputed | samples/s | centralized | ratio | work "
             "| work ratio | peak MB | load |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['n_clients']} | {r['per_client']} | {r['engine']} | "
                     f"{r.get('recomputed', 0):.0%} | "
                     f"{r['samples_per_s']:.0f} | {r['centralized_samples_per_s']:.0f} | {ratio_cell(r)} | "
                     f"{r['work_per_sample']:.2f} | {r['work_ratio']:.2f} | "
                     f"{r['peak_memory_mb']:.0f} | {'–'.join(f'{v:.1f}' for v in r.get('load', []))} |")
    return "\n".join(lines) + "\n\n" + targets_markdown(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 10, 100, 1000])
    parser.add_argument("--per-client", nargs="+", type=int, default=[16, 1])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per rate and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="alternate measurements of both rates per cell")
    parser.add_argument("--engine", nargs="+", default=["auto"], choices=["auto", "loop", "vectorized"],
                        help="client pool(s) to measure; several give one row each")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--activation-mb", type=float, nargs="+",
                        help="engine.activation_memory_mb (default: the config's); several give one row each")
    parser.add_argument("--tag", help="results named throughput_<tag> and THROUGHPUT-<tag>.md (default: the device, "
                                      "with -quick for --quick)")
    parser.add_argument("--host-memory", default="keep", choices=["keep", "system"],
                        help="keep: freed host memory is reused, as `locfedmix run` does (engine.keep_host_memory); "
                             "system: glibc's defaults")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the Markdown table from the JSON of an earlier run (same --tag / --quick)")
    parser.add_argument("--budget-s", type=float, help="wall seconds for the whole grid: cells that would not finish "
                                                         "within them are left out and named")
    parser.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def write_results(rows: list[dict], tag: str, device: str) -> str:
    """CSV, JSON and the Markdown table of `rows`, rewritten whole after every cell (nothing lost on a crash)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"throughput_{tag}"
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows, device)
    (RESULTS / ("THROUGHPUT.md" if tag == "cpu" else f"THROUGHPUT-{tag}.md")).write_text(text)
    return text


def main() -> None:
    args = parse_args()
    if args.cell:
        return run_cell(args)
    if args.quick:
        args.algorithms, args.clients = ["psl", "sfl", "locfedmix"], [10, 100]
    device = resolve_device(args.device).type
    tag = args.tag or (f"{device}-quick" if args.quick else device)  # a quick look keeps the full table
    if args.report_only:
        saved = RESULTS / f"throughput_{tag}.json"
        if not saved.exists():
            print(f"--report-only: no {saved} to rebuild the table from; run the measurements first", file=sys.stderr)
            sys.exit(2)
        return print(write_results(json.loads(saved.read_text()), tag, device))
    rows, skipped = measure_cells(args, tag, device)
    if skipped:
        print(f"not measured within --budget-s {args.budget_s:g}: {', '.join(skipped)}", file=sys.stderr)
    if not rows:
        sys.exit(1)
    print(write_results(rows, tag, device))


def measure_cells(args: argparse.Namespace, tag: str, device: str) -> tuple[list[dict], list[str]]:
    """Every cell in its own process, the results rewritten after each; cells that would start after
    `--budget-s` seconds, or run past them, are left out and named (so one call fits a machine's time limit)."""
    cells = itertools.product(args.algorithms, args.clients, args.per_client, args.engine, args.activation_mb or [None])
    rows, skipped, start = [], [], time.perf_counter()
    for a, n, k, engine, budget in tqdm(list(cells), desc="throughput"):
        cmd = [sys.executable, __file__, "--cell", a, str(n), str(k), "--seconds", str(args.seconds),
               "--repeats", str(args.repeats), "--engine", engine, "--device", args.device,
               "--host-memory", args.host_memory]
        cmd += ["--activation-mb", str(budget)] if budget is not None else []
        left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
        try:
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(cmd, 0)
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=left).stdout
        except subprocess.TimeoutExpired:
            skipped.append(f"{a}/{n}/{k}/{engine}")
            continue
        rows.append(json.loads(out.strip().splitlines()[-1]))
        if any(r["engine"] == rows[-1]["engine"] and r["cell"] == rows[-1]["cell"]
               and r["recomputed"] == rows[-1]["recomputed"] for r in rows[:-1]):
            rows.pop()  # `auto` picked a pool measured already
        write_results(rows, tag, device)
    return rows, skipped

if __name__ == "__main__":
    main()
