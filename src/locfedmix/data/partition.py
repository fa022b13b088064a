"""Splitting a labelled training set among clients and holding out a validation set.

The partitioners and their parameters carry Flower Datasets' names (IidPartitioner, DirichletPartitioner,
PathologicalPartitioner, ShardPartitioner: `alpha`, `min_partition_size`, `num_classes_per_partition`,
`num_shards_per_partition`, `shard_size`), so that a federation described for Flower reads the same here; every draw
comes from the caller's generator, so the same seed gives the same split."""

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from locfedmix.errors import UserError

# Dirichlet draws are retried this often before giving up on min_partition_size.
MAX_DIRICHLET_TRIES = 100

# How 'pathological' picks each client's classes: "balanced" (ours, the default) deals them from reshuffled decks, so
# every class is used once n_clients x k >= n_classes and holders per class differ by at most one; the other three
# are Flower Datasets' modes ("random" is Flower's default: classes drawn per client, some may go unused).
ClassAssignment = Literal["balanced", "random", "deterministic", "first-deterministic"]
CLASS_ASSIGNMENT_MODES: tuple[str, ...] = ClassAssignment.__args__

# The [data] parameters each partitioner reads (the rest do not apply to it).
PARTITION_PARAMETERS: dict[str, tuple[str, ...]] = {
    "iid": (),
    "dirichlet": ("alpha", "min_partition_size", "partition_by"),
    "pathological": ("num_classes_per_partition", "class_assignment_mode", "partition_by"),
    "shards": ("num_shards_per_partition", "shard_size"),
}


@dataclass(frozen=True)
class _Options:
    samples_per_client: int | None
    alpha: float
    min_partition_size: int
    num_classes_per_partition: int
    class_assignment_mode: str
    num_shards_per_partition: int
    shard_size: int  # 0 = len(labels) // (n_clients * num_shards_per_partition), Flower's automatic size


Partitioner = Callable[[np.ndarray, int, np.random.Generator, _Options], list[np.ndarray]]


def _iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator, opts: _Options) -> list[np.ndarray]:
    pool = rng.permutation(len(labels))
    if opts.samples_per_client is not None:
        # Cut the pool first so that every client gets exactly the cap whenever the data suffice.
        pool = pool[: n_clients * opts.samples_per_client]
    return np.array_split(pool, n_clients)


