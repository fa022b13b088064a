"""Oracle tests of the algorithms: each step against centralized or hand-written training."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_federation
from locfedmix.algorithms.schedule import client_batches
from locfedmix.algorithms.server_batch import ServerBatch
from locfedmix.algorithms.smashmix import smashmix_loss
from locfedmix.engines.flow.round import data_step, gather_batches, train_round
from locfedmix.engines.flow.server import server_step
from locfedmix.rng import numpy_generator

SGD = dict(client_optimizer__name="sgd", client_optimizer__lr=0.1, server_optimizer__name="sgd",
           server_optimizer__lr=0.1)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def assert_same(a: nn.Module | list, b: nn.Module | list, atol: float = 0.0) -> None:
    a = params(a) if isinstance(a, nn.Module) else a
    b = params(b) if isinstance(b, nn.Module) else b
    assert len(a) == len(b)
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0)


def split_indices(n_clients: int, per_client: int) -> list[np.ndarray]:
    return [np.arange(i * per_client, (i + 1) * per_client) for i in range(n_clients)]


ADAM = dict(client_optimizer__name="adam", client_optimizer__lr=0.01, server_optimizer__name="adam",
            server_optimizer__lr=0.01)
OPTIMIZERS = {"sgd": SGD, "adam": ADAM}
# Adam's step is about lr whatever the gradient's size, so float-rounding differences of tiny gradient entries (the
# split and the whole model sum in another order) reach ~1e-6 in a few steps; lr / 1,000 still tells apart the
# trainings compared here, which differ by more than 1e-3.
TOLERANCE = {"sgd": 1e-6, "adam": 1e-5}


class Centralized:
    """upper∘lower trained on whole batches by torch's own optimizers: the oracle for split learning served one
    client at a time. The upper model has one optimizer; the lower one per client (`holders`), each keeping its own
    state across turns as a client's does, or rebuilt on demand (`rebuild`)."""

    def __init__(self, lower: nn.Module, upper: nn.Module, name: str, holders: int = 1):
        self.model = nn.Sequential(copy.deepcopy(lower), copy.deepcopy(upper))
        build = torch.optim.SGD if name == "sgd" else torch.optim.Adam
        self.build = lambda module: build(module.parameters(), lr=OPTIMIZERS[name]["client_optimizer__lr"])
        self.lowers = [self.build(self.model[0]) for _ in range(holders)]
        self.upper = self.build(self.model[1])

    def train(self, x, y, batches, holder: int = 0) -> None:
        for idx in batches:
            self.lowers[holder].zero_grad(), self.upper.zero_grad()
            F.cross_entropy(self.model(x[idx]), y[idx]).backward()
            self.lowers[holder].step(), self.upper.step()

    def rebuild(self, holder: int = 0) -> None:
        self.lowers[holder] = self.build(self.model[0])


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("algorithm", ["sl", "psl", "sfl", "sflv2"])
def test_one_client_equals_centralized_training(algorithm, optimizer, data):
    """Adam's state carries over FedAvg (an identity for one client) under the default on_sync = "keep"."""
    x, y = data
    fed = make_federation(algorithm, sizes=[24], **OPTIMIZERS[optimizer])
    oracle = Centralized(fed.clients.lower(0), fed.server.uppers[0], optimizer)
    idx = split_indices(1, 24)
    for r in (1, 2):
        train_round(fed, idx, 4, r, data_step(x, y))
        oracle.train(x, y, client_batches(idx[0], 4, numpy_generator(fed.seed, "batches", 0, r)))
    assert_same(fed.clients.lower(0), oracle.model[0], atol=TOLERANCE[optimizer])
    assert_same(fed.server.uppers[0], oracle.model[1], atol=TOLERANCE[optimizer])


RELAY = split_indices(3, 12)


def relay_rounds(fed, x, y, rounds: int) -> None:
    for r in range(1, rounds + 1):
        train_round(fed, RELAY, 4, r, data_step(x, y))


