"""Oracle tests of the small pure parts: FedAvg, SmashMix, schedules, the catalog's switches."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from locfedmix.algorithms.catalog import ALGORITHMS, resolve_algorithm
from locfedmix.algorithms.fedavg import average_states, federated_average
from locfedmix.algorithms.parts import Parallel, Sequential
from locfedmix.algorithms.schedule import client_batches, epoch_batches, plan_round
from locfedmix.algorithms.objectives import reconstruction_loss
from locfedmix.algorithms.parts import ReconstructionLoss, SmashMix
from locfedmix.algorithms.server_batch import ServerBatch
from locfedmix.algorithms.smashmix import draw_partners, mix, mixed_cross_entropy, smashmix_loss
from locfedmix.errors import UserError
from locfedmix.rng import numpy_generator


def test_fedavg_of_identical_states_is_the_identity():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    averaged = average_states([state, state, state], [1, 2, 7])
    for key in state:
        torch.testing.assert_close(averaged[key], state[key], atol=1e-7, rtol=0)


def test_fedavg_with_integer_weights_equals_the_hand_computed_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(9)}
    averaged = average_states([a, b], [1, 2])
    torch.testing.assert_close(averaged["w"], torch.tensor([3.0, 6.0]))
    assert averaged["n"].item() == 9  # an integer buffer is the largest among the reporters, not averaged
    without_b = average_states([a, b, {"w": torch.zeros(2), "n": torch.tensor(7)}], [0, 0, 1])
    assert without_b["n"].item() == 7 and without_b["w"].abs().sum() == 0  # weight 0: did not report


def test_federated_average_broadcasts_the_mean_to_every_module():
    nets = [nn.Linear(2, 1) for _ in range(2)]
    with torch.no_grad():
        nets[0].weight.fill_(1.0), nets[1].weight.fill_(3.0)
    federated_average(nets, [3, 1])
    for net in nets:
        assert torch.allclose(net.weight, torch.full((1, 2), 1.5))


def test_fedavg_rejects_mismatched_weights():
    with pytest.raises(ValueError):
        average_states([{"w": torch.zeros(1)}], [1, 2])


def test_mix_with_lambda_one_returns_its_input():
    s_i, s_j = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    assert torch.equal(mix(s_i, s_j, torch.ones(5)), s_i)
    torch.testing.assert_close(mix(s_i, s_j, torch.full((5,), 0.25)), 0.25 * s_i + 0.75 * s_j)


def test_mixed_cross_entropy_equals_soft_label_cross_entropy():
    logits = torch.randn(6, 4)
    y_i, y_j = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 3, 0, 1, 0, 2])
    lam = torch.rand(6)
    soft = lam[:, None] * F.one_hot(y_i, 4) + (1 - lam[:, None]) * F.one_hot(y_j, 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))  # mixed labels sum to one
    expected = F.cross_entropy(logits, soft, reduction="none")
    torch.testing.assert_close(mixed_cross_entropy(logits, y_i, y_j, lam), expected)


@pytest.mark.parametrize("partners", [1, 2, 3])
def test_each_client_gets_distinct_partners_other_than_itself(partners):
    pairs = draw_partners([0, 1, 2, 3], partners, np.random.default_rng(0))
    for i in range(4):
        mine = [j for a, j in pairs if a == i]
        assert len(mine) == partners and len(set(mine)) == partners and i not in mine
    assert draw_partners([5], 1, np.random.default_rng(0)) == []


@pytest.mark.parametrize("partners", [1, 2, 5])
def test_partners_are_numpys_choice_among_the_other_clients(partners):
    """The same draws, and the generator left in the same state, as rng.choice over each client's list of others."""
    ids = [0, 2, 3, 7, 8, 11]
    ours, reference = np.random.default_rng(3), np.random.default_rng(3)
    expected = [(i, int(j)) for i in ids
                for j in reference.choice([j for j in ids if j != i], size=partners, replace=False)]
    assert draw_partners(ids, partners, ours) == expected
    assert ours.random() == reference.random()


