"""Experiments: a config file, its --set overrides, and an optional [sweep] table expanded into one Config per cell."""

import itertools
import math
from pathlib import Path
from typing import Any

from locfedmix.config import Config, validate
from locfedmix.config_files import apply_overrides, read_toml
from locfedmix.errors import UserError

# Far more runs than anyone trains from one file; the cap keeps a config from making the CLI validate billions of
# cells before the first run starts.
MAX_SWEEP_CELLS = 10_000


def _set(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *sections, key = dotted.split(".")
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    node = tree
    for part in sections:
        node[part] = dict(node.get(part, {}))
        node = node[part]
    node[key] = value
    return tree


def expand_sweep(tree: dict[str, Any]) -> list[tuple[str, Config]]:
    """Every combination of the [sweep] lists, labelled by the value (one key) or `key=value-...` (several);
    without a sweep, one unlabelled cell."""
    tree = dict(tree)
    sweep = tree.pop("sweep", {})
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise UserError("[sweep] must map config keys to non-empty lists of values")
    if not sweep:
        return [("", validate(tree))]
    n_cells = math.prod(len(values) for values in sweep.values())
    if n_cells > MAX_SWEEP_CELLS:
        raise UserError(f"[sweep] expands to {n_cells} runs; at most {MAX_SWEEP_CELLS} are allowed per config")
    cells = []
    for values in itertools.product(*sweep.values()):
        cell = tree
        for key, value in zip(sweep, values):
            cell = _set(cell, key, value)
        label = str(values[0]) if len(sweep) == 1 else "-".join(
            f"{key.split('.')[-1]}={value}" for key, value in zip(sweep, values))
        cells.append((label, validate(cell)))
    return cells


def load_experiment(path: str | Path, overrides: list[str] = ()) -> list[tuple[str, Config]]:
    return expand_sweep(apply_overrides(read_toml(path), list(overrides)))