def relay_oracle(oracle: Centralized, seed: int, x, y, rounds: int, rebuild: bool) -> None:
    """sl's batches over 3 clients of 12 samples, client by client; `rebuild`: the lower optimizer is rebuilt at
    each hand-off (every turn but the very first)."""
    for r in range(1, rounds + 1):
        for i in range(3):
            if rebuild and (r, i) != (1, 0):
                oracle.rebuild(i)
            oracle.train(x, y, client_batches(RELAY[i], 4, numpy_generator(seed, "batches", i, r)), holder=i)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_sl_relay_equals_centralized_training_over_clients_in_turn(optimizer, data):
    """Each client's optimizer state stays its own across hand-offs (on_sync = "keep"): in round 2 client 0 resumes
    the Adam moments it left in round 1, built on another model."""
    x, y = data
    fed = make_federation("sl", sizes=[12, 12, 12], n_clients=3, **OPTIMIZERS[optimizer])
    oracle = Centralized(fed.clients.lower(0), fed.server.uppers[0], optimizer, holders=3)
    relay_rounds(fed, x, y, 2)
    relay_oracle(oracle, fed.seed, x, y, 2, rebuild=False)
    assert fed.holder == 2
    assert_same(fed.clients.lower(2), oracle.model[0], atol=TOLERANCE[optimizer])
    assert_same(fed.server.uppers[0], oracle.model[1], atol=TOLERANCE[optimizer])


def test_reset_rebuilds_the_client_adam_at_each_relay_hand_off(data):
    """In the loop pool, which sequential schedules run in; the stacked pool's reset is held to it in
    test_engines.py."""
    x, y = data
    runs = {on_sync: make_federation("sl", sizes=[12, 12, 12], n_clients=3, engine__kind="loop",
                                     client_optimizer__on_sync=on_sync, **ADAM) for on_sync in ("keep", "reset")}
    oracle = Centralized(runs["reset"].clients.lower(0), runs["reset"].server.uppers[0], "adam", holders=3)
    for fed in runs.values():
        relay_rounds(fed, x, y, 2)
    relay_oracle(oracle, runs["reset"].seed, x, y, 2, rebuild=True)
    assert_same(runs["reset"].clients.lower(2), oracle.model[0], atol=TOLERANCE["adam"])
    assert_same(runs["reset"].server.uppers[0], oracle.model[1], atol=TOLERANCE["adam"])
    gap = max((a - b).abs().max() for a, b in zip(params(runs["keep"].clients.lower(2)), params(oracle.model[0])))
    assert gap > 1e-3  # "keep" is another training: client 0's round-1 moments steer its round-2 steps


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
def test_reset_rebuilds_the_client_adam_at_each_fedavg(engine, data):
    """One client averaging every 2 steps: "reset" is training whose lower Adam is rebuilt every 2 batches (the
    server's Adam keeps its state); "keep" is not."""
    x, y = data
    idx = split_indices(1, 24)
    runs = {}
    for on_sync in ("keep", "reset"):
        runs[on_sync] = make_federation("sfl", sizes=[24], algo__sync_every=2, engine__kind=engine,
                                        client_optimizer__on_sync=on_sync, **ADAM)
    oracle = Centralized(runs["reset"].clients.lower(0), runs["reset"].server.uppers[0], "adam")
    for r in (1, 2):
        for fed in runs.values():
            train_round(fed, idx, 4, r, data_step(x, y))
        batches = client_batches(idx[0], 4, numpy_generator(runs["reset"].seed, "batches", 0, r))
        for k in range(0, len(batches), 2):
            oracle.train(x, y, batches[k:k + 2])
            oracle.rebuild()
    assert_same(runs["reset"].clients.lower(0), oracle.model[0], atol=TOLERANCE["adam"])
    assert_same(runs["reset"].server.uppers[0], oracle.model[1], atol=TOLERANCE["adam"])
    gap = max((a - b).abs().max() for a, b in zip(params(runs["keep"].clients.lower(0)), params(oracle.model[0])))
    assert gap > 1e-3


