"""Datasets as tensors and their partitioning among clients."""

from locfedmix.data.datasets import DATASETS, Dataset, load_dataset
from locfedmix.data.partition import PARTITIONERS, label_histograms, partition, split_validation

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "Dataset",
    "label_histograms",
    "load_dataset",
    "partition",
    "split_validation",
]
