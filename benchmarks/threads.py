"""A run alone and beside busy processes: training samples/s at engine.threads = default (0), 1 and 2, and at 2 with
OpenMP's passive wait policy, each measurement in a fresh process (the wait policy is read when torch loads).

    python benchmarks/threads.py                      # psl, 10 clients x 32 samples, 3 repeats, 1 busy neighbour
    python benchmarks/threads.py --algorithm sl --neighbours 2 --tag sl

A neighbour is a process multiplying matrices on one thread without end. Each repeat measures every setting alone and
beside the neighbours, the loads in alternating order and the settings rotated, so that a slow spell of the machine
falls on all of them; the table holds medians and same-repeat ratios (median, with their range). The machine's own
load is measured (others' share of its CPUs, /proc/stat) and written beside the figures: "alone" means beside
whatever else the machine runs.

Writes benchmarks/results/threads[_<tag>].csv (every measurement), .json (the measurements and the table's rows) and
THREADS[-<tag>].md; --report-only rewrites the Markdown from the JSON.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from locfedmix.engines.backends.denormals import denormals_flushed
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
from locfedmix.engines.backends.threads import default_threads, others_busy_share, usable_cpus
from throughput import split_meter

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"default": ("0", {}), "1": ("1", {}), "2": ("2", {}), "2, passive": ("2", {"OMP_WAIT_POLICY": "PASSIVE"})}
SETUP = ("algorithm", "clients", "per_client", "seconds", "neighbours")
NEIGHBOUR = "import torch; a = torch.rand(512, 512); print(flush=True)\nwhile True: a @ a"


def measure(args: argparse.Namespace) -> None:
    """One measurement, in this process: the thread count as a run would set it, host memory kept and denormals
    flushed as `locfedmix run` does, one warm-up round, then whole rounds for `--seconds`."""
    count = int(args.child) or default_threads()
    torch.set_num_threads(count)
    keep_freed_host_memory()
    meter, engine, _, _ = split_meter(args.algorithm, args.clients, args.per_client, "auto", torch.device("cpu"))
    with denormals_flushed():
        rate = meter(args.seconds)
    print(json.dumps({"threads": count, "samples_per_s": rate, "engine": engine}))


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a `locfedmix run` started by hand: no OMP_NUM_THREADS (the default must look at the load),
    plus the setting's own variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    return env | extra


def measured(args: argparse.Namespace, setting: str) -> dict:
    count, extra = SETTINGS[setting]
    cmd = [sys.executable, __file__, "--child", count, "--algorithm", args.algorithm, "--clients", str(args.clients),
           "--per-client", str(args.per_client), "--seconds", str(args.seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env(extra)).stdout
    return json.loads(out.strip().splitlines()[-1])


def start_neighbours(n: int) -> list[subprocess.Popen]:
    env = child_env({"OMP_NUM_THREADS": "1"})
    procs = [subprocess.Popen([sys.executable, "-c", NEIGHBOUR], stdout=subprocess.PIPE, env=env) for _ in range(n)]
    for p in procs:
        p.stdout.readline()  # torch loaded, about to multiply
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def one_repeat(args: argparse.Namespace, r: int, samples: list[dict]) -> None:
    """Both loads, in the order this repeat takes, every setting under each (rotated by the repeat)."""
    names = list(SETTINGS)
    names = names[r % len(names):] + names[:r % len(names)]
    for load in (("alone", "busy") if r % 2 == 0 else ("busy", "alone")):
        neighbours = start_neighbours(args.neighbours) if load == "busy" else []
        try:
            others = others_busy_share(usable_cpus(), seconds=1.0)
            for setting in names:
                row = measured(args, setting)
                samples.append({"repeat": r, "load": load, "others_busy": others, "setting": setting, **row})
                print(f"repeat {r} {load:5} others {others:.0%} threads={setting:10} → {row['threads']} threads, "
                      f"{row['samples_per_s']:.0f} samples/s", flush=True)
        finally:
            stop(neighbours)


def ratio(samples: list[dict], top: tuple[str, str], bottom: tuple[str, str]) -> tuple[float, float, float]:
    """Median and range of the same-repeat ratios of two (load, setting) cells' samples/s."""
    rate = {(s["repeat"], s["load"], s["setting"]): s["samples_per_s"] for s in samples}
    values = [rate[(r, *top)] / rate[(r, *bottom)] for r in sorted({s["repeat"] for s in samples})]
    return statistics.median(values), min(values), max(values)