def run_steps(algorithm: str, data, rounds: int = 2, **overrides):
    x, y = data
    fed = make_federation(algorithm, sizes=[16, 16, 16], n_clients=3, **overrides)
    for r in range(1, rounds + 1):
        train_round(fed, split_indices(3, 16), 4, r, data_step(x, y))
    return fed


def test_locfedmix_with_all_parts_off_equals_psl(data):
    psl = run_steps("psl", data)
    plain = run_steps("locfedmix", data, algo__loc=False, algo__mix=False, algo__fed=False)
    for i in range(3):
        assert_same(psl.clients.lower(i), plain.clients.lower(i))
    assert_same(psl.server.uppers[0], plain.server.uppers[0])


def test_locfedmix_with_only_fed_equals_sfl(data):
    sfl = run_steps("sfl", data)
    fed_only = run_steps("locfedmix", data, algo__loc=False, algo__mix=False)
    for i in range(3):
        assert_same(sfl.clients.lower(i), fed_only.clients.lower(i))
    assert_same(sfl.server.uppers[0], fed_only.server.uppers[0])


def test_each_locfedmix_part_changes_the_training(data):
    full = run_steps("locfedmix", data, rounds=1)
    for part in ("loc", "mix", "fed"):
        ablated = run_steps("locfedmix", data, rounds=1, **{f"algo__{part}": False})
        differs = any(not torch.equal(a, b) for a, b in zip(params(full.clients.lower(1)),
                                                            params(ablated.clients.lower(1)), strict=True))
        assert differs, part


def uploads_of(fed, x, y):
    smashed = {i: fed.clients.lower(i)(x[i * 4:(i + 1) * 4]) for i in range(fed.clients.n)}
    uploads = {i: s.detach().requires_grad_(True) for i, s in smashed.items()}
    labels = {i: y[i * 4:(i + 1) * 4] for i in smashed}
    return uploads, labels


def test_no_client_receives_gradient_from_mixed_samples(data):
    x, y = data
    grads, uppers = [], []
    for mix in (True, False):
        switches = {"algo__partners": 2} if mix else {"algo__mix": False}
        fed = make_federation("locfedmix", sizes=[1, 1, 1], n_clients=3, **switches)
        uploads, labels = uploads_of(fed, x, y)
        _, cut = server_step(fed.algo, fed.server, uploads, labels, fed.weights([0, 1, 2]),
                             numpy_generator(0, "mix"))
        grads.append(cut)
        uppers.append(params(fed.server.uppers[0]))
    for i in range(3):
        assert torch.equal(grads[0][i], grads[1][i])
    assert any(not torch.equal(a, b) for a, b in zip(*uppers, strict=True)), "mixing must change the server update"


@pytest.mark.parametrize("switches", [{"algo__per_sample_lambda": True}, {"algo__mix_extra_step": True},
                                      {"algo__per_sample_lambda": True, "algo__mix_extra_step": True}])
def test_no_gradient_goes_down_from_mixed_samples_in_any_smashmix_variant(switches, data):
    """One whole engine step of LocFedMix-SL with SmashMix's per-sample λ or extra server step: every client (lower
    model and decoder) ends exactly where it ends without SmashMix, while the server does not."""
    x, y = data
    plan = {i: torch.arange(4 * i, 4 * i + 4) for i in range(3)}
    feds = {}
    for name, extra in (("mixed", {"algo__partners": 2, **switches}), ("plain", {"algo__mix": False})):
        feds[name] = make_federation("locfedmix", sizes=[4, 4, 4], n_clients=3, **extra, **SGD)
        data_step(x, y)(feds[name], plan)
    mixed, plain = feds["mixed"], feds["plain"]
    for i in range(3):
        assert_same(mixed.clients.lower(i), plain.clients.lower(i))
        assert_same(mixed.clients.head(i), plain.clients.head(i))
    assert any(not torch.equal(a, b) for a, b in zip(params(mixed.server.uppers[0]), params(plain.server.uppers[0]),
                                                    strict=True)), "SmashMix must change the server update"


