"""Input standardization: per-channel mean and std of the training split, applied to every split (`data.normalize`)."""

from dataclasses import dataclass, replace

import numpy as np
import torch

from locfedmix.data.datasets import Dataset


@dataclass(frozen=True)
class Standardization:
    """x ↦ (x - mean[c]) / std[c] per channel c; the statistics come from the training split alone, so that nothing
    of the validation or test images leaks into what the models see."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: torch.Tensor, indices: np.ndarray, chunk: int = 4096) -> "Standardization":
        """The population mean and std of each channel of the images `x[indices]` (x: N x C x H x W), summed in
        float64 a chunk at a time (a float64 copy of CIFAR-10 would take 1.2 GB)."""
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(indices), chunk):
            part = x[torch.as_tensor(indices[start:start + chunk], device=x.device)].double().cpu()
            total += part.sum((0, 2, 3))
            squares += part.square().sum((0, 2, 3))
        count = len(indices) * x.shape[2] * x.shape[3]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        # A constant channel carries no information; dividing by 1 keeps it finite (and at 0).
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def _shaped(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._shaped(self.mean, x)) / self._shaped(self.std, x)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Back to pixels (up to float rounding): what a reconstruction of a standardized input shows."""
        return x * self._shaped(self.std, x) + self._shaped(self.mean, x)

    def summary(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def standardize(dataset: Dataset, train_indices: np.ndarray) -> tuple[Dataset, Standardization]:
    """`dataset` with every split standardized by the statistics of the training images at `train_indices` (the
    training split after the validation hold-out), and those statistics."""
    stats = Standardization.fit(dataset.x_train, train_indices)
    images = {key: stats.apply(getattr(dataset, key)) for key in ("x_train", "x_test")}
    return replace(dataset, **images), stats
