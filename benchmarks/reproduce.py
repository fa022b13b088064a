"""Reproduce the paper's claims on Fashion-MNIST: convergence, scalability, latency, ablations, non-IID.

    python benchmarks/reproduce.py --quick             # a small grid, under 15 minutes on 2 CPU cores
    python benchmarks/reproduce.py                     # the full grid (hours on CPU; run it on a GPU)
    python benchmarks/reproduce.py --only convergence ablations --seeds 3
    python benchmarks/reproduce.py --only scalability --cells '*-n1' '*-n2'   # a subset of the cells
    python benchmarks/reproduce.py --workers 12 --set engine.device=cuda --set eval.batch_size=1000   # on a GPU
    python benchmarks/reproduce.py --set data.normalize=false --report-only   # the unstandardized grid's report

Every cell is one `locfedmix.run` into benchmarks/results/reproduction/<grid>/<experiment>/<cell>/seed<k>/; a cell
whose summary.json exists is skipped and a run cut short continues from its last checkpoint, so an interrupted grid
resumes where it stopped; a cell whose config equals
another's up to placement (device, engine, evaluation batch) is that run, copied (its summary.json says
`copied_from`). The report
(benchmarks/results/REPRODUCTION.md, CSVs and PNG plots beside it) is rebuilt from whatever cells have finished.
A grid run with `--set data.normalize=false` (pixels in [0, 1], as every run before input standardization) is kept
apart, in `<grid>-unstandardized/` with its report REPRODUCTION[-quick]-unstandardized.md, so that both stand side
by side.
"""

import argparse
import fnmatch
import itertools
import multiprocessing
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.api import run
from locfedmix.config import validate
from locfedmix.config_files import apply_overrides, read_toml
from locfedmix.data.partition import PARTITION_PARAMETERS
from locfedmix.errors import UserError

HERE = Path(__file__).parent
BASE = HERE.parent / "configs" / "paper" / "fmnist.toml"
RESULTS = HERE / "results"
ALL = list(ALGORITHMS)
# The non-IID experiments' clients: Dirichlet label proportions with alpha = 0.3.
NONIID = {"partition": "dirichlet", "data.alpha": 0.3}
UNSTANDARDIZED = "-unstandardized"  # the grid's suffix when its inputs are pixels in [0, 1] (data.normalize=false)


def experiments(quick: bool) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Experiment name → its cells (label, config overrides). `--quick` keeps the shape and shrinks every axis."""
    ns = [2, 10, 30] if quick else [1, 2, 5, 10, 20, 50, 100]
    scal_algos = ["sl", "psl", "sfl", "locfedmix"] if quick else ALL
    ablations = [("full", {}), ("no-loc", {"algo.loc": False}), ("no-mix", {"algo.mix": False}),
                 ("no-fed", {"algo.fed": False}), ("psl-equivalent", {"algo.loc": False, "algo.mix": False,
                                                                       "algo.fed": False})]
    if not quick:
        ablations += [(f"alpha={a}", {"algo.mix_alpha": a}) for a in (0.2, 4.0)]
        ablations += [(f"partners={n}", {"algo.partners": n}) for n in (3, 9)]
        ablations += [(f"sync_every={t}", {"algo.sync_every": t}) for t in (1, 8)]
        ablations += [(f"gamma={g}", {"algo.gamma": g}) for g in (0.1, 0.5, 5.0)]
    grid = {
        "convergence": [(a, {"algorithm": a}) for a in ALL],
        "scalability": [(f"{a}-n{n}", {"algorithm": a, "n_clients": n}) for a, n in itertools.product(scal_algos, ns)],
        "ablations": [(name, {"algorithm": "locfedmix", **o}) for name, o in ablations],
    }
    grid["noniid-convergence"] = [(k, {**o, **NONIID}) for k, o in grid["convergence"]]
    if not quick:
        grid["noniid-scalability"] = [(k, {**o, **NONIID}) for k, o in grid["scalability"]]
        grid["readings"] = READINGS
        grid["small-data"] = [(a, {"algorithm": a, "n_clients": 50, "samples_per_client": 100})
                              for a in ("sl", "psl", "sfl", "locfedmix")]
    # SGLR's calibration point: an AlexNet-like model with one conv + pool on the client, 5 clients
    grid["calibration"] = [(a, {"algorithm": a, "model": "alexnet", "n_clients": 5}) for a in ("psl", "sfl")]
    return grid


# The readings of LocFedMix-SL that the paper leaves open, each against the default (the `locfedmix` cell of
# `convergence`), judged on the validation split; a reading that changes every algorithm (the server learning rate,
# the cut) has its `sfl` counterpart beside it, so that a gain it brings to all is not credited to LocFedMix-SL.
READINGS = [(label, {"algorithm": "locfedmix", **o}) for label, o in [
    ("client_grad=local_only", {"algo.client_grad": "local_only"}),
    ("client_grad=server_only", {"algo.client_grad": "server_only"}),
    ("mix_extra_step", {"algo.mix_extra_step": True}),
    ("per_sample_lambda", {"algo.per_sample_lambda": True}),
    ("partners=all", {"algo.partners": 9}),
    ("rec_loss=bce", {"algo.rec_loss": "bce", "data.normalize": False}),  # BCE needs pixels in [0, 1]
    ("mix-only", {"algo.loc": False, "algo.fed": False}),
    ("server_lr=sqrtN", {"algo.server_lr_exponent": 0.5}),
    ("cut=1", {"cut": 1}),
]] + [("sfl server_lr=sqrtN", {"algorithm": "sfl", "algo.server_lr_exponent": 0.5}),
      ("sfl cut=1", {"algorithm": "sfl", "cut": 1})]


PARAMETERS = {key for keys in PARTITION_PARAMETERS.values() for key in keys}

# In --quick mode only these experiments run more than one seed (the rest show the shape of the result).
QUICK_MULTI_SEED = {"convergence", "ablations"}


def cell_config(overrides: dict[str, Any], seed: int, rounds: int, settings: list[str]):
    """The base config with the cell's overrides; `settings` (--set) apply to every cell (device, eval batch)."""
    tree = apply_overrides(read_toml(BASE), [f"seed={seed}", f"rounds={rounds}", *settings])
    for key, value in overrides.items():
        node = tree
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return validate(tree)