def test_mix_extra_step_updates_the_server_on_the_real_loss_then_on_the_mixed_loss(data):
    """The second update's mixed loss is computed with the upper model the first update left (not joined to the
    first), and the cut gradients are the clients' own losses' at the model before either update."""
    x, y = data
    fed = make_federation("locfedmix", sizes=[1, 1, 1], n_clients=3, algo__partners=2, algo__mix_extra_step=True,
                          **SGD)
    start = copy.deepcopy(fed.server.uppers[0])
    uploads, labels = uploads_of(fed, x, y)
    weights = fed.weights([0, 1, 2])
    _, cut = server_step(fed.algo, fed.server, uploads, labels, weights, numpy_generator(0, "mix"))
    upper = copy.deepcopy(start)
    opt = torch.optim.SGD(upper.parameters(), lr=0.1)
    sum(weights[i] * F.cross_entropy(upper(uploads[i].detach()), labels[i]) for i in range(3)).backward()
    opt.step()
    opt.zero_grad()
    fresh = {i: u.detach() for i, u in uploads.items()}
    smashmix_loss(upper, ServerBatch.of(fresh, labels, weights), fed.algo.mixer, numpy_generator(0, "mix")).backward()
    opt.step()
    assert_same(fed.server.uppers[0], upper, atol=1e-6)
    for i in range(3):
        s = uploads[i].detach().requires_grad_(True)
        expected, = torch.autograd.grad(F.cross_entropy(start(s), labels[i]), s)
        torch.testing.assert_close(cut[i], expected, atol=1e-7, rtol=1e-5)


def own_and_joint_cut_gradients(upper: nn.Module, uploads, labels, weights):
    """Each client's ∂L_i/∂s_i from its own batch alone, and the gradient of Σ_j δ_j L_j over the joint batch at
    s_i divided by δ_i; both from `upper` in training mode, left unchanged."""
    own, joint_upper = {}, copy.deepcopy(upper).train()
    for i, u in uploads.items():
        s = u.detach().requires_grad_(True)
        own[i], = torch.autograd.grad(F.cross_entropy(copy.deepcopy(upper).train()(s), labels[i]), s)
    s = torch.cat([uploads[i] for i in uploads]).detach().requires_grad_(True)
    logits = joint_upper(s).split([len(labels[i]) for i in uploads])
    loss = sum(weights[i] * F.cross_entropy(out, labels[i]) for i, out in zip(uploads, logits))
    grad, = torch.autograd.grad(loss, s)
    joint = {i: g / weights[i] for i, g in zip(uploads, grad.split([len(labels[i]) for i in uploads]))}
    return own, joint


@pytest.mark.parametrize("model", ["cnn", "resnet"])
def test_cut_gradient_is_the_clients_own_loss_gradient_unless_the_server_has_batchnorm(model, data):
    """The server forwards all uploads as one batch. Without layers that couple samples (the CNN) client i's cut
    gradient is ∂L_i/∂s_i of its own batch; the ResNet's upper BatchNorm (training mode) normalizes by the joint
    batch's statistics, so L_j depends on s_i too and the cut gradient is the joint loss's, not the client's own."""
    x, y = data
    fed = make_federation("psl", sizes=[1, 3], n_clients=2, model=model)
    upper = copy.deepcopy(fed.server.uppers[0])
    uploads, labels = uploads_of(fed, x, y)
    weights = fed.weights([0, 1])
    _, cut = server_step(fed.algo, fed.server, uploads, labels, weights, numpy_generator(0, "mix"))
    own, joint = own_and_joint_cut_gradients(upper, uploads, labels, weights)
    for i in (0, 1):
        torch.testing.assert_close(cut[i], joint[i], atol=1e-7, rtol=1e-5)
        relative = float((own[i] - cut[i]).norm() / own[i].norm())
        assert relative < 1e-5 if model == "cnn" else relative > 0.05, relative


