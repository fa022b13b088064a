"""Simulated time of finished runs recomputed from their config.toml alone, without training, under the library's
latency model or under the per-iteration formulas of the design specification where the library differs from them.

    python benchmarks/latency_replay.py benchmarks/results/reproduction/full-unstandardized

A replay plans every round again (the same seeds give the same batches and order), charges the ledger with what
each step sends (`locfedmix latency`'s dry step: shape-only tensors through the engine's own record_step), runs the
real FedAvg and relay exchanges, and advances the clock; nothing is trained. Under the library's model it gives each
metrics.csv row's simulated_seconds back to the last digit (the replay's own check); `as_specified` charges the four
choices docs/algorithms.md ("Latency model") argues:
* SplitFed v2: clients compute in parallel and share the band, only the server serves them in turn (per cycle of N
  steps: t_cf + t_up + N·t_srv + t_dn + t_cb);
* SplitFed v1: the N server copies run in parallel (t_srv of the largest batch, not of all of them);
* GradMix: the mixed gradient goes once, as a broadcast, to the round(φ·K) clients that receive it;
* LocFedMix-SL: the decoder's forward and backward add to the step instead of overlapping the wait.
The report (LATENCY-AS-SPECIFIED-<grid>.md beside the grid's REPRODUCTION report) puts the latency findings under
both models side by side.
"""

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, Callable
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))

from locfedmix.algorithms.catalog import Algorithm  # noqa: E402
from locfedmix.algorithms.objectives import receives_server_gradient  # noqa: E402
from locfedmix.algorithms.parts import FedAvg, Sequential, ServerLayout  # noqa: E402
from locfedmix.api import federate, time_to_target  # noqa: E402
from locfedmix.config import EngineKind, validate  # noqa: E402
from locfedmix.config_files import read_toml  # noqa: E402
from locfedmix.engines.assemble import build_federation  # noqa: E402
from locfedmix.engines.flow import round as flow_round  # noqa: E402
from locfedmix.latency.flops import SampleFlops  # noqa: E402
from locfedmix.latency.ledger import Message  # noqa: E402
from locfedmix.latency.model import FULL_SPEED, Profile, step_phases  # noqa: E402
from locfedmix.latency.report import dry_step  # noqa: E402
from locfedmix.report.runs import read_metrics  # noqa: E402

PhaseModel = Callable[..., dict[str, float]]


def replay(run_dir: Path, phases: PhaseModel | None = None) -> list[float]:
    """The simulated seconds at every evaluated round of the run in `run_dir`, under `phases` (None: the library's
    step model)."""
    config = validate(read_toml(run_dir / "config.toml"))
    # where a run computed does not move its clock: replay on the CPU, one module per client
    config = config.model_copy(update={"engine": config.engine.model_copy(update={"kind": EngineKind.LOOP,
                                                                                  "device": "cpu"})})
    data = federate(config)
    fed = build_federation(config, config.resolved_algorithm(), data.dataset.input_shape,
                           data.dataset.n_classes, [len(i) for i in data.client_indices])
    seconds = []
    with mock.patch.object(flow_round, "step_phases", phases or step_phases):
        for r in range(1, config.rounds + 1):
            flow_round.train_round(fed, data.client_indices, config.batch_size, r, dry_step)
            if r % config.eval.every == 0 or r == config.rounds:
                seconds.append(fed.clock.seconds)
    return seconds


def as_specified(n_clients: int) -> PhaseModel:
    """The specification's per-iteration charge for a federation of `n_clients` (every client in every round, no
    stragglers, no deadline: the reproduction grids' setting)."""

    def phases(algo: Algorithm, flops: SampleFlops, profile: Profile, batch_sizes: dict[int, int],
               messages: list[Message], slowdown=FULL_SPEED, cutoff: float | None = None) -> dict[str, float]:
        if slowdown or cutoff is not None:
            raise ValueError("the specification's formulas know no stragglers or deadlines")
        built = step_phases(algo, flops, profile, batch_sizes, messages)
        largest = max(batch_sizes.values())
        forward, backward, local = (largest * f / profile.client_flops
                                    for f in (flops.lower_fwd, flops.lower_bwd, flops.head_fwd + flops.head_bwd))
        server, up, down, delay = built["server_compute"], built["upload"], built["download"], profile.link_delay_s
        if algo.server_layout is ServerLayout.PER_CLIENT:
            server = largest * (flops.upper_fwd + flops.upper_bwd) / profile.server_flops
        chosen = round(algo.gradient_mixer.fraction * len(batch_sizes)) if algo.gradient_mixer else 0
        if chosen and down:
            down = (down - delay) * (len(batch_sizes) - chosen + 1) / len(batch_sizes) + delay
        if isinstance(algo.schedule, Sequential) and isinstance(algo.sync, FedAvg):  # SplitFed v2
            forward, backward = forward / n_clients, backward / n_clients
            up, down = up - delay + delay / n_clients, down - delay + delay / n_clients
        if receives_server_gradient(algo.objective):
            total = forward + local + up + server + down + backward
        else:
            total = max(forward + local + backward, up + server)
        return {"client_compute": forward + local + backward, "upload": up, "server_compute": server,
                "download": down, "sync": 0.0, "total": total}

    return phases