def grid_suffix(settings: list[str]) -> str:
    """'' for a grid of standardized inputs (the default), UNSTANDARDIZED where `settings` turn data.normalize off:
    the two never share a folder or a report, so the runs from before standardization keep theirs."""
    return "" if cell_config({}, 0, 1, settings).data.normalize else UNSTANDARDIZED


def cell_cost(config) -> float:
    """Relative cost of a cell: samples per round, doubled for LocFedMix-SL's decoders."""
    return config.n_clients * (config.samples_per_client or 6000) * (2 if config.algorithm == "locfedmix" else 1)


def run_cell(out: Path, config, threads: int | None = None) -> None:
    """One run; `threads` caps the worker's intra-op threads so that parallel workers do not oversubscribe the
    cores (14 workers × 16 threads each left an H200 mostly idle). A run of the same identity that was cut short
    (a grid stopped or crashed; N = 100 runs take 10-20 CPU minutes) continues from its last checkpoint, ending with
    the numbers of an uninterrupted run (api.run's resume)."""
    if threads:
        torch.set_num_threads(threads)
    resume = (out / "checkpoint.pt").exists() and same_identity(out, config)
    run(config, out, overwrite=not resume, progress=False, resume=resume)


def same_identity(out: Path, config) -> bool:
    """Whether the run directory `out` holds a run of `config` (up to placement: see `identity`)."""
    try:
        return identity(validate(read_toml(out / "config.toml"))) == identity(config)
    except (UserError, OSError):
        return False


def identity(config) -> str:
    """What a run computes: its config without the settings that only place it or pace it (engine, evaluation
    batch, logging, checkpoints) and without the partitioner parameters its partitioner does not read. Cells of
    equal identity are one experiment: `scalability`'s N = 10 cells are
    `convergence`'s, the `full` ablation is `convergence`'s locfedmix."""
    tree = config.model_dump(mode="json", exclude={"engine", "log", "checkpoint_every"})
    tree["eval"].pop("batch_size")
    read = PARTITION_PARAMETERS[config.partition]  # the others do not change the split (runs kept alpha with iid)
    tree["data"] = {k: v for k, v in tree["data"].items() if k in read or k not in PARAMETERS}
    return json.dumps(tree, sort_keys=True)