def test_smashmix_updates_the_server_batchnorm_statistics_with_the_mixed_batch(data):
    """The mixed forward runs in training mode: each step moves the ResNet server's running statistics twice (the
    joint real batch, then the mixed one), so evaluation normalizes by statistics of real and mixed samples."""
    x, y = data
    after = {}
    for mix in (True, False):
        fed = make_federation("locfedmix", sizes=[1, 1, 1], n_clients=3, model="resnet", algo__mix=mix)
        uploads, labels = uploads_of(fed, x, y)
        server_step(fed.algo, fed.server, uploads, labels, fed.weights([0, 1, 2]), numpy_generator(0, "mix"))
        after[mix] = fed.server.uppers[0].state_dict()
    counters = [k for k in after[True] if k.endswith("num_batches_tracked")]
    assert counters and all(int(after[True][k]) == 2 and int(after[False][k]) == 1 for k in counters)
    means = [k for k in after[True] if k.endswith("running_mean")]
    assert any(not torch.allclose(after[True][k], after[False][k]) for k in means)


def test_locsplitfed_sends_nothing_down_and_clients_follow_their_local_loss(data):
    """The engine's whole step (its own uploads, not copies detached here): no gradient message goes down, each
    client moves by its local head's loss alone, and the server by Σ δ_i L_i on what was uploaded."""
    x, y = data
    fed = make_federation("locsplitfed", sizes=[4, 4], n_clients=2, **SGD)
    plan = {0: torch.arange(0, 4), 1: torch.arange(4, 8)}
    upper = copy.deepcopy(fed.server.uppers[0])
    expected, uploads = {}, {}
    for i, idx in plan.items():
        lower, head = copy.deepcopy(fed.clients.lower(i)), copy.deepcopy(fed.clients.head(i))
        uploads[i] = lower(x[idx]).detach()
        opt = torch.optim.SGD(list(lower.parameters()) + list(head.parameters()), lr=0.1)
        F.cross_entropy(head(lower(x[idx])), y[idx]).backward()
        opt.step()
        expected[i] = (lower, head)
    weights = fed.weights([0, 1])
    server_opt = torch.optim.SGD(upper.parameters(), lr=0.1)
    sum(weights[i] * F.cross_entropy(upper(uploads[i]), y[idx]) for i, idx in plan.items()).backward()
    server_opt.step()
    data_step(x, y)(fed, plan)
    sent = fed.ledger.close()
    assert [m.kind for m in sent if m.direction == "down"] == []
    assert sorted((m.client, m.kind) for m in sent) == [(0, "labels"), (0, "smashed"), (1, "labels"), (1, "smashed")]
    for i, (lower, head) in expected.items():
        assert_same(fed.clients.lower(i), lower, atol=1e-7)
        assert_same(fed.clients.head(i), head, atol=1e-7)
    assert_same(fed.server.uppers[0], upper, atol=1e-7)


def test_sflv1_keeps_one_upper_copy_per_client_and_averages_them(data):
    x, y = data
    fed = make_federation("sflv1", sizes=[8, 24], n_clients=2, **SGD)
    assert len(fed.server.uppers) == 2
    start = copy.deepcopy(fed.server.uppers[0])
    uploads, labels = uploads_of(fed, x, y)
    server_step(fed.algo, fed.server, uploads, labels, fed.weights([0, 1]), numpy_generator(0, "mix"))
    expected = []
    for i in (0, 1):
        upper = copy.deepcopy(start)
        F.cross_entropy(upper(uploads[i].detach()), labels[i]).backward()
        torch.optim.SGD(upper.parameters(), lr=0.1).step()
        expected.append(params(upper))
        assert_same(fed.server.uppers[i], expected[i], atol=1e-7)
    from locfedmix.engines.flow.exchange import synchronize

    synchronize(fed, fed.algo.sync, [0, 1])
    mean = [0.25 * a + 0.75 * b for a, b in zip(*expected)]
    for upper in fed.server.uppers:
        assert_same(upper, mean, atol=1e-6)


