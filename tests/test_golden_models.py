"""Today's numbers stay put: the built-in models, which now go through the same splitting path as a user's model,
give byte-for-byte the metrics.csv that the code before that path existed wrote (tests/golden/, written at b2727cd
by `run(golden_config(...), out)` for each case below)."""

from pathlib import Path

import pytest

from locfedmix import run
from locfedmix.config import Config, validate

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "cnn-psl": {"model": "cnn", "algorithm": "psl"},
    "resnet-locfedmix": {"model": "resnet", "algorithm": "locfedmix"},
    "alexnet-locsplitfed": {"model": "alexnet", "algorithm": "locsplitfed"},
    "cnn-sl": {"model": "cnn", "algorithm": "sl"},
    "resnet-sfl-stacked": {"model": "resnet", "algorithm": "sflv1", "batch_size": 2, "engine": {"kind": "vectorized"}},
}


def golden_config(case: str) -> Config:
    tree = {"dataset": "synthetic", "n_clients": 3, "rounds": 2, "batch_size": 8, "seed": 5, "samples_per_client": 40,
            "checkpoint_every": 0, "data": {"normalize": False}, **CASES[case]}  # pixels as at b2727cd
    return validate(tree)


@pytest.mark.parametrize("case", sorted(CASES))
def test_builtin_models_give_the_committed_metrics(case, tmp_path, one_thread):
    run(golden_config(case), tmp_path / case, progress=False)
    assert (tmp_path / case / "metrics.csv").read_text() == (GOLDEN / f"{case}.csv").read_text()
