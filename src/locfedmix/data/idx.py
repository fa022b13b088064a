"""Strict reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed, and a finder for them."""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from locfedmix.errors import UserError

# IDX type codes (third magic byte) -> big-endian element type.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes())
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip reports truncation as EOFError and bit rot as BadGzipFile (an OSError) or zlib.error.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"cannot read IDX file {path}: corrupt or unreadable ({reason})") from exc


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """Decode an IDX payload; `source` names the file in error messages."""
    if len(raw) < 4:
        raise UserError(f"IDX file {source} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise UserError(f"IDX file {source} has bad magic 0x{raw[:4].hex()}; an IDX file starts with two zero bytes")
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise UserError(f"IDX file {source} has unknown type code 0x{code:02X}; allowed: {allowed}")
    if ndim < 1:
        raise UserError(f"IDX file {source} declares 0 dimensions; at least 1 is required")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {source} is truncated: {len(raw)} bytes, header needs {header}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"IDX file {source} has {len(raw) - header} payload bytes but its header {shape} "
            f"requires exactly {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file that must hold unsigned bytes in `ndim` dimensions (images: 3, labels: 1)."""
    array = parse_idx(_read_bytes(path), str(path))
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise UserError(
            f"IDX file {path} holds {array.dtype} data of shape {array.shape}; expected uint8 with {ndim} dimensions"
        )
    return array


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