def test_sflv2_serves_clients_in_turn_from_the_global_model_then_averages(data):
    x, y = data
    fed = make_federation("sflv2", sizes=[8, 8], n_clients=2, **SGD)
    start_lower, upper = copy.deepcopy(fed.clients.lower(0)), copy.deepcopy(fed.server.uppers[0])
    idx = split_indices(2, 8)
    train_round(fed, idx, 4, 1, data_step(x, y))
    order = numpy_generator(fed.seed, "order", 1).permutation(2)
    upper_opt = torch.optim.SGD(upper.parameters(), lr=0.1)
    lowers = {}
    for i in order:
        lower = copy.deepcopy(start_lower)
        opt = torch.optim.SGD(lower.parameters(), lr=0.1)
        for b in client_batches(idx[i], 4, numpy_generator(fed.seed, "batches", int(i), 1)):
            opt.zero_grad(), upper_opt.zero_grad()
            F.cross_entropy(upper(lower(x[b])), y[b]).backward()
            opt.step(), upper_opt.step()
        lowers[int(i)] = params(lower)
    assert_same(fed.server.uppers[0], upper, atol=1e-6)
    for i in range(2):
        assert_same(fed.clients.lower(i), [0.5 * a + 0.5 * b for a, b in zip(lowers[0], lowers[1])], atol=1e-6)


def test_reconstruction_regularizer_gradients(data):
    x, y = data
    gamma = 0.3
    fed = make_federation("locfedmix", sizes=[1], algo__gamma=gamma, **SGD)
    lower, decoder = copy.deepcopy(fed.clients.lower(0)), copy.deepcopy(fed.clients.head(0))
    cut_grad = torch.randn(4, *lower(x[:4]).shape[1:])
    s = lower(x[:4])
    rec = F.mse_loss(decoder(s), x[:4])
    g_server = torch.autograd.grad(s, list(lower.parameters()), cut_grad, retain_graph=True)
    g_rec = torch.autograd.grad(rec, list(lower.parameters()) + list(decoder.parameters()))
    n = len(g_server)
    expected_lower = [p - 0.1 * (gs + gamma * gr) for p, gs, gr in zip(lower.parameters(), g_server, g_rec[:n])]
    expected_decoder = [p - 0.1 * gr for p, gr in zip(decoder.parameters(), g_rec[n:])]
    batches = {0: (x[:4], y[:4])}
    fed.clients.backward_and_step(fed.algo.objective, fed.clients.forward(batches), {0: cut_grad}, batches)
    assert_same(fed.clients.lower(0), [e.detach() for e in expected_lower], atol=1e-6)
    assert_same(fed.clients.head(0), [e.detach() for e in expected_decoder], atol=1e-6)


def test_fedavg_every_t_steps_synchronizes_mid_round(data):
    """Averaged after steps 3, 6, ...: the models are the δ-weighted mean of what psl (the same steps, never
    averaged) holds at that point, not merely equal to each other."""
    x, y = data
    sizes = [12, 10, 9]  # three batches of 4 each; δ = 12/31, 10/31, 9/31
    idx = [np.arange(0, 12), np.arange(12, 22), np.arange(22, 31)]
    fed = make_federation("sfl", sizes=sizes, n_clients=3, algo__sync_every=3, **SGD)
    psl = make_federation("psl", sizes=sizes, n_clients=3, **SGD)
    train_round(fed, idx, 4, 1, data_step(x, y))
    train_round(psl, idx, 4, 1, data_step(x, y))
    assert fed.step == 3
    mean = [sum(s / 31 * p for s, p in zip(sizes, ps, strict=True))
            for ps in zip(*(params(psl.clients.lower(i)) for i in range(3)), strict=True)]
    for i in range(3):
        assert_same(fed.clients.lower(i), mean, atol=1e-6)
    assert_same(fed.server.uppers[0], psl.server.uppers[0])
    fed = make_federation("sfl", sizes=[16, 16, 16], n_clients=3, algo__sync_every=3)
    train_round(fed, split_indices(3, 16), 4, 1, data_step(x, y))  # 4 steps: averaged after step 3, then one more step
    assert fed.step == 4
    assert not fed.clients.identical()
    fed = make_federation("sfl", sizes=[16, 16, 16], n_clients=3, algo__sync_every=2)
    train_round(fed, split_indices(3, 16), 4, 1, data_step(x, y))
    assert fed.clients.identical()


