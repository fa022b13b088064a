"""A user's data: NumPy arrays, map-style torch datasets, an ImageFolder (its duck type, over generated PNG files)
and Hugging Face datasets, partitioned on their labels alone; bad data refused in one line."""

import weakref
from pathlib import Path

import datasets as hf
import numpy as np
import pytest
import torch
from PIL import Image

from torch import nn

from conftest import interrupted_in_round
from locfedmix import Model, UserError, run, validate
from locfedmix.data.sources import read_labels
from locfedmix.data.streaming import Inputs
from locfedmix.data.user import to_dataset

CLASSES = ["cat", "dog", "owl"]


class ImageFolderStandIn(torch.utils.data.Dataset):
    """What torchvision's ImageFolder offers (classes, samples, targets, (PIL image, class) items), without it."""

    def __init__(self, root: Path):
        self.classes = sorted(p.name for p in root.iterdir())
        self.samples = [(str(f), c) for c, name in enumerate(self.classes) for f in sorted((root / name).glob("*.png"))]
        self.targets = [c for _, c in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        return Image.open(path).convert("RGB"), target


def write_pngs(root: Path, per_class: int, seed: int, size=(8, 8)) -> np.ndarray:
    """PNG files under root/<class>/; returns the pixels in ImageFolder's order (class, then file name)."""
    rng = np.random.default_rng(seed)
    pixels = []
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
            pixels.append(image)
    return np.stack(pixels)


def test_an_image_folder_is_read_as_its_pixels_and_targets(tmp_path):
    pixels = write_pngs(tmp_path / "train", 4, seed=0)
    write_pngs(tmp_path / "test", 2, seed=1)
    ds = to_dataset((ImageFolderStandIn(tmp_path / "train"), ImageFolderStandIn(tmp_path / "test")), "folder")
    assert ds.n_classes == 3 and ds.input_shape == (3, 8, 8)
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)
    assert ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_an_image_folder_trains_and_its_clients_get_the_classes_the_partitioner_promises(tmp_path):
    write_pngs(tmp_path / "train", 10, seed=0)
    write_pngs(tmp_path / "test", 2, seed=1)
    config = validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": 3, "rounds": 1, "batch_size": 4,
                       "partition": "pathological", "data": {"num_classes_per_partition": 1, "val_fraction": 0.0},
                       "checkpoint_every": 0})
    data = {"train": ImageFolderStandIn(tmp_path / "train"), "test": ImageFolderStandIn(tmp_path / "test")}
    histograms = run(config, progress=False, dataset=data)["label_histograms"]
    assert sorted(map(sorted, histograms)) == [[0, 0, 10]] * 3  # one class each, all ten of its images
    assert sorted(h.index(10) for h in histograms) == [0, 1, 2]


def hf_split(n: int, seed: int) -> hf.Dataset:
    rng = np.random.default_rng(seed)
    features = hf.Features({"x": hf.Array2D((2, 3), "float32"), "label": hf.ClassLabel(names=list("abcd"))})
    return hf.Dataset.from_dict({"x": rng.random((n, 2, 3), dtype=np.float32), "label": np.arange(n) % 4},
                                features=features)


@pytest.mark.parametrize("partition, options, promise", [
    ("iid", {}, lambda h: sorted(map(sum, h)) == [20, 20]),
    ("pathological", {"num_classes_per_partition": 2}, lambda h: all(sum(c > 0 for c in row) == 2 for row in h)),
    ("shards", {"num_shards_per_partition": 1}, lambda h: sorted(map(sum, h)) == [20, 20]
     and all(sum(c > 0 for c in row) <= 2 for row in h)),
])
def test_a_hugging_face_dataset_partitioned_by_a_flower_named_partitioner(partition, options, promise):
    config = validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "rounds": 1, "batch_size": 8,
                       "partition": partition, "data": {"val_fraction": 0.0, **options}, "checkpoint_every": 0})
    data = hf.DatasetDict({"train": hf_split(40, 0), "test": hf_split(8, 1)})
    mlp = Model(lambda shape, n: [nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, n)], cut=3)
    histograms = run(config, progress=False, dataset=data, model=mlp)["label_histograms"]
    assert sum(map(sum, histograms)) == 40 and promise(histograms), histograms
    assert all(len(row) == 4 for row in histograms)  # the ClassLabel's four classes


