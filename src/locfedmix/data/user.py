"""The user's data (or a registered dataset) as the run's Dataset: held as tensors when the inputs fit the memory
budget (`data.memory_mb`), as today's built-in datasets are, and read per step (data/streaming.py) when not."""

import logging
import math
from typing import Any

import numpy as np
import torch

from locfedmix import registry
from locfedmix.data.datasets import DATASETS, Dataset, load_dataset
from locfedmix.data.sources import (
    SourceDataset, as_input, check_labels, input_of, n_classes_of, read_inputs, read_labels, splits,
)
from locfedmix.data.streaming import StreamedDataset, estimated_bytes, streamed
from locfedmix.errors import UserError

log = logging.getLogger("locfedmix")


def to_dataset(source: Any, name: str, memory_mb: float = math.inf) -> SourceDataset:
    """The user's train and test data; `source` as data/sources.py `splits` reads it (a test split is required)."""
    train, test = splits(source)
    if test is None:
        raise UserError("the dataset needs a test split: hand over {'train': ..., 'test': ...} or (train, test)")
    y_train, y_test = read_labels(train), read_labels(test)
    n_classes = n_classes_of(train, np.concatenate([y_train, y_test]))
    check_labels(y_train, n_classes, "train")
    check_labels(y_test, n_classes, "test")
    if not len(y_train) or not len(y_test):
        raise UserError(f"the dataset has {len(y_train)} train and {len(y_test)} test samples; both need some")
    first = as_input(input_of(train, 0))
    size = estimated_bytes(len(y_train) + len(y_test), first)
    if size > memory_mb * 2**20:
        log.info("data: %s inputs (%.1f MB) exceed data.memory_mb=%g; read per step", name, size / 2**20, memory_mb)
        return streamed(train, test, name, (y_train, y_test), n_classes, tuple(first.shape))
    x_train, x_test = read_inputs(train), read_inputs(test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"train inputs are {tuple(x_train.shape[1:])} but test inputs {tuple(x_test.shape[1:])}")
    log.info("data: %s inputs (%.1f MB) held in memory", name, size / 2**20)
    return SourceDataset(name, x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test), n_classes)


def data_path(dataset: Dataset) -> str:
    """How a run reads its inputs, for summary.json: "memory" (tensors) or "streaming" (per step)."""
    return "streaming" if isinstance(dataset, StreamedDataset) else "memory"


def dataset_names() -> list[str]:
    """Names a config may give as `dataset`: built in, then registered (entry-point group locfedmix.datasets)."""
    return sorted(DATASETS) + [n for n in registry.registered_names(registry.DATASETS) if n not in DATASETS]


def load_named(name: str, data_dir: str | None, seed: int, memory_mb: float = math.inf) -> Dataset:
    """A built-in dataset, or a registered one: the entry point's object is a source or a function
    (data_dir, seed) -> source."""
    if name in DATASETS:
        return load_dataset(name, data_dir, seed)
    found = registry.load(registry.DATASETS, name)
    return to_dataset(found(data_dir, seed) if callable(found) else found, name, memory_mb)
