"""Golden runs: small configs whose metrics.csv must stay the same text, digit for digit, while the engines are
reshaped (issue #30). Each case is a config tree; its expected metrics.csv lives in tests/golden/<case>.csv, written
by the code these tests guard. A case that changes on purpose is rewritten with `python tests/test_golden.py CASE`."""

import sys
from pathlib import Path

import pytest
import torch

from locfedmix.api import run
from locfedmix.config import validate

GOLDEN = Path(__file__).parent / "golden"
# Written before input standardization existed: pixels as they were (data.normalize=false).
SMALL = {"dataset": "digits", "n_clients": 4, "samples_per_client": 24, "rounds": 2, "batch_size": 8, "seed": 7,
         "checkpoint_every": 0, "data": {"normalize": False}}
# One cell of the committed convergence grid (benchmarks/results/reproduction/full/convergence), cut to one round of
# 20 samples per client.
CONVERGENCE = {"dataset": "fashion-mnist", "n_clients": 10, "samples_per_client": 20, "rounds": 1, "batch_size": 32,
               "seed": 0, "checkpoint_every": 0, "data": {"normalize": False}}
CATALOG = ("sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr", "mix2sfl")  # as of issue #30
FAULTS = {"participation": {"fraction": 0.75, "dropout": 0.3, "stragglers": 0.25, "deadline_s": 0.05}}

CASES: dict[str, dict] = {
    **{f"{name}-loop": {**SMALL, "algorithm": name, "engine": {"kind": "loop"}} for name in CATALOG},
    **{f"{name}-stacked": {**SMALL, "algorithm": name, "engine": {"kind": "vectorized"}}
       for name in ("psl", "sflv1", "locfedmix", "locsplitfed", "mix2sfl")},
    "locfedmix-recomputed": {**SMALL, "algorithm": "locfedmix", "engine": {"kind": "vectorized",
                                                                           "activation_memory_mb": 0.01}},
    "sl-relay-faults": {**SMALL, "algorithm": "sl", **FAULTS},
    "sfl-faults": {**SMALL, "algorithm": "sfl", **FAULTS},
    "psl-stacked-faults": {**SMALL, "algorithm": "psl", "engine": {"kind": "vectorized"}, **FAULTS},
    "psl-defended": {**SMALL, "algorithm": "psl", "privacy": {"clip": 1.0, "noise_multiplier": 0.5, "nopeek": 0.1}},
    "sfl-every-steps": {**SMALL, "algorithm": "sfl", "algo": {"sync_every": 2}},
    "convergence-locfedmix": {**CONVERGENCE, "algorithm": "locfedmix"},
    "convergence-sl": {**CONVERGENCE, "algorithm": "sl"},
}


def metrics(case: str, out: Path) -> str:
    run(validate(CASES[case]), out, progress=False)
    return (out / "metrics.csv").read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_unchanged(case: str, tmp_path: Path, one_thread: None) -> None:
    assert metrics(case, tmp_path / case) == (GOLDEN / f"{case}.csv").read_text()


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)  # as the test runs them (conftest's one_thread)
    for name in sys.argv[1:] or sorted(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            (GOLDEN / f"{name}.csv").write_text(metrics(name, Path(tmp) / name))
