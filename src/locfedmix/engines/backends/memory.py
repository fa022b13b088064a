"""Bounding a step's activation memory.

Every client's forward graph lives until the server's cut gradient comes back, so a step of N clients × b samples
holds N·b samples' activations at once: 340 kB a CIFAR image through the CNN's two conv blocks (by
saved_bytes_per_sample), 5.4 GB for 1000 × 16. Over a budget, clients keep their activations while the kept total
fits; the others run their forward without keeping them and recompute it, group by group, during their backward
(torch.utils.checkpoint): one more forward for those clients only, and one recomputed group alive at a time. Same
values: the recomputation repeats the forward with the same random state."""

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from locfedmix.engines.flow.interfaces import Batches


def saved_bytes_per_sample(module: nn.Module, x: torch.Tensor) -> float:
    """Bytes that autograd keeps for backward per sample of `x` through `module` (parameters excluded; tensors
    sharing storage counted once). `x` is measured on a copy: a client's batch is a view into the step's gathered
    batch, whose whole storage would otherwise count as this batch's (at 1,000 clients × 1 sample, 1,000 samples'
    worth of input per sample)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.clone())
    return sum(storages.values()) / len(x)


class ActivationBudget:
    """Decides, step by step, which client groups keep their forward's activations and which are recomputed in
    backward: groups keep theirs, in the order their backward runs, while the kept total fits `budget_mb`; the rest
    are recomputed. A group's backward also runs its head (decoder, auxiliary classifier), so groups are cut to fit
    the budget with the head's activations too. Lower models with running statistics (BatchNorm) always keep
    theirs: a second forward would count its batch in those statistics twice.

    `lower` and `head` lend their shapes: they are measured on the first batch, once."""

    def __init__(self, budget_mb: float, lower: nn.Module, head: nn.Module | None = None):
        self.budget_bytes = budget_mb * 2**20
        self.lower, self.head = copy.deepcopy(lower), copy.deepcopy(head)  # measuring runs them in training mode
        self.never = any(True for _ in lower.buffers())
        self.per_sample: float | None = None  # the lower model's activations
        self.per_sample_with_head: float | None = None

    def exceeded(self, batches: Batches) -> bool:
        """Whether keeping this step's whole client forward (`batches`: client id -> (x, y)) would exceed the budget."""
        if not batches or not torch.is_grad_enabled():
            return False
        if self.per_sample is None:
            x = batches[min(batches)][0]
            self.per_sample = saved_bytes_per_sample(self.lower, x)
            self.per_sample_with_head = self.per_sample if self.head is None else saved_bytes_per_sample(
                nn.Sequential(self.lower, self.head), x)
        return not self.never and self.per_sample * sum(len(y) for _, y in batches.values()) > self.budget_bytes

    def group_cap(self, batch: int) -> int | None:
        """Most clients of `batch` samples whose activations, head's included, fit the budget (one at least);
        None before `exceeded` has measured the models."""
        if self.per_sample_with_head is None:
            return None
        return max(1, int(self.budget_bytes // (self.per_sample_with_head * batch)))

    def plan(self, batches: Batches, groups: list[list[int]]) -> list[bool]:
        """For each group of client ids, in backward order: is its forward recomputed?"""
        if not self.exceeded(batches):
            return [False] * len(groups)
        kept, recompute = 0.0, []
        for ids in groups:
            size = self.per_sample * sum(len(batches[i][1]) for i in ids)
            recompute.append(kept + size > self.budget_bytes)
            kept += 0.0 if recompute[-1] else size
        return recompute


def run_forward(forward, *args, recompute: bool) -> torch.Tensor:
    """`forward(*args)`, keeping its activations, or (recompute) keeping only its inputs until backward."""
    if recompute:
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True)
    return forward(*args)
