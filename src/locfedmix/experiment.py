"""Experiments: a config file, its --set overrides, and an optional [sweep] table expanded into one Config per cell.

An explicit --set of a key that the sweep also varies wins: the sweep drops that key. A setting that does not apply
(an [algo] switch the algorithm lacks, a partitioner parameter the partitioner does not read) is an error in a
single run; in a sweep it is left out of the cells it does not apply to, each of which says so in its note, and a
cell that becomes the same run as an earlier one is skipped."""

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locfedmix.algorithms.catalog import ALGORITHMS, resolve_algorithm
from locfedmix.config import Config, DataConfig, validate
from locfedmix.config_files import apply_overrides, parse_override, read_toml
from locfedmix.data.partition import PARTITION_PARAMETERS
from locfedmix.errors import UserError

# Far more runs than anyone trains from one file; the cap keeps a config from making the CLI validate billions of
# cells before the first run starts.
MAX_SWEEP_CELLS = 10_000
_PARAMETERS = {key for keys in PARTITION_PARAMETERS.values() for key in keys}


@dataclass(frozen=True)
class Cell:
    """One run of an experiment: its label (the sub-folder; '' without a sweep), its config, and what it left out."""

    label: str
    config: Config
    note: str = ""


def _set(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *sections, key = dotted.split(".")
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    node = tree
    for part in sections:
        node[part] = dict(node.get(part, {}))
        node = node[part]
    node[key] = value
    return tree


def _drop(tree: dict[str, Any], dotted: str) -> dict[str, Any]:
    section, _, key = dotted.partition(".")
    return {**tree, section: {k: v for k, v in tree[section].items() if k != key}}


def _switches_not_applying(cell: dict[str, Any]) -> list[str]:
    """The cell's [algo] switches that its algorithm does not have, as dotted keys."""
    algo, name = cell.get("algo", {}), cell.get("algorithm")
    if not isinstance(name, str) or name not in ALGORITHMS or not isinstance(algo, dict):
        return []  # validation names what is wrong with them
    keys = []
    for switch, value in algo.items():
        try:
            resolve_algorithm(name, {switch: value})
        except UserError:
            keys.append(f"algo.{switch}")
    return keys


def _parameters_not_applying(cell: dict[str, Any], swept: list[str]) -> list[str]:
    """The cell's [data] partitioner parameters that its partitioner does not read, as dotted keys: the swept ones,
    and the others where set to anything but their default (a run's own config.toml lists every one at its
    default)."""
    partition, data = cell.get("partition", "iid"), cell.get("data", {})
    if not isinstance(partition, str) or partition not in PARTITION_PARAMETERS or not isinstance(data, dict):
        return []  # validation names what is wrong with them
    used = PARTITION_PARAMETERS[partition]
    fields = DataConfig.model_fields
    return [f"data.{key}" for key, value in data.items() if key in _PARAMETERS and key not in used
            and key in fields and (f"data.{key}" in swept or value != fields[key].default)]


def _refuse_unread_parameters(tree: dict[str, Any]) -> None:
    """One run with a partitioner parameter that its partitioner does not read: the same answer as an [algo] switch
    that its algorithm does not have."""
    unread = _parameters_not_applying(tree, [])
    if unread:
        readers = {key: [name for name, keys in PARTITION_PARAMETERS.items() if key[5:] in keys] for key in unread}
        named = "; ".join(f"{key}={tree['data'][key[5:]]!r} is read only by partition "
                          f"{' or '.join(repr(r) for r in readers[key])}" for key in unread)
        raise UserError(f"{named}, not by partition {tree.get('partition', 'iid')!r}; remove it or choose "
                        f"that partition")


def _label(sweep: dict[str, list[Any]], values: tuple[Any, ...], dropped: list[str]) -> str:
    kept = [(key, value) for key, value in zip(sweep, values) if key not in dropped]
    if len(sweep) == 1:
        return str(values[0])
    return "-".join(f"{key.split('.')[-1]}={value}" for key, value in kept)


def plan_sweep(tree: dict[str, Any]) -> list[Cell]:
    """Every combination of the [sweep] lists, labelled by the value (one key) or `key=value-...` (several), with
    the settings that do not apply to a cell left out of it (and of its label); without a sweep, one unlabelled
    cell."""
    tree = dict(tree)
    sweep = tree.pop("sweep", {})
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise UserError("[sweep] must map config keys to non-empty lists of values")
    if not sweep:
        _refuse_unread_parameters(tree)
        return [Cell("", validate(tree))]
    n_cells = math.prod(len(values) for values in sweep.values())
    if n_cells > MAX_SWEEP_CELLS:
        raise UserError(f"[sweep] expands to {n_cells} runs; at most {MAX_SWEEP_CELLS} are allowed per config")
    cells: list[Cell] = []
    for values in itertools.product(*sweep.values()):
        cell = tree
        for key, value in zip(sweep, values):
            cell = _set(cell, key, value)
        dropped = _switches_not_applying(cell) + _parameters_not_applying(cell, list(sweep))
        for key in dropped:
            cell = _drop(cell, key)
        label, config = _label(sweep, values, dropped), validate(cell)
        if any(earlier.config == config for earlier in cells):
            continue
        note = f"{', '.join(dropped)} left out (not used by {config.algorithm}/{config.partition})" if dropped else ""
        cells.append(Cell(label, config, note))
    return cells


def sweep_yields_to(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The tree without the [sweep] keys that an override sets (or whose section an override replaces whole)."""
    sweep = tree.get("sweep")
    if not isinstance(sweep, dict):
        return tree
    set_keys = [".".join(parse_override(text)[0]) for text in overrides]
    set_keys = [key for key in set_keys if key != "sweep" and not key.startswith("sweep.")]
    kept = {key: values for key, values in sweep.items()
            if not any(key == s or key.startswith(s + ".") for s in set_keys)}
    return {**tree, "sweep": kept}


def plan_experiment(path: str | Path, overrides: list[str] = ()) -> list[Cell]:
    """The cells of a config file with its --set overrides; an override beats the sweep on the key it sets."""
    overrides = list(overrides)
    return plan_sweep(apply_overrides(sweep_yields_to(read_toml(path), overrides), overrides))


def load_experiment(path: str | Path, overrides: list[str] = ()) -> list[tuple[str, Config]]:
    return [(cell.label, cell.config) for cell in plan_experiment(path, overrides)]
