"""A user's data as a Dataset: NumPy or tensor arrays, any map-style torch Dataset whose labels can be read (a
`targets` attribute, a `labels` array, or one pass), torchvision's ImageFolder (by its duck type: `.targets`,
`.samples`, `.classes`, `__getitem__`; torchvision itself is not needed) and Hugging Face `datasets.Dataset`.

Labels are read first and alone, so partitioners never need the inputs; inputs are read item by item only to be
held as tensors (data/streaming.py reads them per step instead when they exceed the memory budget)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from locfedmix.data.datasets import Dataset
from locfedmix.errors import UserError

LABEL_COLUMNS = ("label", "labels", "fine_label", "target")
INPUT_COLUMNS = ("image", "img", "pixel_values", "input_ids", "x", "features")


@dataclass(frozen=True)
class SourceDataset(Dataset):
    """A Dataset whose inputs may be of any per-sample shape (token ids, features), not only images."""

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(self.x_train.shape[1:])


def is_arrays(source: Any) -> bool:
    """(inputs, labels) as NumPy arrays or tensors."""
    return isinstance(source, tuple) and len(source) == 2 and all(
        isinstance(a, (np.ndarray, torch.Tensor)) for a in source)


def is_huggingface(source: Any) -> bool:
    return type(source).__module__.startswith("datasets.") and hasattr(source, "features")


def splits(source: Any) -> tuple[Any, Any | None]:
    """(train, test) of what a user hands over: a {"train", "test"} mapping (a Hugging Face DatasetDict), a
    (train, test) pair, or one source (test None)."""
    if isinstance(source, Mapping):
        missing = {"train", "test"} - set(source)
        if missing:
            raise UserError(f"the dataset mapping has splits {sorted(source)}; it needs 'train' and 'test'")
        return source["train"], source["test"]
    if isinstance(source, (tuple, list)) and len(source) == 2 and not is_arrays(source):
        return source[0], source[1]
    return source, None


def _columns(source: Any) -> tuple[str, str]:
    """(input column, label column) of a Hugging Face dataset."""
    names = list(source.features)
    label = next((c for c in LABEL_COLUMNS if c in names), None)
    inputs = next((c for c in INPUT_COLUMNS if c in names), None)
    if label is None:
        raise UserError(f"the Hugging Face dataset has no readable labels: no column named one of "
                        f"{', '.join(LABEL_COLUMNS)} (columns: {', '.join(names)})")
    if inputs is None:
        raise UserError(f"the Hugging Face dataset has no input column named one of {', '.join(INPUT_COLUMNS)} "
                        f"(columns: {', '.join(names)})")
    return inputs, label


def read_labels(source: Any) -> np.ndarray:
    """The labels alone, as int64: arrays' second entry, a Hugging Face label column, `targets` / `labels`, or, for
    any other map-style dataset, the second entry of every item (one pass)."""
    if is_arrays(source):
        labels = source[1]
    elif is_huggingface(source):
        labels = source[_columns(source)[1]]
    elif hasattr(source, "targets") or hasattr(source, "labels"):
        labels = getattr(source, "targets", None)
        labels = getattr(source, "labels") if labels is None else labels
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        labels = [_label_of(source[i], i) for i in range(len(source))]
    else:
        raise UserError(f"a {type(source).__name__} is not a dataset: hand over (inputs, labels) arrays, a map-style "
                        f"torch Dataset, an ImageFolder or a Hugging Face Dataset")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"the labels of the {type(source).__name__} are not readable: found {labels.dtype} of shape "
                        f"{labels.shape}, need one integer class per sample")
    return labels.astype(np.int64)


def _label_of(item: Any, index: int) -> int:
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not _is_integer(item[1]):
        raise UserError(f"the dataset has no readable labels: item {index} is not an (input, label) pair and there "
                        f"is no `targets` or `labels` attribute")
    return int(item[1])


def _is_integer(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_input(value: Any) -> torch.Tensor:
    """One sample as the model reads it: images (PIL, uint8 H×W, H×W×C or C×H×W) as C×H×W floats in [0, 1]; float
    arrays as they are; integer arrays (token ids) as int64."""
    if hasattr(value, "getbands"):  # a PIL image
        value = np.asarray(value)
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype == np.uint8:
        channels_last = array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4)
        image = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0) if channels_last else array
        return torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32).div_(255.0)
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def read_inputs(source: Any) -> torch.Tensor:
    """Every input, stacked; samples must share one shape."""
    if is_arrays(source):
        first = source[0]
        array = first.cpu().numpy() if isinstance(first, torch.Tensor) else first
        samples = [as_input(a) for a in array] if array.dtype == np.uint8 else None
        return torch.stack(samples) if samples else as_input(array)
    if is_huggingface(source):
        return stack_samples([as_input(v) for v in source[_columns(source)[0]]])
    return stack_samples([as_input(input_of(source, i)) for i in range(len(source))])


def input_of(source: Any, index: int) -> Any:
    """Sample `index`'s input, as the source holds it."""
    if is_arrays(source):
        return source[0][index]
    if is_huggingface(source):
        return source[index][_columns(source)[0]]
    return source[index][0]


def stack_samples(samples: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) > 1:
        first = tuple(samples[0].shape)
        odd = next(i for i, s in enumerate(samples) if tuple(s.shape) != first)
        raise UserError(f"inputs of different sizes: sample 0 is {'x'.join(map(str, first))}, sample {odd} is "
                        f"{'x'.join(map(str, samples[odd].shape))}; resize them to one size first")
    return torch.stack(samples)


def n_classes_of(source: Any, labels: np.ndarray) -> int:
    """What the data declare (an ImageFolder's `classes`, a Hugging Face ClassLabel), else the largest label + 1."""
    if is_huggingface(source):
        feature = source.features[_columns(source)[1]]
        if hasattr(feature, "num_classes"):
            return int(feature.num_classes)
    classes = getattr(source, "classes", None)
    if classes is not None and not is_arrays(source):
        return len(classes)
    return int(labels.max()) + 1 if len(labels) else 0


def check_labels(labels: np.ndarray, n_classes: int, split: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise UserError(f"{split} label {labels[bad[0]]} (sample {bad[0]}) is outside the {n_classes} classes "
                        f"0..{n_classes - 1}")
