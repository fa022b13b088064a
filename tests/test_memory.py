"""Recomputing the clients' forward in backward (engines/backends/memory.py) changes the memory a step holds, not its numbers."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_federation
from locfedmix.engines.backends.memory import ActivationBudget, saved_bytes_per_sample
from test_engines import DEFENCES, same_models, trained

FLOAT = 4
# a relay, per-client server copies, a classifier head, a decoder: the algorithms' different step shapes
SHAPES = ["sl", "sflv1", "locsplitfed", "locfedmix"]


def test_saved_bytes_per_sample_counts_what_backward_keeps():
    """conv keeps its input (1×4×4), relu its output (2×4×4); the weights are not activations."""
    module = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    assert saved_bytes_per_sample(module, torch.rand(5, 1, 4, 4)) == (16 + 32) * FLOAT
    one_of_a_thousand = torch.rand(1000, 1, 4, 4)[:1]  # a client's batch is a view into the step's batch
    assert saved_bytes_per_sample(module, one_of_a_thousand) == (16 + 32) * FLOAT


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
@pytest.mark.parametrize("algorithm", SHAPES)
def test_recomputed_forward_gives_the_same_training(algorithm, engine, data):
    """A zero budget recomputes every client's forward, one client per group; the kept run groups its clients the
    same way, so that only recomputation differs (how many clients share a vmap call changes float rounding)."""
    one_per_group = {"engine__chunk_clients": 1}
    kept, kept_losses = trained(algorithm, engine, data, **one_per_group)
    recomputed, recomputed_losses = trained(algorithm, engine, data, engine__activation_memory_mb=0, **one_per_group)
    one_sample = {0: (torch.zeros(1, 1), torch.zeros(1))}
    assert recomputed.clients.budget.exceeded(one_sample)
    assert not kept.clients.budget.exceeded(one_sample)
    np.testing.assert_allclose(kept_losses, recomputed_losses, rtol=1e-6)
    same_models(kept, recomputed)


@pytest.mark.parametrize("algorithm", ["psl", "locfedmix"])
def test_over_the_budget_groups_of_two_keep_or_recompute_and_give_the_same_training(algorithm, data):
    """A budget of two clients' activations, the head's (locfedmix's decoder) included: the stacked pool forms
    groups of two; the first keeps its activations, the second is recomputed if the kept total would exceed the
    budget. Clipping, noise and NoPeek sit between the recomputed forward and the upload. The default budget keeps
    all three in one group."""
    x, y = data
    clients = make_federation(algorithm, n_clients=3).clients
    lower, head = clients.lower(0), clients.head(0)
    per_sample = saved_bytes_per_sample(lower, x[:4])
    with_head = per_sample if head is None else saved_bytes_per_sample(nn.Sequential(lower, head), x[:4])
    two_clients = 2 * 4 * with_head
    kept, kept_losses = trained(algorithm, "vectorized", data, **DEFENCES)
    recomputed, recomputed_losses = trained(algorithm, "vectorized", data,
                                            engine__activation_memory_mb=two_clients / 2**20, **DEFENCES)
    np.testing.assert_allclose(kept_losses, recomputed_losses, rtol=1e-6)
    same_models(kept, recomputed)
    batches = {i: (x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]) for i in range(3)}
    assert [ids for ids, _ in recomputed.clients.forward(batches).groups] == [[0, 1], [2]]
    assert [ids for ids, _ in kept.clients.forward(batches).groups] == [[0, 1, 2]]
    expected = [False, 12 * per_sample > two_clients]
    assert recomputed.clients.budget.plan(batches, [[0, 1], [2]]) == expected
    assert expected[1] or head is not None


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
def test_over_the_budget_the_forward_keeps_only_its_inputs(engine, data):
    x, y = data
    batches = {i: (x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]) for i in range(3)}
    kept_bytes = []
    for budget in (4096, 0):
        fed = make_federation("psl", n_clients=3, engine__kind=engine, engine__activation_memory_mb=budget)
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            fed.clients.forward(batches)
        kept_bytes.append(sum(saved))
    inputs = sum(b[0].nbytes for b in batches.values())
    assert kept_bytes[0] > 5 * inputs  # the conv blocks' maps are larger than the images
    assert kept_bytes[1] <= inputs + 1024  # the images (and small bookkeeping) only


def test_groups_keep_their_activations_while_the_total_fits():
    """A linear layer keeps its 3-float input: 12 bytes a sample, 24 a client of two samples; budget 60 bytes."""
    lower = nn.Linear(3, 3)
    batches = {i: (torch.zeros(2, 3), torch.zeros(2)) for i in range(4)}
    budget = ActivationBudget(60 / 2**20, lower)
    assert budget.plan(batches, [[0], [1], [2], [3]]) == [False, False, True, True]
    assert budget.per_sample == 3 * FLOAT
    assert budget.plan(batches, [[0, 1], [2, 3]]) == [False, True]
    assert budget.group_cap(2) == 2
    assert ActivationBudget(1, lower).plan(batches, [[0], [1], [2], [3]]) == [False] * 4


def test_models_with_running_statistics_keep_their_activations():
    """A second forward through BatchNorm in training mode would count the batch in its statistics twice."""
    batches = {0: (torch.zeros(2, 3), torch.zeros(2))}
    assert ActivationBudget(0, nn.Linear(3, 3)).exceeded(batches)
    assert not ActivationBudget(0, nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))).exceeded(batches)
    assert not ActivationBudget(0, nn.Linear(3, 3)).exceeded({})  # a rank without clients in this step
