"""Models and datasets an installed package registers (entry-point groups locfedmix.models, locfedmix.datasets) are
names a TOML config can use; the package is a tiny *.dist-info folder put on sys.path, no pip."""

import csv
import sys

import pytest

from locfedmix import UserError, run, validate
from locfedmix.cli import main

PLUGIN = '''
import numpy as np
import torch
from torch import nn

from locfedmix import Model


def mlp(shape, n_classes):
    return [nn.Flatten(), nn.Linear(int(np.prod(shape)), 16), nn.ReLU(), nn.Linear(16, n_classes)]


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        x = x.flatten(1)
        return self.b(self.a(x) + x)


tiny = Model(mlp, cut=2)
skipped = Model(lambda shape, n: Skip(), cut="a")
missing = Model(lambda shape, n: Skip(), cut="c")


def arrays(seed, n, labels=3):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 2, 3), dtype=np.float32), np.arange(n) % labels


def blobs(data_dir, seed):
    return {"train": arrays(0, 30), "test": arrays(1, 9)}


class Declared(torch.utils.data.Dataset):
    classes = ["a", "b", "c"]

    def __init__(self, labels, sizes):
        self.targets, self.sizes = labels, sizes

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.zeros(1, self.sizes[i], 3), self.targets[i]


def bad_label(data_dir, seed):
    return Declared([0, 1, 7], [2, 2, 2]), Declared([0], [2])


def mixed_sizes(data_dir, seed):
    return Declared([0, 1, 2], [2, 2, 4]), Declared([0], [2])


class Unlabelled(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.zeros(1, 2, 3)


def unlabelled(data_dir, seed):
    return Unlabelled(), Unlabelled()
'''

ENTRY_POINTS = """[locfedmix.models]
tiny-mlp = tinyplugin:tiny
skip-cut = tinyplugin:skipped
missing-cut = tinyplugin:missing

[locfedmix.datasets]
blobs = tinyplugin:blobs
bad-label = tinyplugin:bad_label
mixed-sizes = tinyplugin:mixed_sizes
unlabelled = tinyplugin:unlabelled
"""

CONFIG = """
algorithm = "psl"
dataset = "blobs"
model = "tiny-mlp"
n_clients = 3
rounds = 2
batch_size = 4
seed = 4
checkpoint_every = 0
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "tinyplugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "tinyplugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("tinyplugin", None)


def test_registered_names_run_from_a_toml_config_as_the_objects_do_from_python(plugin, tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    assert main(["run", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    import tinyplugin

    config = validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": 3, "rounds": 2, "batch_size": 4,
                       "seed": 4, "checkpoint_every": 0})
    run(config, tmp_path / "py", progress=False, model=tinyplugin.tiny, dataset=tinyplugin.blobs(None, 0))
    cli_rows = list(csv.DictReader((tmp_path / "cli" / "metrics.csv").open()))
    py_rows = list(csv.DictReader((tmp_path / "py" / "metrics.csv").open()))
    assert len(cli_rows) == 2 and [r["test_loss"] for r in cli_rows] == [r["test_loss"] for r in py_rows]


def test_validating_a_config_lists_registered_names_without_importing_the_package(plugin):
    with pytest.raises(UserError, match=r"unknown model 'tiny'; choose one of: alexnet, cnn, resnet, missing-cut, "
                                        r"skip-cut, tiny-mlp"):
        validate({"algorithm": "psl", "dataset": "blobs", "model": "tiny", "n_clients": 1, "rounds": 1,
                  "batch_size": 1})
    validate({"algorithm": "psl", "dataset": "blobs", "model": "tiny-mlp", "n_clients": 1, "rounds": 1,
              "batch_size": 1})
    assert "tinyplugin" not in sys.modules


@pytest.mark.parametrize("override, fragment", [
    ("model='missing-cut'", "cut='c' is not a submodule of Skip; nearby: "),
    ("model='skip-cut'", "besides its output, the value 'flatten' crosses it (a skip connection)"),
    ("dataset='bad-label'", "train label 7 (sample 2) is outside the 3 classes 0..2"),
    ("dataset='mixed-sizes'", "inputs of different sizes: sample 0 is 1x2x3, sample 2 is 1x4x3"),
    ("dataset='unlabelled'", "no readable labels"),
    ("cut=1", "model 'tiny-mlp' brings its own cut; leave cut = 0"),
])
def test_bad_registered_models_and_data_exit_2_with_one_line(plugin, tmp_path, capsys, override, fragment):
    (tmp_path / "c.toml").write_text(CONFIG)
    code = main(["run", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"), "--no-progress",
                 "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
