"""The speed targets of issue #5 read off a throughput table: where `psl`, `sfl` and `locfedmix` land, and, for each
row, the ratio its algorithm would reach if all of its work ran at the FLOP rate `psl` achieves in the same cell.

That ceiling separates the two reasons an algorithm can fall short of plain training's samples/s: work it does
beyond plain training (LocFedMix-SL's decoder and SmashMix's mixed samples), and a simulator that runs slower per
FLOP. A target above the ceiling asks the algorithm's own extra layers to run faster per FLOP than the CNN's layers
do under `psl`.
"""

RATIO_TARGETS = [(100, 16, 1.0), (1000, 1, 0.5)]  # clients, samples per client, least ratio to centralized training
MEMORY_TARGET = (1000, 16, 8 * 1024)  # clients, samples per client, most peak memory in MiB (8 GiB)
TARGETED = ["psl", "sfl", "locfedmix"]


def ratio_cell(row: dict) -> str:
    """The median ratio, with the range over the repeats when there were several."""
    spread = f" ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})" if row.get("repeats", 1) > 1 else ""
    return f"{row['ratio']:.2f}{spread}"


def rows_of(rows: list[dict], algorithm: str, n_clients: int, per_client: int) -> list[dict]:
    return [r for r in rows if (r["algorithm"], r["n_clients"], r["per_client"]) == (algorithm, n_clients, per_client)]


def ceiling_at_psl_rate(rows: list[dict], row: dict) -> float | None:
    """psl's work ratio (its FLOP rate relative to centralized training) in the same cell, on the same pool and
    activation budget, divided by `row`'s work per sample; None when the table has no such psl row."""
    psl = [r for r in rows_of(rows, "psl", row["n_clients"], row["per_client"])
           if r["engine"] == row["engine"] and r.get("recomputed") == row.get("recomputed")]
    return psl[0]["work_ratio"] / row["work_per_sample"] if psl else None


def _verdict(met: bool) -> str:
    return "yes" if met else "**no**"


def _pool(row: dict) -> str:
    """The row's client pool, and the share of clients recomputing their forward when any do (engines/backends/memory.py)."""
    return row["engine"] + (f", {row['recomputed']:.0%} recomputed" if row.get("recomputed") else "")


def targets_markdown(rows: list[dict]) -> str:
    """A section for THROUGHPUT.md: one line per targeted algorithm and target cell present in `rows`."""
    lines = ["## The targets", "",
             "Issue #5 asks for at least 1.0× centralized samples/s at 100 clients × 16 samples, at least 0.5× at "
             "1,000 × 1, and at most 8 GiB peak at 1,000 × 16. *Ceiling at psl's FLOP rate*: the ratio the row's "
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
                             f"| {ratio_cell(row)} | {_verdict(row['ratio'] >= least)} | "
                             f"{'' if ceiling is None else f'{ceiling:.2f}'} |")
    n_clients, per_client, most = MEMORY_TARGET
    for algorithm in TARGETED:
        for row in rows_of(rows, algorithm, n_clients, per_client):
            lines.append(f"| peak ≤ {most / 1024:.0f} GiB at {n_clients:,} × {per_client} | {algorithm} | "
                         f"{_pool(row)} | {row['peak_memory_mb']:,.0f} MiB | "
                         f"{_verdict(row['peak_memory_mb'] <= most)} | |")
    return "\n".join(lines) + "\n"