def finished_runs(grid_dir: Path) -> dict[str, Path]:
    """identity → a finished run of the grid (runs whose config no longer validates are passed over)."""
    runs: dict[str, Path] = {}
    for summary in sorted(grid_dir.glob("*/*/seed*/summary.json")):
        try:
            runs.setdefault(identity(validate(read_toml(summary.parent / "config.toml"))), summary.parent)
        except UserError:
            continue
    return runs


def reuse(out: Path, source: Path, grid_dir: Path) -> None:
    """The cell's run is `source`'s: copy its config and metrics; its summary names where it came from."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.toml", "metrics.csv"):
        shutil.copy2(source / name, out / name)
    summary = json.loads((source / "summary.json").read_text()) | {"copied_from": str(source.relative_to(grid_dir))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run_grid(grid_dir: Path, cells: list[tuple[str, str, dict]], seeds: dict[str, int], rounds: int,
             settings: list[str], workers: int) -> None:
    """Every unfinished (cell, seed), seed 0 of every cell first so that a grid cut short has the widest coverage;
    with `workers` > 1 in that many processes (spawned: CUDA cannot be forked). A cell that is another's run
    (equal identity) is run once and copied."""
    todo = [(s, grid_dir / e / label / f"seed{s}", cell_config(o, s, rounds, settings))
            for s in range(max(seeds.values(), default=0)) for e, label, o in cells if s < seeds[e]]
    todo.sort(key=lambda item: (item[0], -cell_cost(item[2])))  # longest first within a seed: workers end together
    sources, copies, fresh = finished_runs(grid_dir), [], []
    for _, out, config in todo:
        if (out / "summary.json").exists():
            continue
        key = identity(config)
        if key in sources:
            copies.append((out, sources[key]))
        else:
            sources[key] = out
            fresh.append((out, config))
    for out, source in copies:  # those of finished runs now, the rest once their run has finished
        if (source / "summary.json").exists():
            reuse(out, source, grid_dir)
    run_fresh(fresh, workers)
    for out, source in copies:
        if not (out / "summary.json").exists():
            reuse(out, source, grid_dir)


def run_fresh(todo: list[tuple[Path, Any]], workers: int) -> None:
    """Run the cells (output directory, config), in this process or in `workers` processes."""
    if workers == 1:
        for out, config in tqdm(todo, desc="cells"):
            run_cell(out, config)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = [pool.submit(run_cell, out, config, threads) for out, config in todo]
        for done in tqdm(as_completed(jobs), total=len(todo), desc="cells"):
            done.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid: fewer clients, rounds and seeds")
    parser.add_argument("--only", nargs="+", help="experiments to run (default: all)")
    parser.add_argument("--cells", nargs="+", metavar="GLOB", help="only cells whose label matches, e.g. '*-n5'")
    parser.add_argument("--seeds", type=int,
                        help="seeds per cell (default 3; quick: 2 for convergence and ablations, 1 else)")
    parser.add_argument("--rounds", type=int, help="rounds per run (default 20; quick 3)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished cells")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every cell, e.g. engine.device=cuda (repeatable)")
    parser.add_argument("--out", type=Path, help="grid and report here instead of benchmarks/results (trials)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once, each in its own process")
    args = parser.parse_args()
    suffix = grid_suffix(args.settings)
    grid_name = ("quick" if args.quick else "full") + suffix
    grid_dir = args.out / grid_name if args.out else RESULTS / "reproduction" / grid_name
    grid = experiments(args.quick)
    unknown = set(args.only or []) - set(grid)
    if unknown:
        parser.error(f"unknown experiment(s) {sorted(unknown)}; choose from {sorted(grid)}")
    chosen = {k: v for k, v in grid.items() if not args.only or k in args.only}
    cells = [(e, label, o) for e, entries in chosen.items() for label, o in entries
             if not args.cells or any(fnmatch.fnmatchcase(label, pattern) for pattern in args.cells)]
    seeds = {e: args.seeds or (3 if not args.quick else 2 if e in QUICK_MULTI_SEED else 1) for e in grid}
    if not args.report_only:
        run_grid(grid_dir, cells, seeds, args.rounds or (3 if args.quick else 20), args.settings, args.workers)
    from reproduction_findings import findings
    from reproduction_report import load_cells, write_report

    report = (args.out or RESULTS) / f"REPRODUCTION{'-quick' if args.quick else ''}{suffix}.md"
    print(write_report(grid_dir, grid, report, findings(lambda experiment: load_cells(grid_dir, experiment))))


if __name__ == "__main__":
    main()
