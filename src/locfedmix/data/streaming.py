"""Data larger than the memory budget (`data.memory_mb`), read per step: the labels stay in memory (partitioners and
histograms need only them), the inputs are read for each planned step by a DataLoader whose workers prefetch the
next steps while this one trains (pinned memory on a GPU).

Each round's steps are planned ahead with the same seeded draws the federation makes (engines' `train_round`), so the
loader knows which rows every step needs; a step then trains on exactly the tensors the in-memory path would gather,
and the metrics are the same."""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from locfedmix.algorithms.schedule import StepPlan, plan_round
from locfedmix.data.sources import SourceDataset, as_input, input_of
from locfedmix.engines.flow.round import round_batches
from locfedmix.errors import UserError
from locfedmix.rng import numpy_generator

PREFETCH_STEPS = 2  # steps each worker reads ahead


class Inputs(torch.utils.data.Dataset):
    """The inputs of a source, one sample per index, as the model reads them; indexing with an index tensor (the
    evaluation's held-out rows) reads and stacks those rows."""

    def __init__(self, source: Any, n: int, shape: tuple[int, ...]):
        self.source, self.n, self.shape = source, n, (n, *shape)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (torch.Tensor, np.ndarray)) and index.ndim == 1:
            return self.stack([int(i) for i in index], [self[int(i)] for i in index])
        return as_input(input_of(self.source, int(index)))

    def stack(self, rows: list[int], samples: list[torch.Tensor]) -> torch.Tensor:
        """Samples `rows` as one tensor; a sample of another shape than the first one's is a UserError naming it
        (raised here, in this process, so that it stays one line)."""
        odd = next((r for r, sample in zip(rows, samples) if tuple(sample.shape) != self.shape[1:]), None)
        if odd is not None:
            sizes = ["x".join(map(str, shape)) for shape in (self.shape[1:], samples[rows.index(odd)].shape)]
            raise UserError(f"inputs of different sizes: sample 0 is {sizes[0]}, sample {odd} is {sizes[1]}; "
                            f"resize them to one size first")
        return torch.stack(samples) if samples else torch.empty(0, *self.shape[1:])


class Rows:
    """Rows `index` of streamed inputs, not yet read: what evaluation slices instead of the split's tensor, reading
    `per_read` rows at a time at most (as many as data.memory_mb holds, one at least)."""

    def __init__(self, inputs: Inputs, index: np.ndarray, per_read: int):
        self.inputs, self.index, self.per_read = inputs, index, per_read

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, window: slice) -> "Rows":
        return Rows(self.inputs, self.index[window], self.per_read)

    def read(self, device: torch.device) -> torch.Tensor:
        return self.inputs[self.index].to(device)


def evaluation_rows(x: torch.Tensor | Inputs, index: np.ndarray, memory_mb: float) -> torch.Tensor | Rows:
    """Rows `index` of a split's inputs for evaluation: the tensor's rows when the data are held, else Rows read
    within the memory budget."""
    if not isinstance(x, Inputs):
        return x[index]
    sample_bytes = estimated_bytes(1, x[int(index[0])]) if len(index) else 1
    return Rows(x, index, max(1, int(memory_mb * 2**20 // sample_bytes)))


def read_rows(x: torch.Tensor | Rows, device: torch.device) -> torch.Tensor:
    """The inputs of `x` as a tensor on `device` (held rows as they are)."""
    return x if isinstance(x, torch.Tensor) else x.read(device)


def stacked(samples: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """A step's samples as one tensor, stacked in the worker (and pinned there on a GPU); left as a list when their
    shapes differ, for the main process to report in one line."""
    return torch.stack(samples) if len({tuple(s.shape) for s in samples}) == 1 else samples


@dataclass(frozen=True)
class StreamedDataset(SourceDataset):
    """A SourceDataset whose x_train / x_test are `Inputs` (read on demand), labels in memory."""

    def to(self, device: torch.device) -> "StreamedDataset":
        """Labels move; inputs move step by step as they are read."""
        return replace(self, y_train=self.y_train.to(device), y_test=self.y_test.to(device))


def planned_steps(fed: Any, client_indices: list[np.ndarray], batch_size: int, round_index: int) -> list[StepPlan]:
    """The round's steps before admission (drop-outs, deadlines): the seeded draws of engines' train_round."""
    batches = round_batches(fed, client_indices, batch_size, round_index)
    return list(plan_round(fed.algo.schedule, batches, numpy_generator(fed.seed, "order", round_index)))


class StreamingSteps:
    """A step executor for the federation's train_round that reads each step's inputs from a prefetching loader."""

    def __init__(self, inputs: Inputs, labels: torch.Tensor, workers: int, device: torch.device, execute: Any):
        self.inputs, self.labels, self.workers, self.device = inputs, labels, workers, device
        self.execute_in_memory = execute  # data_step(x, y): gathers and trains a planned step from tensors
        self.loaded: Iterator[tuple[StepPlan, torch.Tensor]] = iter(())

    def begin_round(self, fed: Any, client_indices: list[np.ndarray], batch_size: int, round_index: int) -> None:
        plans = planned_steps(fed, client_indices, batch_size, round_index)
        rows = [torch.cat([plan[i] for i in plan]).tolist() for plan in plans]
        loader = DataLoader(self.inputs, batch_sampler=rows, num_workers=self.workers, collate_fn=stacked,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=PREFETCH_STEPS if self.workers else None,
                            persistent_workers=False)
        self.loaded = zip(plans, loader)

    def __call__(self, fed: Any, plan: StepPlan) -> float:
        """Train the admitted `plan` on the inputs its planned step loaded (steps nobody attended are skipped)."""
        for planned, samples in self.loaded:
            if all(i in planned and torch.equal(planned[i], plan[i]) for i in plan):
                break
        else:
            raise RuntimeError(f"step {fed.step}: no planned step holds {sorted(plan)}")
        rows = torch.cat([planned[i] for i in planned])
        x = samples
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.inputs.shape[1:]:
            x = self.inputs.stack(rows.tolist(), list(samples))  # raises, naming the odd sample
        position = {int(r): k for k, r in enumerate(rows)}
        local = {i: torch.tensor([position[int(r)] for r in plan[i]]) for i in plan}
        x = x.to(self.device, non_blocking=True)
        return self.execute_in_memory(x, self.labels[rows.to(self.labels.device)])(fed, local)


def estimated_bytes(n: int, sample: torch.Tensor) -> int:
    """What holding `n` inputs like `sample` (as the model reads them) takes as one tensor."""
    return n * sample.numel() * sample.element_size()


def streamed(train: Any, test: Any, name: str, labels: tuple[np.ndarray, np.ndarray], n_classes: int,
             shape: tuple[int, ...]) -> StreamedDataset:
    y_train, y_test = labels
    return StreamedDataset(name, Inputs(train, len(y_train), shape), torch.from_numpy(y_train),
                           Inputs(test, len(y_test), shape), torch.from_numpy(y_test), n_classes)