def table_rows(samples: list[dict]) -> list[dict]:
    rows = []
    for load in ("alone", "busy"):
        for setting in SETTINGS:
            cell = [s for s in samples if s["load"] == load and s["setting"] == setting]
            rows.append({"load": load, "setting": setting, "threads": sorted({s["threads"] for s in cell}),
                         "others_busy": [min(s["others_busy"] for s in cell), max(s["others_busy"] for s in cell)],
                         "samples_per_s": statistics.median(s["samples_per_s"] for s in cell),
                         "vs_1_thread": ratio(samples, (load, setting), (load, "1")),
                         "busy_vs_alone": ratio(samples, ("busy", setting), ("alone", setting))})
    return rows


def markdown(args: argparse.Namespace, rows: list[dict], repeats: int) -> str:
    span = lambda x: f"{x[0]:.2f} ({x[1]:.2f}–{x[2]:.2f})"
    lines = [f"# A run alone and beside busy processes ({args.algorithm}, {args.clients} clients × {args.per_client} "
             f"samples, CNN, CPU)", "",
             f"Training samples/s on {os.cpu_count()} CPUs, {repeats} alternating repeats, each measurement a fresh "
             f"process training for {args.seconds:g} s after one warm-up round; *busy*: beside {args.neighbours} "
             "process(es) multiplying matrices on one thread. *others*: the share of the CPUs that other processes "
             "used, measured before each load's measurements (its range); it is the machine's own load where it is "
             "not 0 % alone. *2* is what a run took before engine.threads (torch's default: the cores). "
             "*default*: engine.threads = 0 (no OMP_NUM_THREADS), the count it picked in brackets; *passive*: "
             "OMP_WAIT_POLICY=PASSIVE. Ratios are medians of same-repeat ratios, their range in brackets. "
             "`python benchmarks/threads.py` regenerates this file.", "",
             "| load | others | threads | samples/s | ÷ 1 thread | busy ÷ alone |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        picked = f" ({'/'.join(map(str, r['threads']))})" if r["setting"] == "default" else ""
        versus = span(r["busy_vs_alone"]) if r["load"] == "busy" else "—"
        others = "–".join(f"{x:.0%}" for x in sorted(set(r["others_busy"])))
        lines.append(f"| {r['load']} | {others} | {r['setting']}{picked} | {r['samples_per_s']:.0f} | "
                     f"{span(r['vs_1_thread'])} | {versus} |")
    return "\n".join(lines) + "\n"


def write(args: argparse.Namespace, samples: list[dict]) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    with open(RESULTS / f"threads{suffix}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    rows = table_rows(samples)
    setup = {key: getattr(args, key) for key in SETUP}
    (RESULTS / f"threads{suffix}.json").write_text(json.dumps({"setup": setup, "samples": samples, "rows": rows},
                                                              indent=2) + "\n")
    text = markdown(args, rows, len({s["repeat"] for s in samples}))
    (RESULTS / f"THREADS{suffix.replace('_', '-')}.md").write_text(text)
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="psl")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-client", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per setting and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=1, help="busy processes beside the run")
    parser.add_argument("--tag", help="results named threads_<tag> and THREADS-<tag>.md")
    parser.add_argument("--report-only", action="store_true", help="the Markdown again from the JSON (same --tag)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child is not None:
        return measure(args)
    samples: list[dict] = []
    if args.report_only:  # the table again, with the setup it was measured with
        saved = json.loads((RESULTS / f"threads{f'_{args.tag}' if args.tag else ''}.json").read_text())
        samples = saved["samples"]
        vars(args).update(saved["setup"])
    for r in range(0 if args.report_only else args.repeats):
        one_repeat(args, r, samples)
    print(write(args, samples))


if __name__ == "__main__":
    main()
