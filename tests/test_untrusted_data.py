"""Dataset files are untrusted: hostile IDX headers, gzip bombs and CIFAR pickles fail with a DataError naming the
file, before allocating what the file does not hold, and never run code."""

import gzip
import io
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from locfedmix.cli import main
from locfedmix.data import cifar, datasets
from locfedmix.data.cifar import read_batch
from locfedmix.data.datasets import load_dataset
from locfedmix.data.idx import read_idx
from locfedmix.errors import DataError
from test_data import IDX_NAMES, idx_bytes, write_cifar, write_idx_set

# Far below what any hostile file here claims or expands to (gigabytes), far above what reading it legitimately needs
# (the 1 MiB chunk the IDX reader decompresses at a time, gzip's buffers).
MEMORY_BOUND = 4 * 2**20


def peak_memory_of_failure(read, *args) -> tuple[DataError, int]:
    """The DataError `read(*args)` raises and the peak of memory traced while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            read(*args)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def idx_header(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


# --- IDX -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape, fragment", [
    ((10**4, 10**4, 10**4), "at most 2147483648 are allowed"),  # 10^12 elements: refused from the header alone
    ((1000, 1000, 1000), "payload bytes but its header"),  # 1 GB, under the cap: the file must really hold it
])
def test_an_idx_header_claiming_huge_sizes_fails_before_allocating(tmp_path, gz, shape, fragment):
    path = tmp_path / ("images-idx3-ubyte" + (".gz" if gz else ""))
    raw = idx_header(shape) + bytes(100)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    error, peak = peak_memory_of_failure(read_idx, path, 3)
    assert fragment in str(error) and str(path) in str(error)
    assert peak < MEMORY_BOUND


def test_a_gzip_bomb_is_not_decompressed_past_its_header(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:  # 100 labels promised, then 64 MiB of zeros (64 KiB on disk)
        f.write(idx_header((100,)) + bytes(100))
        for _ in range(64):
            f.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    error, peak = peak_memory_of_failure(read_idx, path, 1)
    assert f"IDX file {path} holds more than the 100 payload bytes" in str(error)
    assert peak < MEMORY_BOUND


@pytest.mark.parametrize("file, array, fragment", [
    (0, np.zeros((4, 14, 56), np.uint8), "holds 14x56 images; fashion-mnist images are 28x28"),
    (1, np.array([0, 1, 2, 10], np.uint8), "holds label 10; fashion-mnist labels are 0..9"),
    (2, np.zeros((0, 28, 28), np.uint8), "holds no samples"),
    (3, np.zeros(2, np.float32), "holds float32 data of shape (2,); expected uint8 with 1 dimensions"),
])
def test_an_idx_set_is_checked_as_a_dataset(tmp_path, file, array, fragment):
    write_idx_set(tmp_path, n_train=4, n_test=2, gz=False)
    if file == 2:  # an empty test set: labels emptied too, so the counts agree
        (tmp_path / IDX_NAMES[3]).write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    (tmp_path / IDX_NAMES[file]).write_bytes(idx_bytes(array, code=0x0D if array.dtype == np.float32 else 0x08))
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert str(tmp_path / IDX_NAMES[file]) in str(info.value)


# --- CIFAR-10 --------------------------------------------------------------------------------------------------


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's str (BINSTRING), as the official CIFAR-10 batches were pickled."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump({"batch_label": "testing batch 1 of 1", "data": data, "labels": labels,
                                          "filenames": ["x.png"] * len(labels)})
    return out.getvalue()


def test_cifar10_reads_python2_batches_like_the_official_ones(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (3, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_batch(data, [7, 0, 9]).replace(b"numpy._core.", b"numpy.core."))  # numpy 1.x names
    images, labels = read_batch(path)
    np.testing.assert_array_equal(images, data.reshape(3, 3, 32, 32))
    assert labels.tolist() == [7, 0, 9] and labels.dtype == np.int64 and images.flags.writeable


ONE_IMAGE = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
DTYPE_STATE = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # ..., -1, -1, flags 0) of numpy's dtype state


def encode_bomb(text_bytes: int, copies: int) -> bytes:
    """A protocol-2 pickle that asks _codecs.encode to turn one memoized text into `copies` separate bytes objects."""
    text = b"a" * text_bytes
    head = b"\x80\x02c_codecs\nencode\nq\x00X" + struct.pack("<I", len(text)) + text + b"q\x01X\x06\x00\x00\x00latin1"
    return head + b"\x86q\x02](" + b"h\x00h\x02R" * copies + b"e."


@pytest.mark.parametrize("raw, fragment", [
    (pickle.dumps({b"data": np.array([None, 1], dtype=object), b"labels": [0, 1]}, protocol=2),
     "dtype 'O8' is not allowed"),
    (ONE_IMAGE.replace(DTYPE_STATE, DTYPE_STATE.replace(b"K\x00", b"K\x3f")), "not that of a plain integer type"),
    (ONE_IMAGE.replace(b"K\x00\x85", b"J\x00\x00\x00\x40\x85", 1), "_reconstruct is allowed only as numpy writes it"),
    (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85\x85R.", "not callable"),
    (b"\x80\x05\x8e" + struct.pack("<Q", 2**34) + b"abc", "expected 17179869184 bytes in a bytes8, but only 3 remain"),
    (encode_bomb(2**16, 1000), "encodes more bytes than the file holds"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10**30]}), "a list of 1 integers in 0..9"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "a list of 2 integers in 0..9"),
    (pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}), "N >= 1"),
    (pickle.dumps({"data": np.zeros((1, 3072), np.int64), "labels": [0]}), "a 'data' array of uint8"),
    (ONE_IMAGE[: len(ONE_IMAGE) // 2], "expected 3072 bytes in a unicodestring4, but only"),
])
def test_a_hostile_cifar_batch_fails_with_bounded_memory(tmp_path, raw, fragment):
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    error, peak = peak_memory_of_failure(read_batch, path)
    assert fragment in str(error) and str(path) in str(error) and "\n" not in str(error), str(error)
    assert peak < MEMORY_BOUND


def test_an_oversized_cifar_batch_is_refused_before_reading(tmp_path, monkeypatch):
    write_cifar(tmp_path, per_batch=4)
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 10_000)
    with pytest.raises(DataError, match=r"is \d+ bytes; a batch is at most 10000"):
        load_dataset("cifar10", data_dir=str(tmp_path))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw, marker: raw[:-40], "pickle exhausted before seeing STOP"),
    (lambda raw, marker: pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2), "is not allowed"),
])
def test_a_corrupt_cifar_batch_through_the_cli_is_one_line(tmp_path, capsys, damage, fragment):
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "MARKER"
    write_cifar(folder, per_batch=4)
    (folder / "test_batch").write_bytes(damage((folder / "test_batch").read_bytes(), marker))
    config = tmp_path / "c.toml"
    config.write_text('algorithm = "sfl"\ndataset = "cifar10"\nn_clients = 2\nrounds = 1\nbatch_size = 2\n'
                      f'[data]\ndir = "{tmp_path}"\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder / "test_batch") in err and fragment in err, err
    assert not marker.exists()


def test_a_gzip_bomb_through_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT", tmp_path / "absent")
    write_idx_set(tmp_path, n_train=4, n_test=2, gz=True)
    bomb = tmp_path / (IDX_NAMES[1] + ".gz")
    bomb.write_bytes(gzip.compress(idx_header((4,)) + bytes(2**24)))
    config = tmp_path / "c.toml"
    config.write_text('algorithm = "sfl"\ndataset = "fashion-mnist"\nn_clients = 1\nrounds = 1\nbatch_size = 2\n'
                      f'[data]\ndir = "{tmp_path}"\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"IDX file {bomb} holds more than the 4 payload bytes" in err, err
