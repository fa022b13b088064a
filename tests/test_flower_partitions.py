"""`pathological` against Flower Datasets' PathologicalPartitioner on the same labels: for each of Flower's class
assignment modes, the same seed gives the same clients × classes histogram, so a federation described for Flower
reads the same here (the differences of the other partitioners are listed in docs/configuration.md)."""

import warnings

import numpy as np
import pytest
from datasets import Dataset
from flwr_datasets.partitioner import PathologicalPartitioner

from locfedmix.data.partition import label_histograms, partition

LABELS = np.repeat(np.arange(10), 100)


def flower_histograms(n: int, k: int, mode: str, seed: int) -> np.ndarray:
    partitioner = PathologicalPartitioner(num_partitions=n, partition_by="label", num_classes_per_partition=k,
                                          class_assignment_mode=mode, seed=seed)
    partitioner.dataset = Dataset.from_dict({"label": LABELS})
    with warnings.catch_warnings():  # Flower warns about the classes its random modes leave unused
        warnings.simplefilter("ignore")
        return np.array([np.bincount(partitioner.load_partition(i)["label"], minlength=10) for i in range(n)])


def our_histograms(n: int, k: int, mode: str, seed: int) -> np.ndarray:
    parts = partition("pathological", LABELS, n, np.random.default_rng(seed), num_classes_per_partition=k,
                      class_assignment_mode=mode)
    return np.array(label_histograms(LABELS, parts, 10))


@pytest.mark.parametrize("mode", ["random", "deterministic", "first-deterministic"])
@pytest.mark.parametrize("n, k", [(10, 2), (13, 3)])
def test_flower_modes_give_flowers_partition(mode, n, k):
    for seed in range(20):
        np.testing.assert_array_equal(our_histograms(n, k, mode, seed), flower_histograms(n, k, mode, seed))


def test_random_leaves_classes_unused_as_flower_does_and_balanced_uses_all():
    """10 clients × 2 classes drawn per client: a class goes unused with probability 0.8**10 ≈ 0.107, so about one
    class in 20 seeds × 10 is unused under "random" (ours and Flower's alike); "balanced", our default, uses all."""
    unused = {mode: [int((our_histograms(10, 2, mode, seed).sum(0) == 0).sum()) for seed in range(20)]
              for mode in ("random", "balanced")}
    flower = [int((flower_histograms(10, 2, "random", seed).sum(0) == 0).sum()) for seed in range(20)]
    assert unused["random"] == flower
    assert 0.3 < np.mean(flower) < 2.0  # 1.07 expected
    assert unused["balanced"] == [0] * 20