def test_sglr_without_gradmix_and_lr_scaling_equals_psl(data):
    psl = run_steps("psl", data)
    plain = run_steps("sglr", data, algo__gradmix_fraction=0.0, algo__server_lr_exponent=0.0)
    for i in range(3):
        assert_same(psl.clients.lower(i), plain.clients.lower(i))
    assert_same(psl.server.uppers[0], plain.server.uppers[0])


def test_mix2sfl_without_smashmix_and_gradmix_equals_sfl(data):
    sfl = run_steps("sfl", data)
    plain = run_steps("mix2sfl", data, algo__mix=False, algo__gradmix_fraction=0.0)
    for i in range(3):
        assert_same(sfl.clients.lower(i), plain.clients.lower(i))
    assert_same(sfl.server.uppers[0], plain.server.uppers[0])


def test_gradmix_gives_the_chosen_clients_their_weighted_mean_gradient():
    from locfedmix.algorithms.gradmix import mix_gradients
    from locfedmix.algorithms.parts import GradMix

    grads = {0: torch.full((2, 3), 1.0), 1: torch.full((2, 3), 4.0), 2: torch.full((2, 3), 10.0)}
    weights = {0: 0.5, 1: 0.25, 2: 0.25}
    everyone = mix_gradients(grads, weights, GradMix(1.0), np.random.default_rng(0))
    for g in everyone.values():
        assert torch.allclose(g, torch.full((2, 3), 0.5 * 1 + 0.25 * 4 + 0.25 * 10))
    assert mix_gradients(grads, weights, GradMix(0.0), np.random.default_rng(0)) == grads
    half = mix_gradients({**grads, 3: torch.zeros(2, 3)}, {**weights, 3: 0.25}, GradMix(0.5),
                         np.random.default_rng(1))
    changed = [i for i in range(4) if not torch.equal(half[i], ({**grads, 3: torch.zeros(2, 3)})[i])]
    assert len(changed) == 2 and torch.equal(half[changed[0]], half[changed[1]])


def test_sglr_scales_the_server_learning_rate_with_the_number_of_clients():
    fed = make_federation("sglr", sizes=[1] * 4, n_clients=4, server_optimizer__lr=0.01)
    assert fed.server.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 4 ** 0.5)
    assert make_federation("psl", sizes=[1] * 4, n_clients=4, server_optimizer__lr=0.01).server.optimizers[0] \
        .param_groups[0]["lr"] == pytest.approx(0.01)


class ComputeCounter(TorchDispatchMode):
    """Counts the operators that compute (views excluded): on a GPU, each is a kernel launch."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("algorithm", ["psl", "locfedmix", "sglr"])
def test_a_step_computes_with_as_many_operators_for_40_clients_as_for_4(algorithm, data):
    """The server sees one batch however many clients sent it: the data gather, the loss, SmashMix's pairs, the
    backward and the cut gradients are a fixed number of operators, not a few per client."""
    x, y = data
    counts = []
    for n in (4, 40):
        fed = make_federation(algorithm, n_clients=n)
        plan = {i: torch.tensor([i]) for i in range(n)}
        with ComputeCounter() as counter:
            batches = gather_batches(x, y, plan)
        uploads = {i: fed.clients.lower(i)(bx).detach().requires_grad_(True) for i, (bx, _) in batches.items()}
        labels = {i: by for i, (_, by) in batches.items()}
        with counter:
            server_step(fed.algo, fed.server, uploads, labels, fed.weights(list(range(n))), numpy_generator(0, "mix"))
        counts.append(counter.count)
    assert counts[0] == counts[1]
