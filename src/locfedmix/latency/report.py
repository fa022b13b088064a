"""`locfedmix latency`: the per-step and per-round latency breakdown of every algorithm, without training.

A round is planned exactly as in training and every message is charged to the same ledger by the same code; only the
tensors are shape-only (PyTorch's meta device), so nothing is computed.
"""

import torch

from locfedmix.algorithms.catalog import ALGORITHMS
from locfedmix.algorithms.schedule import StepPlan
from locfedmix.config import AlgoSwitches, Config
from locfedmix.engines.assemble import build_federation
from locfedmix.engines.flow.round import train_round
from locfedmix.engines.flow.state import Federation
from locfedmix.engines.flow.step import record_step
from locfedmix.latency.ledger import Direction
from locfedmix.latency.model import PHASES


def dry_step(fed: Federation, plan: StepPlan) -> float:
    """Charge a planned step's messages to the ledger with shape-only tensors of the real sizes."""
    uploads = {i: torch.empty(len(idx), *fed.cut_shape, device="meta") for i, idx in plan.items()}
    labels = {i: torch.empty(len(idx), dtype=torch.int64, device="meta") for i, idx in plan.items()}
    record_step(fed.ledger, uploads, labels, uploads if fed.recipe.sends_gradient else {})
    return float("nan")


def round_breakdown(fed: Federation, client_indices: list, batch_size: int) -> dict[str, float]:
    """Simulated seconds of one round by phase, the round's total, the mean step total, and the round's bytes."""
    train_round(fed, client_indices, batch_size, 1, dry_step)
    phases = dict(fed.clock.phases)
    return {**phases, "round_total": fed.clock.seconds, "steps": fed.step,
            "step_total": (fed.clock.seconds - phases["sync"]) / max(fed.step, 1),
            "mb_up": fed.ledger.total(Direction.UP) / 1e6, "mb_down": fed.ledger.total(Direction.DOWN) / 1e6}


def latency_table(config: Config, input_shape: tuple[int, int, int], n_classes: int, client_indices: list) -> str:
    """One row per algorithm (the config's `algo` switches apply to its own algorithm only), as Markdown."""
    sizes = [len(i) for i in client_indices]
    header = ["algorithm", "steps/round", *(f"{p} s" for p in PHASES), "round s", "step s", "MB up", "MB down"]
    rows = []
    for name in ALGORITHMS:
        switches = config.algo if name == config.algorithm else AlgoSwitches()
        cfg = config.model_copy(update={"algorithm": name, "algo": switches})
        fed = build_federation(cfg, cfg.resolved_algorithm(), input_shape, n_classes, sizes)
        b = round_breakdown(fed, client_indices, config.batch_size)
        rows.append([name, str(b["steps"]), *(f"{b[p]:.3f}" for p in PHASES), f"{b['round_total']:.3f}",
                     f"{b['step_total']:.4f}", f"{b['mb_up']:.2f}", f"{b['mb_down']:.2f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if k else "---" for k in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
