"""Reader for the CIFAR-10 python-pickle batches through an unpickler that only builds dicts, lists and arrays."""

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from locfedmix.errors import UserError

try:
    from numpy._core import multiarray, numeric
except ImportError:  # numpy < 2 keeps these under numpy.core
    from numpy.core import multiarray, numeric

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_FOLDER = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)

def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); allow only that codec.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec '{encoding}' is not allowed")
    return text.encode("latin1")


# Everything a CIFAR batch (pickled by numpy 1.x or 2.x, any protocol) needs; any other global is refused,
# so a tampered file cannot run code. Names map straight to the objects, never through an import.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return _ALLOWED[(module, name)]


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            # The official batches were pickled by Python 2: their str keys must stay bytes.
            return _RestrictedUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted pickle is the file's fault
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"CIFAR-10 batch {path} is not a valid batch pickle: {reason}") from exc


def _field(batch: dict, key: str) -> Any:
    # Batches re-pickled under Python 3 have str keys instead of bytes.
    return batch.get(key.encode(), batch.get(key))


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file."""
    batch = _unpickle(path)
    data = _field(batch, "data") if isinstance(batch, dict) else None
    labels = _field(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"CIFAR-10 batch {path} lacks a 'data' array of uint8 with shape (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"CIFAR-10 batch {path} has a 'labels' entry that is not a list of integers") from exc
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise UserError(f"CIFAR-10 batch {path} needs {len(data)} 'labels' in 0..9, found shape {labels.shape}")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def batch_folder(base: Path) -> Path | None:
    """`base` itself or its `cifar-10-batches-py/` child, whichever holds all six batches."""
    for folder in (base, base / BATCH_FOLDER):
        if all((folder / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return folder
    return None


def read_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a folder holding the five training batches and the test batch."""
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = read_batch(folder / TEST_BATCH)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test
