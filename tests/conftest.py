"""Shared fixtures: tiny federations built straight from a Config, on generated tensors."""

import os
from contextlib import contextmanager

import pytest
import torch

from locfedmix.config import validate
from locfedmix.engines.assemble import build_federation

# A command-line run picks its thread count from the machine's load unless OMP_NUM_THREADS is set (engine.threads =
# 0); the runs a test compares, in this process and in the ones it starts, use the count torch started with.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

INPUT_SHAPE = (1, 8, 8)
N_CLASSES = 10


def make_config(algorithm: str, **overrides):
    tree = {"algorithm": algorithm, "dataset": "synthetic", "n_clients": 1, "rounds": 1, "batch_size": 4, "seed": 3}
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            tree.setdefault(section, {})[name] = value
        else:
            tree[key] = value
    return validate(tree)


def make_federation(algorithm: str, sizes=None, **overrides):
    config = make_config(algorithm, **overrides)
    sizes = sizes or [1] * config.n_clients
    return build_federation(config, config.resolved_algorithm(), INPUT_SHAPE, N_CLASSES, sizes)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, *INPUT_SHAPE, generator=g)
    y = torch.randint(0, N_CLASSES, (48,), generator=g)
    return x, y


@pytest.fixture
def one_thread():
    """The golden files (tests/golden/) were written with one intra-op thread (OMP_NUM_THREADS=1); a reduction split
    over more threads rounds differently, and importing some packages (dcor, which test_privacy.py imports) raises
    the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def interrupted_in_round(monkeypatch, round_index: int):
    """The run inside the block is interrupted (KeyboardInterrupt) when it starts round `round_index`, after the
    checkpoints of the rounds before; the block must end that way. The real round is put back afterwards."""
    from locfedmix import rounds

    real = rounds.train_round

    def interrupted(fed, indices, batch_size, r, *args, **kwargs):
        if r == round_index:
            raise KeyboardInterrupt
        return real(fed, indices, batch_size, r, *args, **kwargs)

    monkeypatch.setattr(rounds, "train_round", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(rounds, "train_round", real)