def replayed_runs(grid_dir: Path, experiments: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """experiment → label → one record per seed: the run's rows with simulated_seconds as built (checked against
    metrics.csv) and as specified, and the time to target under each."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for experiment in experiments:
        for run_dir in sorted((grid_dir / experiment).glob("*/seed*")):
            config = validate(read_toml(run_dir / "config.toml"))
            rows = read_metrics(run_dir / "metrics.csv")
            built = replay(run_dir)
            if built != [r["simulated_seconds"] for r in rows]:
                raise AssertionError(f"{run_dir}: the replay does not give metrics.csv's simulated_seconds")
            spec = replay(run_dir, as_specified(config.n_clients))
            spec_rows = [{**r, "simulated_seconds": s} for r, s in zip(rows, spec, strict=True)]
            target = config.latency.target_accuracy
            out.setdefault(experiment, {}).setdefault(run_dir.parent.name, []).append(
                {"rows": rows, "spec_rows": spec_rows, "built": time_to_target(rows, target),
                 "spec": time_to_target(spec_rows, target)})
    return out


def report(grid_dir: Path, replayed: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> str:
    """Markdown: per experiment and algorithm, the mean simulated seconds to the target under both models, and the
    latency finding (rank of `locfedmix`, and who is faster) under each."""
    from reproduction_findings import speed_sentence

    lines = [f"# Latency as built and as specified ({grid_dir.name} grid)", "",
             f"Generated by `python benchmarks/latency_replay.py {grid_dir.as_posix()}` from the runs' config.toml "
             "alone: every run was replayed without training, and the replay under the library's latency model "
             "gave every metrics.csv row's simulated_seconds back to the last digit. *As specified* charges "
             "SplitFed v2's clients in parallel (only the server in turn), SplitFed v1's server copies in parallel, "
             "GradMix's mixed gradient as one broadcast and LocFedMix-SL's decoder after the wait, where the library "
             "does not (docs/algorithms.md, \"Latency model\", says why). Seconds to the target are means over the "
             "seeds that reached it.", ""]
    rows_csv = []
    for experiment, cells in replayed.items():
        lines += [f"## {experiment}", "", "| cell | seeds reached | s to target, as built | s to target, as specified "
                  "| s per round, as built | s per round, as specified |", "|---|---:|---:|---:|---:|---:|"]
        for label, runs in cells.items():
            built = [r["built"]["simulated_seconds"] for r in runs if r["built"]["reached"]]
            spec = [r["spec"]["simulated_seconds"] for r in runs if r["spec"]["reached"]]
            per_round = [r["rows"][-1]["simulated_seconds"] / r["rows"][-1]["round"] for r in runs]
            spec_round = [r["spec_rows"][-1]["simulated_seconds"] / r["spec_rows"][-1]["round"] for r in runs]
            mean = lambda v: f"{sum(v) / len(v):.0f}" if v else "not reached"
            lines.append(f"| {label} | {len(built)}/{len(runs)} | {mean(built)} | {mean(spec)} | {mean(per_round)} "
                         f"| {mean(spec_round)} |")
            rows_csv.append({"experiment": experiment, "cell": label, "seeds": len(runs), "reached": len(built),
                             "built_s": mean(built), "spec_s": mean(spec), "built_round_s": mean(per_round),
                             "spec_round_s": mean(spec_round)})
        as_built = {k: [{"summary": {"time_to_target": r["built"]}} for r in v] for k, v in cells.items()}
        as_spec = {k: [{"summary": {"time_to_target": r["spec"]}} for r in v] for k, v in cells.items()}
        if "locfedmix" in cells:
            lines += ["", f"- latency as built: {speed_sentence(as_built, 0, 'simulated s')}.",
                      f"- latency as specified: {speed_sentence(as_spec, 0, 'simulated s')}."]
        lines.append("")
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows_csv[0]))
        writer.writeheader()
        writer.writerows(rows_csv)
    text = "\n".join(lines)
    path.write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="a reproduction grid folder, e.g. benchmarks/results/reproduction/full")
    parser.add_argument("--only", nargs="+", default=["convergence", "noniid-convergence", "small-data"],
                        help="experiments whose latency findings REPRODUCTION.md states")
    args = parser.parse_args()
    # reproduce.py's own grids live in results/reproduction/<grid>, a grid run with --out DIR in DIR/<grid>
    folder = args.grid.parent.parent if args.grid.parent.name == "reproduction" else args.grid.parent
    path = folder / f"LATENCY-AS-SPECIFIED-{args.grid.name}.md"
    print(report(args.grid, replayed_runs(args.grid, args.only), path))


if __name__ == "__main__":
    main()