@pytest.mark.parametrize("per_sample", [False, True])
def test_smashmix_loss_is_the_weighted_mean_mixed_loss_of_every_pair(per_sample):
    """Σ_i δ_i (1/n_s) Σ_j L̃_ij by hand, pair by pair, with the draws made in the documented order (partners, then
    each pair's λ): clients of unequal batch sizes, so partners' samples repeat (k mod b_j)."""
    g = torch.Generator().manual_seed(4)
    sizes = {2: 3, 5: 2, 9: 4}
    uploads = {i: torch.randn(b, 2, 3, generator=g) for i, b in sizes.items()}
    labels = {i: torch.randint(0, 4, (b,), generator=g) for i, b in sizes.items()}
    weights = {2: 0.5, 5: 0.2, 9: 0.3}
    upper = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    mixer = SmashMix(partners=2, alpha=0.7, per_sample=per_sample)
    ours = smashmix_loss(upper, ServerBatch.of(uploads, labels, weights), mixer, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    expected = 0.0
    for i, j in draw_partners(sorted(sizes), 2, rng):
        b, partner = sizes[i], torch.arange(sizes[i]) % sizes[j]
        lam = torch.as_tensor(np.broadcast_to(rng.beta(0.7, 0.7, size=b if per_sample else 1), (b,)).copy(),
                              dtype=torch.float32)
        logits = upper(mix(uploads[i], uploads[j][partner], lam))
        expected += weights[i] / 2 * mixed_cross_entropy(logits, labels[i], labels[j][partner], lam).mean()
    torch.testing.assert_close(ours, expected)


def test_the_reconstruction_mse_is_torchs_mse_per_client_under_vmap():
    """Written out for speed under vmap; values and gradients of F.mse_loss, client by client."""
    g = torch.Generator().manual_seed(6)
    decoded = torch.randn(3, 4, 1, 5, 5, generator=g, requires_grad=True)
    x = torch.rand(3, 4, 1, 5, 5, generator=g)
    ours = torch.func.vmap(lambda d, t: reconstruction_loss(ReconstructionLoss.MSE, d, t))(decoded, x)
    theirs = torch.stack([F.mse_loss(d, t) for d, t in zip(decoded, x)])
    torch.testing.assert_close(ours, theirs)
    weights = torch.rand(3, generator=g)
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), decoded),
                    torch.autograd.grad((theirs * weights).sum(), decoded)):
        torch.testing.assert_close(a, b)


def test_client_batches_cover_the_local_data_once():
    idx = np.arange(10, 33)
    batches = client_batches(idx, 5, np.random.default_rng(1))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).tolist()) == idx.tolist()


@pytest.mark.parametrize("size, batch_size", [(0, 4), (1, 4), (1, 1), (2, 1), (17, 4), (16, 16)])
def test_epoch_batches_are_client_batches_with_the_clients_generator(size, batch_size):
    """A round's batches as they were drawn before one-sample clients skipped their generator: the same tensors."""
    idx = np.arange(40, 40 + size, dtype=np.int64)
    ours = epoch_batches(idx, batch_size, 7, 3, 2)
    theirs = client_batches(idx, batch_size, numpy_generator(7, "batches", 3, 2))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and torch.equal(a, b)
    if size:
        ours[0][0] = -1
        assert idx[0] == 40  # the batches do not share the caller's array


def fake_batches(lengths):
    return {i: [torch.tensor([i, t]) for t in range(n)] for i, n in enumerate(lengths)}


def test_parallel_schedule_serves_every_client_with_data_left_each_step():
    plans = list(plan_round(Parallel(), fake_batches([3, 1, 2]), np.random.default_rng(0)))
    assert [sorted(p) for p in plans] == [[0, 1, 2], [0, 2], [0]]


def test_sequential_schedule_hands_off_after_every_k_batches():
    plans = list(plan_round(Sequential(handoff_every=2), fake_batches([3, 2]), np.random.default_rng(0)))
    assert [next(iter(p)) for p in plans] == [0, 0, 1, 1, 0]
    whole = list(plan_round(Sequential(), fake_batches([3, 2]), np.random.default_rng(0)))
    assert [next(iter(p)) for p in whole] == [0, 0, 0, 1, 1]


def test_every_algorithm_declares_its_parts():
    assert list(ALGORITHMS) == ["sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr", "mix2sfl"]
    # every part of the declaration, not only the objective: what stays apart is the name and its description
    ablated = resolve_algorithm("locfedmix", {"loc": False, "mix": False, "fed": False})
    assert replace(ablated, name="psl", summary="", reference="") == replace(ALGORITHMS["psl"], summary="",
                                                                             reference="")
    fed_only = resolve_algorithm("locfedmix", {"loc": False, "mix": False})
    assert replace(fed_only, name="sfl", summary="", reference="") == replace(ALGORITHMS["sfl"], summary="",
                                                                              reference="")


@pytest.mark.parametrize("name, switches, fragment", [
    ("locfedmx", {}, "unknown algorithm 'locfedmx'"),
    ("psl", {"mix": True}, "algo.mix"),
    ("sl", {"sync_every": 2}, "algo.sync_every"),
    ("sflv2", {"sync_every": 2}, "algo.sync_every"),
    ("psl", {"handoff_every": 2}, "algo.handoff_every"),
    ("psl", {"gradmix_fraction": 0.3}, "algo.gradmix_fraction"),
    ("sflv1", {"server_lr_exponent": 1.0}, "algo.server_lr_exponent"),
    ("sfl", {"loc": False}, "algo.loc"),
    ("locfedmix", {"server_layout": "per_client"}, "algo.server_layout"),
    ("locfedmix", {"loc": False, "gamma": 2.0}, "algo.gamma"),
])
def test_switches_that_do_not_apply_are_refused(name, switches, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_algorithm(name, switches)
