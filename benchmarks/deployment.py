"""The deployment measured: the algorithms on Flower's Deployment Engine with three secure SuperNodes on this
machine (locfedmix.deploy.local), against what the ledger and the latency model say of the same run.

    python benchmarks/deployment.py                         # psl, sfl, locfedmix, sl; and Flower's echo
    python benchmarks/deployment.py --algorithms sfl --engine simulation

Per algorithm (3 clients x 24 digits, batches of 12, one round): the serialized bytes of a step's messages (forward
replies up, backward messages down) against the ledger's smashed data, labels and cut gradients; the wall-clock time
of a step (its forward and backward exchanges) against the latency model's prediction for a loopback profile (this
machine's measured FLOP/s on both sides, a 10 Gbit/s link, 50 µs delay). Flower's fixed cost per message comes from
an app that only echoes payloads of 1 KiB, 1 MiB and 16 MiB (benchmarks/deployment_echo/). Writes
benchmarks/results/deployment.csv, deployment.json and DEPLOYMENT.md.
"""

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from locfedmix.deploy.app import write_app
from locfedmix.deploy.local import LocalFederation

RESULTS = Path(__file__).parent / "results"
ECHO = Path(__file__).parent / "deployment_echo"
BASE = {"dataset": "digits", "n_clients": 3, "samples_per_client": 24, "rounds": 1, "batch_size": 12, "seed": 0,
        "engine": {"kind": "loop"}}


def flops_per_second() -> float:
    """This machine's sustained float32 matmul rate on one thread: the loopback profile's compute on both sides."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a = torch.rand(512, 512)
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 1.0:
        a @ a
        n += 1
    torch.set_num_threads(threads)
    return n * 2 * 512**3 / (time.perf_counter() - started)


def algorithm_row(algorithm: str, folder: Path, flops: float, simulation: bool) -> dict:
    """One algorithm deployed: measured bytes and time per step beside the ledger and the latency model."""
    latency = {"client_flops": flops, "server_flops": flops, "uplink_bps": 10e9, "downlink_bps": 10e9,
               "link_delay_s": 50e-6}
    out = folder / "run"
    app = write_app(folder / "app", BASE | {"algorithm": algorithm, "latency": latency}, {"out": str(out)})
    started = time.perf_counter()
    with LocalFederation(folder / "federation", BASE["n_clients"], simulation=simulation) as federation:
        federation.run(app, timeout=3600)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    messages, ledger, steps = summary["deployment"]["messages"], summary["ledger_bytes"]["totals"], summary["steps"]
    step_messages = ("forward", "backward")
    measured_bytes = sum(messages[k]["bytes_up"] + messages[k]["bytes_down"] for k in step_messages)
    ledger_bytes = sum(v for k, v in ledger.items() if k.split("/")[1] in ("smashed", "labels", "gradient"))
    return {"algorithm": algorithm, "steps": steps, "bytes_per_step": measured_bytes / steps,
            "ledger_bytes_per_step": ledger_bytes / steps,
            "seconds_per_step": summary["deployment"]["step_seconds"] / steps,
            "exchange_seconds_per_step": sum(messages[k]["seconds"] for k in step_messages) / steps,
            "predicted_seconds_per_step": summary["simulated"]["seconds"] / steps,
            "seconds_per_exchange": sum(messages[k]["seconds"] for k in step_messages)
            / sum(messages[k]["exchanges"] for k in step_messages), "run_seconds": wall,
            "test_accuracy": summary["final"]["test_accuracy"]}


def echo_rows(folder: Path, simulation: bool) -> list[dict]:
    """Flower's own cost: seconds per exchange with every node for each payload size (median of the repeats)."""
    out = folder / "echo.json"
    with LocalFederation(folder / "federation", 3, simulation=simulation) as federation:
        federation.run(ECHO, {"out": str(out)}, timeout=3600)
    timings = json.loads(out.read_text())
    sizes = sorted({t["bytes"] for t in timings})
    return [{"bytes": size, "median_seconds": statistics.median(t["seconds"] for t in timings if t["bytes"] == size),
             "repeats": sum(t["bytes"] == size for t in timings)} for size in sizes]


def markdown(rows: list[dict], echo: list[dict], engine: str, flops: float, load: list[float]) -> str:
    lines = [f"# Deployment on Flower ({engine} engine, this machine)", "",
             ("Three SuperNodes and the SuperLink on one " if engine == "deployment" else
              "Three simulated SuperNodes (Ray actors) and the SuperLink on one ") +
             f"{os.cpu_count()}-core machine (loopback network"
             f"{', TLS and SuperNode authentication on' if engine == 'deployment' else ''}); the ServerApp and "
             f"{'each message' if engine == 'deployment' else 'the simulation'}'s ClientApp are processes of their "
             "own. Generated by `python benchmarks/deployment.py`. "
             f"Loopback profile: {flops / 1e9:.1f} GFLOP/s on both sides (this machine, one thread), 10 Gbit/s, "
             f"50 µs. The machine's 1-minute load average was {min(load):.1f}–{max(load):.1f} during the runs "
             "(other work shared its cores), which lengthens every process start.", "",
             "| algorithm | steps | bytes/step measured | bytes/step ledger | measured ÷ ledger | s/step measured "
             "| of which exchanges | s/step predicted | measured ÷ predicted | s per exchange |",
             "|---|" + "---:|" * 9]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['steps']} | {r['bytes_per_step']:,.0f} | "
                     f"{r['ledger_bytes_per_step']:,.0f} | {r['bytes_per_step'] / r['ledger_bytes_per_step']:.3f} | "
                     f"{r['seconds_per_step']:.2f} | {r['exchange_seconds_per_step']:.2f} | "
                     f"{r['predicted_seconds_per_step']:.4f} | "
                     f"{r['seconds_per_step'] / r['predicted_seconds_per_step']:,.0f}× | "
                     f"{r['seconds_per_exchange']:.2f} |")
    lines += ["", "Flower's cost per exchange (one message to each of the three nodes and their replies), from an "
              "app that only echoes:", "", "| payload | s per exchange (median) | repeats |", "|---:|---:|---:|"]
    lines += [f"| {e['bytes']:,} B | {e['median_seconds']:.2f} | {e['repeats']} |" for e in echo]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["psl", "sfl", "locfedmix", "sl"])
    parser.add_argument("--engine", choices=["deployment", "simulation"], default="deployment")
    args = parser.parse_args()
    simulation = args.engine == "simulation"
    flops = flops_per_second()
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for algorithm in args.algorithms:
            rows.append(algorithm_row(algorithm, Path(tmp) / algorithm, flops, simulation))
            load.append(os.getloadavg()[0])
        echo = echo_rows(Path(tmp) / "echo", simulation)
        load.append(os.getloadavg()[0])
    suffix = "" if args.engine == "deployment" else "-simulation"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"deployment{suffix}.json").write_text(json.dumps({"rows": rows, "echo": echo, "flops": flops,
                                                                 "load": load}, indent=1))
    with (RESULTS / f"deployment{suffix}.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, echo, args.engine, flops, load)
    (RESULTS / f"DEPLOYMENT{suffix.upper()}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