def _dirichlet_once(labels: np.ndarray, n_clients: int, rng: np.random.Generator, alpha: float) -> list[np.ndarray]:
    shares: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(n_clients, alpha))
        cuts = np.round(np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            shares[client].append(chunk)
    return [np.concatenate(chunks) for chunks in shares]


def _dirichlet(labels: np.ndarray, n_clients: int, rng: np.random.Generator, opts: _Options) -> list[np.ndarray]:
    """Flower's DirichletPartitioner without self-balancing: per class, proportions ~ Dir(alpha), redrawn until every
    client holds min_partition_size samples."""
    if opts.min_partition_size * n_clients > len(labels):
        raise UserError(
            f"min_partition_size={opts.min_partition_size} is impossible for {n_clients} clients sharing "
            f"{len(labels)} samples; lower min_partition_size or use fewer clients"
        )
    for _ in range(MAX_DIRICHLET_TRIES):
        parts = _dirichlet_once(labels, n_clients, rng, opts.alpha)
        if min(len(part) for part in parts) >= opts.min_partition_size:
            return parts
    raise UserError(
        f"dirichlet partition with alpha={opts.alpha} left some client below "
        f"min_partition_size={opts.min_partition_size} in {MAX_DIRICHLET_TRIES} tries; "
        f"lower min_partition_size or raise alpha"
    )


def _deal_classes(classes: np.ndarray, n_clients: int, k: int, rng: np.random.Generator) -> list[list[int]]:
    # Deal classes like cards from reshuffled decks: the first deck covers every class before any repeats
    # (so all classes are used once n_clients * k >= n_classes) and holders per class stay balanced.
    deck: list[int] = []
    hands: list[list[int]] = []
    for _ in range(n_clients):
        hand: list[int] = []
        while len(hand) < k:
            if all(card in hand for card in deck):
                deck.extend(int(c) for c in rng.permutation(classes))
            card = next(card for card in deck if card not in hand)
            deck.remove(card)
            hand.append(card)
        hands.append(hand)
    return hands


def _assign_classes(mode: str, classes: np.ndarray, n_clients: int, k: int,
                    rng: np.random.Generator) -> list[list[int]]:
    """Each client's k classes; "random", "deterministic" and "first-deterministic" as Flower Datasets' modes."""
    n = len(classes)
    if mode == "balanced":
        return _deal_classes(classes, n_clients, k, rng)
    if mode == "deterministic":
        return [[int(classes[(client + i) % n]) for i in range(k)] for client in range(n_clients)]
    if mode == "random":
        return [[int(c) for c in rng.choice(classes, size=k, replace=False)] for _ in range(n_clients)]
    hands = [[int(classes[client % n])] for client in range(n_clients)]  # first-deterministic
    for hand in hands:
        while len(hand) < k:
            card = int(rng.choice(classes))
            if card not in hand:
                hand.append(card)
    return hands


def _pathological(labels: np.ndarray, n_clients: int, rng: np.random.Generator, opts: _Options) -> list[np.ndarray]:
    """Flower's PathologicalPartitioner: every client holds exactly num_classes_per_partition classes, and each class
    is split evenly among its holders; a class with fewer samples than holders is an error, as in Flower."""
    classes = np.unique(labels)
    k = opts.num_classes_per_partition
    if k > len(classes):
        raise UserError(f"num_classes_per_partition={k} exceeds the {len(classes)} classes in the labels; "
                        f"choose 1..{len(classes)}")
    if opts.class_assignment_mode not in CLASS_ASSIGNMENT_MODES:
        raise UserError(f"class_assignment_mode={opts.class_assignment_mode!r} is unknown; choose one of: "
                        f"{', '.join(CLASS_ASSIGNMENT_MODES)}")
    hands = _assign_classes(opts.class_assignment_mode, classes, n_clients, k, rng)
    shares: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for cls in classes:
        holders = [client for client, hand in enumerate(hands) if cls in hand]
        members = np.flatnonzero(labels == cls)
        if len(holders) > len(members):
            raise UserError(
                f"pathological: class {cls} has {len(members)} samples for the {len(holders)} clients holding it "
                f"(n_clients={n_clients}, num_classes_per_partition={k}), so some client would get none of it; "
                f"use fewer clients or fewer classes per client")
        if holders:  # an unused class draws nothing, so the other classes' splits stay as they were
            for client, chunk in zip(holders, np.array_split(rng.permutation(members), len(holders))):
                shares[client].append(chunk)
    return [np.concatenate(chunks) for chunks in shares]


def _shards(labels: np.ndarray, n_clients: int, rng: np.random.Generator, opts: _Options) -> list[np.ndarray]:
    """Flower's ShardPartitioner (McMahan et al. 2017): the samples sorted by label (shuffled within each class) are
    cut into shards of shard_size consecutive samples, and each client gets num_shards_per_partition random shards;
    samples beyond the last whole shard that is dealt stay unused."""
    n_shards = n_clients * opts.num_shards_per_partition
    size = opts.shard_size or len(labels) // n_shards
    if size < 1 or n_shards * size > len(labels):
        raise UserError(
            f"shards: {n_clients} clients x num_shards_per_partition={opts.num_shards_per_partition} x "
            f"shard_size={size} need {n_shards * max(size, 1)} samples but {len(labels)} are available; "
            f"lower shard_size or num_shards_per_partition"
        )
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = by_label[: (len(labels) // size) * size].reshape(-1, size)
    dealt = rng.permutation(len(shards))[:n_shards].reshape(n_clients, opts.num_shards_per_partition)
    return [shards[row].ravel() for row in dealt]


PARTITIONERS: dict[str, Partitioner] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "pathological": _pathological,
    "shards": _shards,
}


def _check_arguments(name: str, n_samples: int, n_clients: int, opts: _Options) -> None:
    if name not in PARTITIONERS:
        raise UserError(f"unknown partitioner '{name}'; choose one of: {', '.join(sorted(PARTITIONERS))}")
    if n_clients < 1:
        raise UserError(f"n_clients={n_clients} is invalid; it must be at least 1")
    if n_clients > n_samples:
        raise UserError(f"n_clients={n_clients} exceeds the {n_samples} training samples available")
    if opts.samples_per_client is not None and opts.samples_per_client < 1:
        raise UserError(f"samples_per_client={opts.samples_per_client} is invalid; it must be at least 1 (or unset)")
    if not opts.alpha > 0:
        raise UserError(f"alpha={opts.alpha} is invalid; the Dirichlet concentration must be > 0")
    if opts.shard_size < 0:
        raise UserError(f"shard_size={opts.shard_size} is invalid; it must be at least 0 (0 = automatic)")
    for key in ("min_partition_size", "num_classes_per_partition", "num_shards_per_partition"):
        if getattr(opts, key) < 1:
            raise UserError(f"{key}={getattr(opts, key)} is invalid; it must be at least 1")


def _cap(part: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    if cap is None or len(part) <= cap:
        return part
    return rng.choice(part, size=cap, replace=False)


def partition(
    name: str,
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    *,
    samples_per_client: int | None = None,
    alpha: float = 0.5,
    min_partition_size: int = 1,
    num_classes_per_partition: int = 2,
    class_assignment_mode: ClassAssignment = "balanced",
    num_shards_per_partition: int = 2,
    shard_size: int = 0,
) -> list[np.ndarray]:
    """One sorted, disjoint int64 index array (into `labels`) per client; deterministic given `rng`.

    `alpha` and `min_partition_size` drive 'dirichlet' (the minimum is checked before the cap);
    `num_classes_per_partition` and `class_assignment_mode` drive 'pathological'; `num_shards_per_partition` and
    `shard_size` drive 'shards'; `samples_per_client` caps every client by random subsampling. A split that would
    leave a client without samples is a UserError naming the parameters, never an empty client."""
    labels = np.asarray(labels)
    opts = _Options(samples_per_client, alpha, min_partition_size, num_classes_per_partition,
                    class_assignment_mode, num_shards_per_partition, shard_size)
    _check_arguments(name, len(labels), n_clients, opts)
    parts = PARTITIONERS[name](labels, n_clients, rng, opts)
    empty = sum(len(part) == 0 for part in parts)
    if empty:
        used = ", ".join(f"{key}={getattr(opts, key)!r}" for key in PARTITION_PARAMETERS.get(name, ())
                         if key != "partition_by")
        raise UserError(f"partition '{name}' ({used or 'no parameters'}) leaves {empty} of n_clients={n_clients} "
                        f"clients without samples; use fewer clients")
    return [np.sort(_cap(part, samples_per_client, rng)).astype(np.int64) for part in parts]


def split_validation(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out: (train_indices, val_indices), sorted and disjoint, together covering every index;
    each class sends round(fraction * its count) samples to validation."""
    if not 0 <= fraction < 1:
        raise UserError(f"validation fraction={fraction} is invalid; it must be in [0, 1)")
    labels = np.asarray(labels)
    val = [
        rng.permutation(members)[: round(fraction * len(members))]
        for members in (np.flatnonzero(labels == cls) for cls in np.unique(labels))
    ]
    val_idx = np.sort(np.concatenate([np.empty(0, np.int64), *val])).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val_idx)
    return train_idx, val_idx


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> list[list[int]]:
    """Per client, the number of its samples in each class 0..n_classes-1."""
    labels = np.asarray(labels)
    return [np.bincount(labels[part], minlength=n_classes).tolist() for part in parts]
