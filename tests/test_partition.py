"""Tests for client partitioning (Flower Datasets' partitioner names), the validation hold-out and label histograms."""

import numpy as np
import pytest

from locfedmix.data.partition import PARTITIONERS, label_histograms, partition, split_validation
from locfedmix.errors import UserError


def make_labels(n: int = 5000, n_classes: int = 10, seed: int = 0) -> np.ndarray:
    # Mildly imbalanced classes, so that proportional checks are not trivially uniform.
    weights = np.linspace(1.0, 2.0, n_classes)
    return np.random.default_rng(seed).choice(n_classes, size=n, p=weights / weights.sum())


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def mean_entropy(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> float:
    entropies = []
    for counts in label_histograms(labels, parts, n_classes):
        p = np.asarray(counts, dtype=float) / sum(counts)
        entropies.append(-np.sum(p[p > 0] * np.log(p[p > 0])))
    return float(np.mean(entropies))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_every_index_once_sorted_int64(name: str) -> None:
    labels = make_labels()
    parts = partition(name, labels, 20, rng(), alpha=0.3)
    assert len(parts) == 20
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) for part in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_same_partition(name: str) -> None:
    labels = make_labels()
    first = partition(name, labels, 8, rng(5), samples_per_client=100)
    again = partition(name, labels, 8, rng(5), samples_per_client=100)
    other = partition(name, labels, 8, rng(6), samples_per_client=100)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_is_balanced_and_follows_global_proportions() -> None:
    labels = make_labels(n=20000)
    parts = partition("iid", labels, 10, rng())
    assert {len(part) for part in parts} == {2000}
    global_share = np.bincount(labels, minlength=10) / len(labels)
    for counts in label_histograms(labels, parts, 10):
        assert np.max(np.abs(np.asarray(counts) / 2000 - global_share)) < 0.03


def test_iid_uneven_sizes_differ_by_at_most_one() -> None:
    sizes = [len(part) for part in partition("iid", make_labels(n=1003), 10, rng())]
    assert sum(sizes) == 1003 and max(sizes) - min(sizes) <= 1


def test_iid_cap_gives_exactly_cap_each() -> None:
    parts = partition("iid", make_labels(), 10, rng(), samples_per_client=300)
    assert [len(part) for part in parts] == [300] * 10
    assert len(np.unique(np.concatenate(parts))) == 3000


def test_iid_cap_with_too_little_data_shares_everything() -> None:
    parts = partition("iid", make_labels(n=500), 10, rng(), samples_per_client=100)
    assert [len(part) for part in parts] == [50] * 10


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    labels = make_labels()
    skewed = mean_entropy(labels, partition("dirichlet", labels, 10, rng(), alpha=0.1), 10)
    even = mean_entropy(labels, partition("dirichlet", labels, 10, rng(), alpha=100.0), 10)
    assert even > 0.95 * np.log(10)
    assert skewed < even - 0.7


def test_dirichlet_respects_min_partition_size() -> None:
    labels = make_labels(n=2000)
    # About 40% of raw draws leave some client below 15 samples, so this exercises the resampling.
    for seed in range(5):
        parts = partition("dirichlet", labels, 20, rng(seed), alpha=0.2, min_partition_size=15)
        assert min(len(part) for part in parts) >= 15


def test_dirichlet_gives_up_with_advice() -> None:
    with pytest.raises(UserError, match="lower min_partition_size or raise alpha") as info:
        partition("dirichlet", make_labels(n=1000), 10, rng(), alpha=0.01, min_partition_size=90)
    assert "alpha=0.01" in str(info.value) and "min_partition_size=90" in str(info.value)


def test_dirichlet_cap_subsamples_each_uncapped_part() -> None:
    labels = make_labels()
    uncapped = partition("dirichlet", labels, 10, rng(3), alpha=0.5)
    capped = partition("dirichlet", labels, 10, rng(3), alpha=0.5, samples_per_client=200)
    for small, full in zip(capped, uncapped):
        assert len(small) == min(200, len(full)) and np.all(np.isin(small, full))


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_pathological_gives_exactly_k_classes_and_uses_all(k: int) -> None:
    labels = make_labels()
    parts = partition("pathological", labels, 20, rng(), num_classes_per_partition=k)
    held = [set(np.unique(labels[part]).tolist()) for part in parts]
    assert all(len(classes) == k for classes in held)
    assert set().union(*held) == set(range(10))


def test_pathological_splits_each_class_evenly_among_holders() -> None:
    labels = make_labels()
    parts = partition("pathological", labels, 15, rng(), num_classes_per_partition=2)
    histograms = np.asarray(label_histograms(labels, parts, 10))
    for column in histograms.T:
        shares = column[column > 0]
        assert shares.max() - shares.min() <= 1


def test_shards_deal_whole_single_class_shards() -> None:
    """10 classes x 100 samples, 10 clients x 2 shards: shards of 50 never straddle two classes, so every client holds
    exactly 100 samples made of one or two classes in blocks of 50, and all the data are used."""
    labels = np.repeat(np.arange(10), 100)
    parts = partition("shards", labels, 10, rng(), num_shards_per_partition=2)
    histograms = np.asarray(label_histograms(labels, parts, 10))
    assert histograms.sum(axis=1).tolist() == [100] * 10
    assert np.all(histograms % 50 == 0) and np.all((histograms > 0).sum(axis=1) <= 2)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))


