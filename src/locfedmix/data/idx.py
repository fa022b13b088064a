"""Strict reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed, and a finder for them.

The header is read and checked before any payload byte: the magic number (two zero bytes, a known type code, at least
one dimension), the element type and rank the caller expects, and a payload size the file can actually hold (a plain
file's length must match it exactly). A .gz file is decompressed in chunks, never past what the header promises plus
one byte (to notice extra data), so neither a lying header nor a gzip bomb makes the reader allocate more than the file
truly holds. Plain files are read the same way, counted on the bytes read rather than a size stat reports, and only a
regular file is opened (a FIFO or a device such as /dev/zero is refused)."""

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from locfedmix.errors import DataError
from locfedmix.files import open_regular

# IDX type codes (third magic byte) -> big-endian element type.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# 2 GiB: about four times the largest IDX set in use (EMNIST ByClass training images, 0.55 GB).
MAX_PAYLOAD_BYTES = 2**31
CHUNK_BYTES = 2**20


@dataclass(frozen=True)
class IdxHeader:
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def length(self) -> int:
        """Bytes of the header itself: the 4-byte magic number and one 4-byte size per dimension."""
        return 4 + 4 * len(self.shape)

    @property
    def payload_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _take(stream: BinaryIO, n: int, source: str, what: str) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise DataError(f"IDX file {source} is truncated: it ends inside the {what}")
    return data


def _read_header(stream: BinaryIO, source: str) -> IdxHeader:
    """Read and check the header; `source` names the file in error messages."""
    zero, code, ndim = struct.unpack(">HBB", _take(stream, 4, source, "4-byte magic number"))
    if zero != 0:
        magic = f"0x{zero:04x}{code:02x}{ndim:02x}"
        raise DataError(f"IDX file {source} has bad magic {magic}; an IDX file starts with two zero bytes")
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"IDX file {source} has unknown type code 0x{code:02X}; allowed: {allowed}")
    if ndim < 1:
        raise DataError(f"IDX file {source} declares 0 dimensions; at least 1 is required")
    shape = struct.unpack(f">{ndim}I", _take(stream, 4 * ndim, source, f"header's {ndim} dimension sizes"))
    header = IdxHeader(IDX_DTYPES[code], shape)
    if header.payload_bytes > MAX_PAYLOAD_BYTES:
        raise DataError(f"IDX file {source} declares shape {shape}, {header.payload_bytes} payload bytes; at most "
                        f"{MAX_PAYLOAD_BYTES} are allowed")
    return header


def _check_length(total: int, header: IdxHeader, source: str) -> None:
    if total - header.length != header.payload_bytes:
        raise DataError(f"IDX file {source} has {total - header.length} payload bytes but its header {header.shape} "
                        f"requires exactly {header.payload_bytes}")


def _read_payload(stream: BinaryIO, header: IdxHeader, source: str) -> np.ndarray:
    """The payload in chunks, so memory grows with the bytes really present, not with the header's promise."""
    payload = bytearray()
    while len(payload) < header.payload_bytes:
        chunk = stream.read(min(CHUNK_BYTES, header.payload_bytes - len(payload)))
        if not chunk:  # the file ended early: name how many bytes it holds
            _check_length(header.length + len(payload), header, source)
        payload += chunk
    if stream.read(1):
        raise DataError(f"IDX file {source} holds more than the {header.payload_bytes} payload bytes its header "
                        f"{header.shape} requires")
    array = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
    return array.astype(header.dtype.newbyteorder("="), copy=False)


def _decompressed(raw: BinaryIO, path: Path) -> BinaryIO:
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw


def read_idx(path: Path, ndim: int, dtype: np.dtype = np.dtype(np.uint8)) -> np.ndarray:
    """Read an IDX file that must hold `dtype` elements in `ndim` dimensions (images: 3, labels: 1)."""
    try:
        with open_regular(path, "IDX file", DataError) as raw, _decompressed(raw, path) as stream:
            header = _read_header(stream, str(path))
            if header.dtype.newbyteorder("=") != dtype or len(header.shape) != ndim:
                raise DataError(f"IDX file {path} holds {header.dtype.newbyteorder('=')} data of shape "
                                f"{header.shape}; expected {dtype} with {ndim} dimensions")
            return _read_payload(stream, header, str(path))
    except (OSError, EOFError, zlib.error) as exc:
        # gzip reports truncation as EOFError and bit rot as BadGzipFile (an OSError) or zlib.error.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read IDX file {path}: corrupt or unreadable ({reason})") from exc


def find_idx(folder: Path, name: str) -> Path | None:
    """Locate the IDX file `name` (e.g. 'train-images-idx3-ubyte') in `folder` under its usual spellings:
    gzip-compressed, plain, unpacked into a same-named directory, or with '.idx' instead of '-idx'."""
    candidates = [
        folder / f"{name}.gz",
        folder / name,
        folder / name / name,
        folder / name.replace("-idx", ".idx"),
    ]
    return next((path for path in candidates if path.is_file()), None)
