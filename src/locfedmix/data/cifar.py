"""Reader for the CIFAR-10 python-pickle batches, which may come from anywhere and so are unpickled as data only.

A batch is read in three guarded steps: it must be a regular file, read up to a size cap counted on the bytes read; its opcode stream is walked without
building anything (pickletools reads every declared length from the file itself, so no opcode can make the unpickler
allocate more than the file holds); then it is unpickled with only the globals a batch needs, each replaced by a
stand-in that accepts exactly the arguments numpy writes and builds the arrays itself with np.frombuffer. numpy never
sees a pickled dtype or array state (a dtype state can set flags that make numpy treat bytes as object pointers)."""

import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from locfedmix.errors import DataError
from locfedmix.files import read_bounded

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_FOLDER = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)
# Twice an official batch (31 MB: 10000 images of 3072 bytes, labels and file names).
MAX_BATCH_BYTES = 2**26
INTEGER_CODES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})
BYTE_ORDERS = frozenset({"|", "<", ">", "="})
# numpy's state of a plain dtype after (version 3, byte order): no subarray, names or fields, default sizes, no flags.
PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)


def _text(value: Any) -> Any:
    """A Python 2 pickle's str arrives as bytes (encoding='bytes'); compare it as text."""
    return value.decode("latin1") if isinstance(value, bytes) else value


class _Dtype:
    """Stands in for numpy.dtype(code, align, copy): plain integer types only, with only the state numpy writes."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(_text(code), str) or _text(code) not in INTEGER_CODES:
            allowed = ", ".join(sorted(INTEGER_CODES))
            raise pickle.UnpicklingError(f"dtype {code!r:.40} is not allowed; allowed: {allowed}")
        self.dtype = np.dtype(_text(code))

    def __setstate__(self, state: Any) -> None:
        if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3 or _text(state[1]) not in BYTE_ORDERS
                or state[2:] != PLAIN_DTYPE_STATE):
            raise pickle.UnpicklingError("dtype state is not that of a plain integer type")
        self.dtype = self.dtype.newbyteorder(_text(state[1]))


def _array(data: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """The array numpy would rebuild (also numpy's _frombuffer, protocol 5), made only from bytes that are exactly
    shape x itemsize long."""
    if not isinstance(dtype, _Dtype) or not isinstance(data, (bytes, bytearray)) or _text(order) not in ("C", "F"):
        raise pickle.UnpicklingError("an array needs bytes, a plain integer dtype and order 'C' or 'F'")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise pickle.UnpicklingError("an array shape must be a tuple of non-negative integers")
    if len(data) != math.prod(shape) * dtype.dtype.itemsize:
        raise pickle.UnpicklingError(f"array of shape {shape} does not match its {len(data)} bytes")
    return np.frombuffer(data, dtype.dtype).reshape(shape, order=_text(order))


class _Reconstructed:
    """Stands in for numpy's _reconstruct(ndarray, (0,), b'b'): the empty array that BUILD then fills."""

    def __init__(self, subtype: Any, shape: Any, typecode: Any) -> None:
        if subtype is not _NDARRAY or shape != (0,):
            raise pickle.UnpicklingError("_reconstruct is allowed only as numpy writes it: (ndarray, (0,), b'b')")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1 or not isinstance(state[3], bool):
            raise pickle.UnpicklingError("array state is not (1, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, data = state
        self.array = _array(data, dtype, shape, "F" if fortran else "C")


_NDARRAY = object()  # numpy.ndarray as a pickle names it; only ever an argument of _reconstruct, never called

# Every global a CIFAR batch (pickled by Python 2 or 3, numpy 1.x or 2.x, any protocol) names, besides
# _codecs.encode (see _BatchUnpickler); any other global is refused.
_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _Reconstructed,
    ("numpy._core.multiarray", "_reconstruct"): _Reconstructed,
    ("numpy.core.numeric", "_frombuffer"): _array,
    ("numpy._core.numeric", "_frombuffer"): _array,
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, raw: bytes) -> None:
        super().__init__(io.BytesIO(raw), encoding="bytes")  # a Python 2 batch's str keys must stay bytes
        self.encode_budget = len(raw)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        if (module, name) not in _GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return _GLOBALS[(module, name)]

    def _latin1_encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        """Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"). Only that codec, and no
        more bytes in all than the file holds: one memoized text encoded again and again would be a memory bomb."""
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"_codecs.encode is allowed only for text to latin1, not {encoding!r:.20}")
        self.encode_budget -= len(text)
        if self.encode_budget < 0:
            raise pickle.UnpicklingError("it encodes more bytes than the file holds")
        return text.encode("latin1")


def _unpickle(path: Path) -> Any:
    try:
        raw = read_bounded(path, MAX_BATCH_BYTES, "CIFAR-10 batch", DataError,
                           too_large="CIFAR-10 batch {path} is {size} bytes; a batch is at most {limit}")
        for _ in pickletools.genops(io.BytesIO(raw)):  # checks every declared length against the bytes present
            pass
        return _BatchUnpickler(raw).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted pickle is the file's fault
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"CIFAR-10 batch {path} is not a valid batch pickle: {reason}") from exc


def _field(batch: dict, key: str) -> Any:
    # Batches re-pickled under Python 3 have str keys instead of bytes.
    value = batch.get(key.encode(), batch.get(key))
    return value.array if isinstance(value, _Reconstructed) else value


def _labels(value: Any, n: int, path: Path) -> np.ndarray:
    """`n` integers in 0..9 (a list, or a 1-D integer array), checked before anything is allocated for them."""
    if isinstance(value, np.ndarray) and value.shape == (n,) and value.dtype.kind in "iu":
        value = value.tolist()
    if not isinstance(value, list) or len(value) != n or not all(type(v) is int and 0 <= v <= 9 for v in value):
        raise DataError(f"CIFAR-10 batch {path} needs 'labels': a list of {n} integers in 0..9")
    return np.array(value, dtype=np.int64)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file."""
    batch = _unpickle(path)
    data = _field(batch, "data") if isinstance(batch, dict) else None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
            or not len(data)):
        raise DataError(f"CIFAR-10 batch {path} lacks a 'data' array of uint8 with shape (N, 3072), N >= 1")
    # A copy: writable (torch wants that), and no longer a view of the pickle's bytes.
    return data.reshape(-1, *IMAGE_SHAPE).copy(), _labels(_field(batch, "labels"), len(data), path)


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