def test_shards_with_a_size_use_that_size_and_leave_the_rest() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition("shards", labels, 4, rng(), num_shards_per_partition=3, shard_size=25)
    assert [len(part) for part in parts] == [75] * 4
    assert len(np.unique(np.concatenate(parts))) == 300
    for part in parts:  # a shard of 25 inside a class of 100 holds one class: at most 3 classes per client
        assert len(np.unique(labels[part])) <= 3


def test_label_histograms_match_counting() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 4])
    parts = [np.array([0, 1, 6]), np.array([2, 3, 4, 5])]
    assert label_histograms(labels, parts, 5) == [[1, 1, 0, 0, 1], [0, 1, 3, 0, 0]]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_split_validation_is_stratified_and_disjoint(fraction: float) -> None:
    labels = make_labels(n=1797)
    train, val = split_validation(labels, fraction, rng())
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    val_counts = np.bincount(labels[val], minlength=10)
    assert np.all(np.abs(val_counts - fraction * np.bincount(labels)) <= 1)
    if fraction == 0.0:
        assert len(val) == 0


def test_split_validation_is_deterministic() -> None:
    labels = make_labels()
    first, again = split_validation(labels, 0.2, rng(9)), split_validation(labels, 0.2, rng(9))
    assert np.array_equal(first[1], again[1])


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_split_validation_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(UserError, match=f"fraction={fraction}"):
        split_validation(make_labels(n=100), fraction, rng())


@pytest.mark.parametrize(
    "name, n_clients, kwargs, bad",
    [
        ("random", 5, {}, "'random'"),
        ("iid", 0, {}, "n_clients=0"),
        ("iid", -3, {}, "n_clients=-3"),
        ("dirichlet", 5, {"alpha": 0.0}, "alpha=0.0"),
        ("dirichlet", 5, {"alpha": -1.0}, "alpha=-1.0"),
        ("dirichlet", 5, {"min_partition_size": -1}, "min_partition_size=-1"),
        ("dirichlet", 10, {"min_partition_size": 200}, "min_partition_size=200"),
        ("iid", 5, {"samples_per_client": 0}, "samples_per_client=0"),
        ("pathological", 5, {"num_classes_per_partition": 0}, "num_classes_per_partition=0"),
        ("pathological", 5, {"num_classes_per_partition": 11}, "num_classes_per_partition=11"),
        ("shards", 5, {"num_shards_per_partition": 0}, "num_shards_per_partition=0"),
        ("shards", 5, {"shard_size": -1}, "shard_size=-1"),
        ("shards", 5, {"shard_size": 200}, "shard_size=200"),
        ("shards", 1000, {"num_shards_per_partition": 2}, "shard_size=0"),
    ],
)
def test_partition_errors_name_the_bad_value(name: str, n_clients: int, kwargs: dict, bad: str) -> None:
    with pytest.raises(UserError) as info:
        partition(name, make_labels(n=1797), n_clients, rng(), **kwargs)
    assert bad in str(info.value) and "\n" not in str(info.value)


def test_unknown_partitioner_lists_choices() -> None:
    with pytest.raises(UserError, match="choose one of: dirichlet, iid, pathological, shards"):
        partition("random", make_labels(n=100), 2, rng())


def test_too_many_clients_message() -> None:
    with pytest.raises(UserError) as info:
        partition("iid", np.zeros(1797, dtype=np.int64), 5000, rng())
    assert str(info.value) == "n_clients=5000 exceeds the 1797 training samples available"


def federated_histograms(**tree) -> np.ndarray:
    from locfedmix.api import federate
    from locfedmix.config import validate

    config = validate({"algorithm": "psl", "dataset": "digits", "n_clients": 5, "rounds": 1, "batch_size": 8, **tree})
    return np.asarray(federate(config).histograms())


def test_config_names_reach_the_partitioners() -> None:
    """The [data] keys under Flower's names drive the run's partition: one class per client for pathological, two
    whole shards for shards, and a much lower label entropy for a small Dirichlet alpha than for a large one."""
    pathological = federated_histograms(partition="pathological", data={"num_classes_per_partition": 1})
    assert ((pathological > 0).sum(axis=1) == 1).all()
    shards = federated_histograms(partition="shards", data={"num_shards_per_partition": 2, "shard_size": 30})
    assert shards.sum(axis=1).tolist() == [60] * 5

    def entropy(histograms: np.ndarray) -> float:
        p = histograms / histograms.sum(axis=1, keepdims=True)
        return float(-np.nansum(p * np.log(np.where(p > 0, p, 1)), axis=1).mean())

    skewed = federated_histograms(partition="dirichlet", data={"alpha": 0.05, "partition_by": "label"})
    even = federated_histograms(partition="dirichlet", data={"alpha": 100.0, "min_partition_size": 50})
    assert entropy(skewed) < entropy(even) - 1 and even.sum(axis=1).min() >= 50


@pytest.mark.parametrize("old, new", [("dirichlet_alpha", "data.alpha"), ("min_samples", "data.min_partition_size"),
                                      ("classes_per_client", "data.num_classes_per_partition")])
def test_renamed_keys_name_their_flower_name(old: str, new: str) -> None:
    from locfedmix.config import validate

    with pytest.raises(UserError, match=f"config key 'data.{old}' is now '{new}"):
        validate({"algorithm": "psl", "dataset": "digits", "n_clients": 2, "rounds": 1, "batch_size": 8,
                  "data": {old: 1}})


def test_partition_by_accepts_only_the_label_column() -> None:
    from locfedmix.config import validate

    with pytest.raises(UserError, match="data.partition_by='image'"):
        validate({"algorithm": "psl", "dataset": "digits", "n_clients": 2, "rounds": 1, "batch_size": 8,
                  "data": {"partition_by": "image"}})
