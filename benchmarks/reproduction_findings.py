"""The top of REPRODUCTION.md: for each claim of the paper's abstract — improved scalability, convergence speed and
latency compared to sequential SL, SplitFed and LocSplitFed — whether it holds in our cells, in plain sentences
computed from the finished cells (nothing here is typed in by hand)."""

import numpy as np

from reproduction_report import final_values, fmt, verdict

OURS = "locfedmix"
# The paper's named rivals: sequential SL, SplitFed (the group's SFL and Thapa et al.'s v1/v2) and LocSplitFed.
RIVALS = ("sl", "sfl", "sflv1", "sflv2", "locsplitfed")


def standing(cells: dict[str, list[dict]], ours: str = OURS) -> str:
    """Where `ours` stands by final test accuracy: its rank, and the rivals it is ahead of, level with, behind."""
    mine = final_values(cells[ours], "test_accuracy")
    order = sorted(cells, key=lambda k: -np.mean(final_values(cells[k], "test_accuracy")))
    groups: dict[str, list[str]] = {"ahead of": [], "level with": [], "behind": [], "one seed, not judged:": []}
    words = {"ahead": "ahead of", "behind": "behind", "level": "level with", "one": "one seed, not judged:"}
    for label in order:
        if label != ours:
            word = verdict(mine, final_values(cells[label], "test_accuracy")).split(" ")[0]
            groups[words[word]].append(f"`{label}`")
    parts = [f"{k} {', '.join(v)}" for k, v in groups.items() if v]
    return f"{fmt(mine)} %, rank {order.index(ours) + 1} of {len(order)}; " + "; ".join(parts)


def time_to_target(runs: list[dict]) -> tuple[float, float, int]:
    """Mean simulated seconds and rounds to the target over the seeds that reached it, and how many did."""
    reached = [r["summary"]["time_to_target"] for r in runs if r["summary"]["time_to_target"]["reached"]]
    if not reached:
        return float("inf"), float("inf"), 0
    return (float(np.mean([t["simulated_seconds"] for t in reached])), float(np.mean([t["round"] for t in reached])),
            len(reached))


def speed_sentence(cells: dict[str, list[dict]], key: int, unit: str) -> str:
    """Rank by time to target (key 0: simulated seconds = latency; key 1: rounds = convergence speed); a cell that
    never reached the target ranks behind every cell that did."""
    times = {k: time_to_target(v)[key] for k, v in cells.items()}
    mine = times[OURS]
    faster = [f"`{k}`" for k in sorted(times, key=times.get) if times[k] < mine]
    seeds = f"{time_to_target(cells[OURS])[2]}/{len(cells[OURS])} seeds"
    if mine == float("inf"):
        return f"target not reached ({seeds}); reached by {', '.join(faster) if faster else 'none'}"
    return (f"{mine:.0f} {unit} to the target ({seeds}), rank {len(faster) + 1} of {len(times)}"
            + (f"; faster: {', '.join(faster)}" if faster else ""))


def holds(cells: dict[str, list[dict]]) -> str:
    """The claim holds in a cell set when LocFedMix-SL is ahead of every rival present, beyond one std."""
    mine = final_values(cells[OURS], "test_accuracy")
    rivals = [k for k in RIVALS if k in cells]
    if not rivals:
        return "not judged (none of its rivals ran)"
    if min(len(cells[k]) for k in [OURS, *rivals]) < 2:
        return "not judged (one seed)"
    beaten = [k for k in rivals if verdict(mine, final_values(cells[k], "test_accuracy")) == "ahead"]
    return "**holds**" if beaten == rivals else f"**does not hold** (ahead of {len(beaten)} of {len(rivals)})"


def scalability_lines(cells: dict[str, list[dict]]) -> list[str]:
    by_n: dict[int, dict[str, list[dict]]] = {}
    for label, runs in cells.items():
        algorithm, n = label.rsplit("-n", 1)
        by_n.setdefault(int(n), {})[algorithm] = runs
    return [f"  - N = {n}: {standing(group)} — claim {holds(group)}." for n, group in sorted(by_n.items())
            if OURS in group and len(group) > 1]


def findings(load) -> list[str]:
    """`load(experiment)` → that experiment's cells. One bullet per claim and setting that has LocFedMix-SL."""
    lines = ["## What holds and what does not", "",
             "The abstract claims improved scalability, convergence speed and latency over sequential SL, SplitFed "
             "and LocSplitFed. A claim *holds* in a setting only if `locfedmix`'s final test accuracy is ahead of "
             "every one of those rivals by more than one std over seeds; *level* means the mean ± std intervals "
             "overlap. Convergence speed is rounds to the target accuracy, latency is simulated seconds to it.", ""]
    for experiment, setting in (("convergence", "IID, N = 10"), ("noniid-convergence", "Dirichlet α = 0.3, N = 10"),
                                ("small-data", "N = 50 × 100 samples")):
        cells = load(experiment)
        if OURS not in cells:
            continue
        lines += [f"- **{setting}** ({experiment}): accuracy {standing(cells)} — claim {holds(cells)}.",
                  f"  - convergence: {speed_sentence(cells, 1, 'rounds')}.",
                  f"  - latency: {speed_sentence(cells, 0, 'simulated s')}."]
    for experiment in ("scalability", "noniid-scalability"):
        cells = load(experiment)
        if any(label.startswith(f"{OURS}-n") for label in cells):
            lines += [f"- **Scalability** ({experiment}), final test accuracy at each N:", *scalability_lines(cells)]
    return lines + [""]