class Unlabelled(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(2)


class Pairs(torch.utils.data.Dataset):
    """(input, label) items and nothing else: the labels come from one pass."""

    def __init__(self, labels, sizes=None, classes=None):
        self.labels_, self.sizes = labels, sizes or [4] * len(labels)
        if classes:
            self.classes = classes

    def __len__(self):
        return len(self.labels_)

    def __getitem__(self, i):
        return torch.full((1, self.sizes[i], self.sizes[i]), 0.5), self.labels_[i]


def test_labels_come_from_one_pass_when_there_is_no_targets_attribute():
    assert read_labels(Pairs([2, 0, 1])).tolist() == [2, 0, 1]


@pytest.mark.parametrize("source, fragment", [
    ((Unlabelled(), Unlabelled()), r"no readable labels: item 0 is not an \(input, label\) pair"),
    ((Pairs([0, 1], classes="ab"), Pairs([0, 5])), r"test label 5 \(sample 1\) is outside the 2 classes 0..1"),
    ((Pairs([0, -1]), Pairs([0, 1])), r"train label -1 \(sample 1\) is outside"),
    ((Pairs([0, 1, 1], [4, 4, 5]), Pairs([0, 1])), r"inputs of different sizes: sample 0 is 1x4x4, sample 2 is 1x5x5"),
    ((np.zeros((3, 2)), np.zeros(3)), r"not readable: found float64"),
])
def test_bad_data_is_refused_in_one_line(source, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        to_dataset(source if not isinstance(source[0], np.ndarray) else (source, source), "bad")
    assert "\n" not in str(err.value)


def test_an_image_folder_that_declares_fewer_classes_than_its_labels_is_refused(tmp_path):
    write_pngs(tmp_path / "train", 2, seed=0)
    folder = ImageFolderStandIn(tmp_path / "train")
    folder.classes = folder.classes[:2]
    with pytest.raises(UserError, match=r"train label 2 \(sample 4\) is outside the 2 classes"):
        to_dataset((folder, folder), "folder")


class Images(torch.utils.data.Dataset):
    """Generated 3×8×8 images with a `targets` attribute."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.x = rng.random((n, 3, 8, 8), dtype=np.float32)
        self.targets = (self.x[:, 0].mean(axis=(1, 2)) > 0.5).astype(np.int64) + 2 * (np.arange(n) % 2)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


@pytest.mark.parametrize("algorithm, extra", [("psl", {}), ("sl", {}), ("locfedmix", {}),
                                              ("psl", {"participation": {"dropout": 0.5}})])
def test_data_over_the_memory_budget_are_streamed_with_the_in_memory_metrics(algorithm, extra, tmp_path, caplog):
    data = (Images(40, 0), Images(12, 1))  # 52 × 768 B = 39 KB of inputs

    def config(memory_mb: float):
        return validate({"algorithm": algorithm, "dataset": "synthetic", "n_clients": 3, "rounds": 2, "batch_size": 4,
                         "seed": 6, "checkpoint_every": 0, "data": {"memory_mb": memory_mb, "workers": 1}, **extra})

    held = run(config(1.0), tmp_path / "held", progress=False, dataset=data)
    with caplog.at_level("INFO", logger="locfedmix"):
        streamed = run(config(0.01), tmp_path / "streamed", progress=False, dataset=data)
    assert (held["data"], streamed["data"]) == ("memory", "streaming")
    assert "exceed data.memory_mb=0.01; read per step" in caplog.text
    assert (tmp_path / "streamed" / "metrics.csv").read_text() == (tmp_path / "held" / "metrics.csv").read_text()


def test_a_run_with_your_model_and_streamed_data_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    data = (Images(40, 0), Images(12, 1))
    model = Model(lambda shape, n: [nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, n)], cut=2)
    config = validate({"algorithm": "sfl", "dataset": "synthetic", "n_clients": 3, "rounds": 3, "batch_size": 4,
                       "seed": 8, "data": {"memory_mb": 0.01, "workers": 0}})
    run(config, tmp_path / "whole", progress=False, dataset=data, model=model)
    with interrupted_in_round(monkeypatch, 3):
        run(config, tmp_path / "resumed", progress=False, dataset=data, model=model)
    summary = run(config, tmp_path / "resumed", progress=False, dataset=data, model=model, resume=True)
    assert summary["data"] == "streaming"
    assert (tmp_path / "resumed" / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()


def test_streamed_inputs_of_different_sizes_are_refused_in_one_line():
    data = (Pairs([0, 1, 1, 0], [4, 4, 5, 4], classes="ab"), Pairs([0, 1], classes="ab"))
    config = validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": 1, "rounds": 1, "batch_size": 4,
                       "data": {"memory_mb": 1e-6, "workers": 1, "val_fraction": 0.0}, "checkpoint_every": 0})
    with pytest.raises(UserError, match=r"inputs of different sizes: sample 0 is 1x4x4, sample 2 is 1x5x5") as err:
        run(config, progress=False, dataset=data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layout", ["pil", "hwc", "chw"])
def test_images_are_read_as_channels_first_floats_whatever_their_layout(layout):
    pixels = np.random.default_rng(3).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    if layout == "pil":
        features = hf.Features({"img": hf.Image(), "label": hf.ClassLabel(names=["a", "b"])})
        split = hf.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "label": [0, 1, 0, 1, 0]},
                                     features=features)
    else:
        split = (pixels if layout == "hwc" else pixels.transpose(0, 3, 1, 2), np.array([0, 1, 0, 1, 0]))
    ds = to_dataset({"train": split, "test": split}, layout)
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)


class HeldInputs:
    """The most bytes of streamed inputs (Inputs.stack's outputs: every read of several rows) alive at once."""

    def __init__(self, monkeypatch):
        self.live = self.peak = 0
        real = Inputs.stack

        def stack(inputs, rows, samples):
            out = real(inputs, rows, samples)
            self.live += out.nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(out, self.release, out.nbytes)
            return out

        monkeypatch.setattr(Inputs, "stack", stack)

    def release(self, nbytes: int) -> None:
        self.live -= nbytes


@pytest.mark.parametrize("eval_batch, exact", [(8, True), (64, False)])
def test_streamed_evaluation_holds_no_more_inputs_than_the_budget(eval_batch, exact, tmp_path, monkeypatch):
    """320 images of 768 B (240 KB) against a 10 KB budget: 13 images a read. With evaluation batches of 8 (6 KB)
    every batch is the in-memory path's and so are the metrics; with batches of 64 (48 KB) the streamed evaluation
    runs batches of 13, which moves the metrics by float rounding only."""
    data = (Images(200, 0), Images(120, 1))

    def config(memory_mb: float):
        return validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "rounds": 2, "batch_size": 4,
                         "seed": 3, "checkpoint_every": 0, "eval": {"batch_size": eval_batch},
                         "data": {"memory_mb": memory_mb, "workers": 0, "val_fraction": 0.2}})

    held = run(config(1.0), tmp_path / "held", progress=False, dataset=data)
    reads = HeldInputs(monkeypatch)
    streamed = run(config(0.01), tmp_path / "streamed", progress=False, dataset=data)
    assert streamed["data"] == "streaming"
    assert 0 < reads.peak <= 0.01 * 2**20 and reads.peak == min(eval_batch, 13) * 768
    if exact:
        assert (tmp_path / "streamed" / "metrics.csv").read_text() == (tmp_path / "held" / "metrics.csv").read_text()
    for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(streamed["final"][key], held["final"][key], rtol=1e-6)
