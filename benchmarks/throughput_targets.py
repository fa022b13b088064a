"""The speed targets read off a throughput table: where `psl`, `sfl` and `locfedmix` land against centralized training
(issues #5 and #29), `locfedmix`'s FLOP rate against `psl`'s in the same cell (#29), the ratio each row's algorithm
would reach if all of its work ran at `psl`'s FLOP rate, and the ratios per number of clients side by side.

That ceiling separates the two reasons an algorithm can fall short of plain training's samples/s: work it does
beyond plain training (LocFedMix-SL's decoder and SmashMix's mixed samples), and a simulator that runs slower per
FLOP. A target above the ceiling asks the algorithm's own extra layers to run faster per FLOP than the CNN's layers
do under `psl`.
"""

import math

RATIO_TARGETS = [(100, 16, 1.0), (1000, 1, 0.5)]  # clients, samples per client, least ratio to centralized training
MEMORY_TARGET = (1000, 16, 8 * 1024)  # clients, samples per client, most peak memory in MiB (8 GiB)
TARGETED = ["psl", "sfl", "locfedmix"]
FLOP_RATE_TARGET = 0.9  # least share of psl's FLOP rate (work ratio) that locfedmix reaches in the same cell


def ratio_cell(row: dict) -> str:
    """The median ratio, with the range over the repeats when there were several."""
    spread = f" ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})" if row.get("repeats", 1) > 1 else ""
    return f"{row['ratio']:.2f}{spread}"


def rows_of(rows: list[dict], algorithm: str, n_clients: int, per_client: int) -> list[dict]:
    return [r for r in rows if (r["algorithm"], r["n_clients"], r["per_client"]) == (algorithm, n_clients, per_client)]


def psl_twin(rows: list[dict], row: dict) -> dict | None:
    """psl's row in the same cell, on the same pool and activation budget; None when the table has none."""
    psl = [r for r in rows_of(rows, "psl", row["n_clients"], row["per_client"])
           if r["engine"] == row["engine"] and r.get("recomputed") == row.get("recomputed")]
    return psl[0] if psl else None


def ceiling_at_psl_rate(rows: list[dict], row: dict) -> float | None:
    """psl's work ratio (its FLOP rate relative to centralized training) in the same cell, on the same pool and
    activation budget, divided by `row`'s work per sample; None when the table has no such psl row."""
    psl = psl_twin(rows, row)
    return psl["work_ratio"] / row["work_per_sample"] if psl else None


def _verdict(met: bool) -> str:
    return "yes" if met else "**no**"


def _at_least(value: float, least: float) -> str:
    """Met or not; a miss that two decimals would round up to the target shows three, cut rather than rounded."""
    close = value < least <= round(value, 2)
    return _verdict(value >= least) + (f" ({math.floor(value * 1000) / 1000:.3f})" if close else "")


def _pool(row: dict) -> str:
    """The row's client pool, and the share of clients recomputing their forward when any do
    (engines/backends/memory.py)."""
    return row["engine"] + (f", {row['recomputed']:.0%} recomputed" if row.get("recomputed") else "")


def targets_markdown(rows: list[dict]) -> str:
    """A section for THROUGHPUT.md: one line per targeted algorithm and target cell present in `rows`."""
    lines = ["## The targets", "",
             "Issues #5 and #29 ask for at least 1.0× centralized samples/s at 100 clients × 16 samples, at least "
             "0.5× at 1,000 × 1 (for `psl` and `sfl`; `locfedmix`'s rows are shown against the same numbers), and "
             "at most 8 GiB peak at 1,000 × 16. *Ceiling at psl's FLOP rate*: the ratio the row's "
             "algorithm would reach if all of its work (work × plain training's) ran at the FLOP rate `psl` "
             "achieves in the same cell, psl's work ratio ÷ work. A target above that ceiling needs the "
             "algorithm's own extra layers to run faster per FLOP than the CNN's layers do under `psl`.", "",
             "| target | algorithm | engine | measured | met | ceiling at psl's FLOP rate |",
             "|---|---|---|---:|---|---:|"]
    for n_clients, per_client, least in RATIO_TARGETS:
        for algorithm in TARGETED:
            for row in rows_of(rows, algorithm, n_clients, per_client):
                ceiling = ceiling_at_psl_rate(rows, row)
                lines.append(f"| ratio ≥ {least:.1f} at {n_clients:,} × {per_client} | {algorithm} | {_pool(row)} "
                             f"| {ratio_cell(row)} | {_at_least(row['ratio'], least)} | "
                             f"{'' if ceiling is None else f'{ceiling:.2f}'} |")
    n_clients, per_client, most = MEMORY_TARGET
    for algorithm in TARGETED:
        for row in rows_of(rows, algorithm, n_clients, per_client):
            lines.append(f"| peak ≤ {most / 1024:.0f} GiB at {n_clients:,} × {per_client} | {algorithm} | "
                         f"{_pool(row)} | {row['peak_memory_mb']:,.0f} MiB | "
                         f"{_verdict(row['peak_memory_mb'] <= most)} | |")
    return "\n".join(lines) + "\n\n" + flop_rate_markdown(rows) + "\n" + scaling_markdown(rows)


def flop_rate_markdown(rows: list[dict]) -> str:
    """locfedmix's work ratio over psl's in every cell where both ran on the same pool, met or not against #29."""
    lines = [f"## `locfedmix`'s FLOP rate against `psl`'s (target ≥ {FLOP_RATE_TARGET})", "",
             "Work ratio of `locfedmix` ÷ work ratio of `psl` in the same cell and pool: the share of `psl`'s FLOP "
             "rate that `locfedmix` reaches with its decoder and SmashMix counted as work. Each work ratio is "
             "itself a same-process ratio to centralized training, so the machine's speed cancels.", "",
             "| clients × samples | engine | locfedmix work ratio | psl work ratio | share | met |",
             "|---|---|---:|---:|---:|---|"]
    for row in sorted((r for r in rows if r["algorithm"] == "locfedmix"), key=lambda r: (-r["per_client"],
                                                                                      r["n_clients"])):
        psl = psl_twin(rows, row)
        if psl is not None:
            share = row["work_ratio"] / psl["work_ratio"]
            lines.append(f"| {row['n_clients']:,} × {row['per_client']} | {_pool(row)} | {row['work_ratio']:.2f} | "
                         f"{psl['work_ratio']:.2f} | {share:.2f} | {_at_least(share, FLOP_RATE_TARGET)} |")
    return "\n".join(lines) + "\n"


def scaling_markdown(rows: list[dict]) -> str:
    """The targeted algorithms' ratios, one line per number of clients and samples per client: the cost of N."""
    present = [a for a in TARGETED if any(r["algorithm"] == a for r in rows)]
    lines = ["## Scaling with the number of clients", "",
             "Ratio to centralized training (median, range over the repeats) per number of clients N, at each "
             "number of samples per client: a step of N clients × k samples trains N·k samples.", "",
             "| samples/client | N | " + " | ".join(present) + " |", "|---:|---:|" + "---:|" * len(present)]
    for k in sorted({r["per_client"] for r in rows}, reverse=True):
        for n in sorted({r["n_clients"] for r in rows if r["per_client"] == k}):
            cells = [", ".join(f"{ratio_cell(r)}" for r in rows_of(rows, a, n, k)) for a in present]
            lines.append(f"| {k} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
