"""What the runs of a report compare: each run's setting read from its config.toml, the part all runs share (said
once) and the keys in which they differ (a column of the table and a part of each curve's legend)."""

from typing import Any

from locfedmix.config_files import read_toml
from locfedmix.data.partition import PARTITION_PARAMETERS
from locfedmix.report.runs import Run

# Settings that place or pace a run without changing what it computes: never a difference worth a legend.
PLACEMENT = ("engine.", "log.", "checkpoint_every", "eval.batch_size", "data.dir", "data.partition_by")
PARAMETERS = {key for keys in PARTITION_PARAMETERS.values() for key in keys}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def setting(run: Run) -> dict[str, str]:
    """The run's config as flat `key: value` text, without the placement keys and without the partitioner
    parameters its partitioner does not read; a run without config.toml shows its algorithm alone."""
    path = run.path / "config.toml"
    tree = read_toml(path) if path.is_file() else {"algorithm": run.algorithm}
    flat = _flat(tree)
    used = PARTITION_PARAMETERS.get(str(flat.get("partition", "iid")), ())
    return {key: str(value) for key, value in flat.items() if not key.startswith(PLACEMENT)
            and not (key.startswith("data.") and key[5:] in PARAMETERS and key[5:] not in used)}


def differing(settings: list[dict[str, str]]) -> list[str]:
    """The keys, other than the algorithm, whose value is not the same in every run (a key a run lacks counts)."""
    keys = list(dict.fromkeys(key for s in settings for key in s))
    return [key for key in keys if key != "algorithm" and len({s.get(key, "-") for s in settings}) > 1]


def headline(settings: list[dict[str, str]], varying: list[str]) -> str:
    """One sentence of what every run shares, e.g. `fashion-mnist, model cnn, 10 clients × 1000 samples, partition
    dirichlet (alpha=0.3, min_partition_size=1), 5 rounds`."""
    shared = {key: value for key, value in settings[0].items() if key not in varying}
    words = [shared.get("dataset"), shared.get("model") and f"model {shared['model']}"]
    if "n_clients" in shared:
        cap = shared.get("samples_per_client", "0")
        words.append(f"{shared['n_clients']} clients" + (f" × {cap} samples" if cap != "0" else ""))
    if "partition" in shared:
        params = ", ".join(f"{key[5:]}={value}" for key, value in shared.items()
                           if key.startswith("data.") and key[5:] in PARAMETERS)
        words.append(f"partition {shared['partition']}" + (f" ({params})" if params else ""))
    words.append(shared.get("rounds") and f"{shared['rounds']} rounds")
    return ", ".join(word for word in words if word)


def legend(run: Run, run_setting: dict[str, str], varying: list[str]) -> str:
    """The run's algorithm and, where the runs differ in more than the algorithm, its value of each such key."""
    values = ", ".join(f"{key}={run_setting.get(key, '-')}" for key in varying)
    return f"{run.algorithm} ({values})" if values else run.algorithm
