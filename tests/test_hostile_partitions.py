"""Every partitioner either satisfies its parameters or says why: a split that would leave a client without samples
is one UserError naming the parameters (exit 2 on the command line), never an empty client that fails later."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locfedmix.data.partition import CLASS_ASSIGNMENT_MODES, PARTITIONERS, partition
from locfedmix.errors import UserError

# digits keeps 1,295 training samples after its test and validation splits, 125 to 132 per class: 1,290 clients
# with one class each put 129 holders on every class, more than the smaller classes have samples.
TOO_MANY_HOLDERS = """
algorithm = "psl"
dataset = "digits"
partition = "pathological"
n_clients = 1290
rounds = 1
batch_size = 8
[data]
num_classes_per_partition = 1
"""


def test_the_cli_refuses_a_pathological_split_with_an_empty_client(tmp_path):
    """Before: a ZeroDivisionError traceback from the memory planner of a client with no samples."""
    (tmp_path / "c.toml").write_text(TOO_MANY_HOLDERS)
    result = subprocess.run([sys.executable, "-m", "locfedmix", "run", "--config", str(tmp_path / "c.toml"),
                             "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "n_clients=1290" in result.stderr and "num_classes_per_partition=1" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", CLASS_ASSIGNMENT_MODES)
def test_a_class_smaller_than_its_holders_is_named(mode):
    """Class 0 has one sample; every mode gives it to many of the forty one-class clients (the other modes to 20,
    random to all but a 41 / 2**40 chance)."""
    labels = np.array([0] + [1] * 100)
    with pytest.raises(UserError) as info:
        partition("pathological", labels, 40, np.random.default_rng(1), num_classes_per_partition=1,
                  class_assignment_mode=mode)
    assert "class 0 has 1 samples for the" in str(info.value) and "n_clients=40" in str(info.value)


def test_dirichlet_refuses_a_minimum_of_zero():
    """min_partition_size=0 would let the draw give a client nothing (here 50 clients share 100 samples)."""
    with pytest.raises(UserError, match="min_partition_size=0 is invalid; it must be at least 1"):
        partition("dirichlet", np.repeat(np.arange(10), 10), 50, np.random.default_rng(0), alpha=0.1,
                  min_partition_size=0)


def test_a_registered_partitioner_that_leaves_a_client_empty_is_refused(monkeypatch):
    monkeypatch.setitem(PARTITIONERS, "lopsided", lambda labels, n, rng, opts: [np.arange(len(labels))]
                        + [np.empty(0, np.int64)] * (n - 1))
    with pytest.raises(UserError, match=r"partition 'lopsided' \(no parameters\) leaves 2 of n_clients=3 clients "
                                        r"without samples"):
        partition("lopsided", np.arange(30) % 3, 3, np.random.default_rng(0))


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=6), n_clients=st.integers(1, 20),
       k=st.integers(1, 6), mode=st.sampled_from(CLASS_ASSIGNMENT_MODES), seed=st.integers(0, 2**16),
       name=st.sampled_from(sorted(PARTITIONERS)))
def test_every_partitioner_keeps_its_promise_or_says_why(counts, n_clients, k, mode, seed, name):
    """On skewed little label sets: either one UserError, or every client holds samples, `pathological` clients
    hold exactly k classes, and no sample goes to two clients."""
    labels = np.repeat(np.arange(len(counts)), counts)
    try:
        parts = partition(name, labels, n_clients, np.random.default_rng(seed), num_classes_per_partition=k,
                          class_assignment_mode=mode, min_partition_size=1, shard_size=0)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert all(len(part) > 0 for part in parts)
    every = np.concatenate(parts)
    assert len(np.unique(every)) == len(every)
    if name == "pathological":
        assert all(len(np.unique(labels[part])) == k for part in parts)
