"""Scale-out speed: training samples/s of the same experiment on 1, 2 and 4 processes (torchrun, gloo on loopback),
against one process with all of this machine's threads, measured in the same invocation.

    python benchmarks/distributed.py                       # psl and locfedmix, 1/2/4 ranks
    python benchmarks/distributed.py --ranks 1 2 --algorithms sfl
    python benchmarks/distributed.py --device cuda        # on a GPU machine: NCCL, one GPU per rank

Fashion-MNIST (MNIST where it is not installed), the small CNN, 16 clients × 500 samples, batch 16, 2 rounds.
torchrun gives each rank one intra-op thread, so "1 rank" is one core's worth; the in-process row uses every core.
Writes benchmarks/results/distributed_<device>.csv, .json and DISTRIBUTED.md (DISTRIBUTED-cuda.md).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SETTINGS = ["n_clients = 16", "samples_per_client = 500", "batch_size = 16", "rounds = 2", "checkpoint_every = 0",
            "eval.batch_size = 500"]


def dataset() -> str:
    found = subprocess.run([str(Path(__file__).parent.parent / "scripts" / "fetch-data")], capture_output=True,
                           text=True)
    return found.stdout.strip() or "mnist"


def measure(algorithm: str, ranks: int | None, data: str, device: str) -> dict:
    """One run; `ranks` None = one process without torchrun (all threads). On `cuda` each rank takes one GPU and
    the ranks talk over NCCL."""
    with tempfile.TemporaryDirectory() as out:
        config = Path(out) / "run.toml"
        config.write_text(f'algorithm = "{algorithm}"\ndataset = "{data}"\n' + "\n".join(SETTINGS[:5]) + "\n"
                          + f'[eval]\nbatch_size = 500\n[engine]\ndevice = "{device}"\n')
        run = ["-m", "locfedmix", "run", "--no-progress", "--config", str(config), "--out", f"{out}/run"]
        if ranks is None:
            command = [sys.executable, *run]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                       *run, "--set", "engine.distributed=true"]
        subprocess.run(command, check=True, capture_output=True)
        summary = json.loads((Path(out) / "run" / "summary.json").read_text())
    return {"algorithm": algorithm, "ranks": ranks or 1, "launcher": "torchrun" if ranks else "in-process",
            "threads_per_rank": 1 if ranks else torch.get_num_threads(),
            "samples_per_s": summary["train_samples_per_second"],
            "bound": amdahl_bound(summary["flops_per_sample"], ranks or 1),
            "test_accuracy": summary["final"]["test_accuracy"], "engine": summary["engine"]}


def amdahl_bound(flops: dict[str, float], ranks: int) -> float:
    """The speed-up K ranks can reach at most on this machine: the client work (lower model, head or decoder)
    splits over min(K, cores) cores, the server's upper model runs whole on every rank (it is replicated)."""
    server = flops["upper_fwd"] + flops["upper_bwd"]
    share = server / (server + sum(v for k, v in flops.items() if not k.startswith("upper")))
    return 1 / (share + (1 - share) / min(ranks, os.cpu_count() or 1))


def markdown(rows: list[dict], device: str) -> str:
    transport = "NCCL, one GPU each" if device == "cuda" else "gloo, loopback"
    lines = [f"# Distributed throughput ({device}, {os.cpu_count()} cores)", "",
             f"Training samples/s of one experiment ({', '.join(SETTINGS)}) in one process without torchrun, and "
             f"on K ranks under torchrun ({transport}). *vs 1 rank* divides by the 1-rank torchrun row of the "
             "same algorithm, measured in the same invocation. `python benchmarks/distributed.py` regenerates "
             "this file.", "",
             "*bound* is the speed-up the design allows here: the clients' FLOPs split over min(K, cores) cores, "
             "the replicated server's FLOPs do not (Amdahl). What keeps the measured ratio below it: each step's "
             "broadcast of the smashed data, the FedAvg all-reduce, one process per rank competing for "
             "the same cores (4 ranks on 2 cores time-share), and the Python work per step that every rank "
             "repeats. Same seed, same test accuracy on every row (up to FedAvg's float rounding).", "",
             "| algorithm | launcher | ranks | threads/rank | samples/s | vs 1 rank | bound | test accuracy |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next((b for b in rows if b["algorithm"] == r["algorithm"] and b["launcher"] == "torchrun"
                     and b["ranks"] == 1), None)
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}" if base else "—"
        lines.append(f"| {r['algorithm']} | {r['launcher']} | {r['ranks']} | {r['threads_per_rank']} | "
                     f"{r['samples_per_s']:.0f} | {ratio} | {r['bound']:.2f} | {r['test_accuracy']:.4f} |")
    lines += ["", *threads_ceiling(rows)]
    return "\n".join(lines) + "\n"


def threads_ceiling(rows: list[dict]) -> list[str]:
    """How much more work this machine's cores do together than one alone, read off the same invocation: the
    in-process run (all threads) against one torchrun rank (one thread)."""
    out = []
    for alone in (r for r in rows if r["launcher"] == "in-process"):
        one = next(r for r in rows if r["algorithm"] == alone["algorithm"] and r["launcher"] == "torchrun"
                   and r["ranks"] == 1)
        out.append(f"- `{alone['algorithm']}`: {alone['threads_per_rank']} threads in one process ran "
                   f"{alone['samples_per_s'] / one['samples_per_s']:.2f}× one thread: this machine's cores add "
                   "little for this small model, which caps any split of it, over threads or over ranks.")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--algorithms", nargs="+", default=["psl", "locfedmix"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: one GPU per rank (NCCL); ranks beyond this machine's GPUs are skipped")
    args = parser.parse_args()
    device = args.device
    if device == "cuda":
        args.ranks = [k for k in args.ranks if k <= torch.cuda.device_count()]
    data, rows = dataset(), []
    for algorithm in args.algorithms:
        for ranks in [None, *args.ranks]:
            rows.append(measure(algorithm, ranks, data, device))
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"distributed_{device}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (RESULTS / f"distributed_{device}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / ("DISTRIBUTED.md" if device == "cpu" else f"DISTRIBUTED-{device}.md")).write_text(markdown(rows, device))
    print(markdown(rows, device))


if __name__ == "__main__":
    main()
