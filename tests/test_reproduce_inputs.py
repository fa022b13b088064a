"""benchmarks/reproduce.py keeps a grid of standardized inputs apart from the unstandardized one committed before
data.normalize existed, and the committed runs still read as what they were: unstandardized."""

import sys
from pathlib import Path

import pytest

from locfedmix.config import validate
from locfedmix.config_files import read_toml

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import reproduce  # noqa: E402

COMMITTED = [ROOT / "benchmarks/results/reproduction/full-unstandardized",
             ROOT / "benchmarks/results/reproduction/quick-unstandardized",
             ROOT / "benchmarks/results/resnet/full-unstandardized"]


def test_the_grid_folder_says_whether_its_inputs_were_standardized():
    assert reproduce.grid_suffix([]) == ""
    assert reproduce.grid_suffix(["data.normalize=false"]) == "-unstandardized"
    on = reproduce.cell_config({"algorithm": "sfl"}, 0, 20, [])
    off = reproduce.cell_config({"algorithm": "sfl"}, 0, 20, ["data.normalize=false"])
    assert on.data.normalize and not off.data.normalize
    assert reproduce.identity(on) != reproduce.identity(off)  # never taken for one another's finished run


@pytest.mark.parametrize("grid", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_run_reads_as_unstandardized_and_regenerates_under_its_own_identity(grid):
    configs = sorted(grid.glob("*/*/seed*/config.toml"))
    assert configs
    for path in configs:
        assert validate(read_toml(path)).data.normalize is False, path


def test_the_unstandardized_grid_finds_its_committed_runs_and_the_standardized_one_does_not():
    """Asked again with data.normalize=false, the full grid's sfl cell is the committed run (nothing re-runs);
    the default (standardized) cell matches none of them."""
    grid = COMMITTED[0]
    finished = reproduce.finished_runs(grid)
    off = reproduce.cell_config({"algorithm": "sfl"}, 0, 20, ["data.normalize=false"])
    assert finished[reproduce.identity(off)] == grid / "convergence" / "sfl" / "seed0"
    assert reproduce.identity(reproduce.cell_config({"algorithm": "sfl"}, 0, 20, [])) not in finished
