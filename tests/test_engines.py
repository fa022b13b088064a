"""The stacked (vectorized) client pool computes exactly what the per-client loop computes."""

import copy

import numpy as np
import pytest
import torch

from conftest import make_federation
from locfedmix.algorithms.parts import ServerGradient
from locfedmix.config import OptimizerConfig
from locfedmix.engines.backends.looped import LoopClients
from locfedmix.engines.flow.round import data_step, train_round
from locfedmix.engines.backends.memory import ActivationBudget
from locfedmix.engines.backends.stacked_optim import StackedOptimizer
from locfedmix.engines.backends.stacked import StackedModule, channels_last_maps

ALGORITHMS = ["sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr", "mix2sfl"]
# unequal shares: clients run out of batches at different steps and last batches differ in size
SIZES = [10, 6, 7]


def trained(algorithm: str, engine: str, data, **overrides):
    """Two rounds on 3 clients; the loop keeps the stacked pool's contiguous layout unless told otherwise
    (backends.looped.loop_layout)."""
    x, y = data
    overrides.setdefault("engine__layout", "contiguous")
    fed = make_federation(algorithm, sizes=SIZES, n_clients=3, engine__kind=engine, **overrides)
    starts = np.cumsum([0, *SIZES])
    indices = [np.arange(starts[i], starts[i + 1]) for i in range(3)]
    losses = [train_round(fed, indices, 4, r, data_step(x, y)) for r in (1, 2)]
    return fed, losses


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every entry of two state dicts, by name (parameters and buffers alike), to float rounding."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        close(sa[key].float(), sb[key].float())


def same_models(a, b) -> None:
    """Two trained federations of 3 clients hold the same lower models, heads and upper model(s), to float rounding."""
    assert a.clients.has_head == b.clients.has_head and len(a.server.uppers) == len(b.server.uppers)
    for i in range(3):
        same_state(a.clients.lower(i), b.clients.lower(i))
        if a.clients.has_head:
            same_state(a.clients.head(i), b.clients.head(i))
    for ua, ub in zip(a.server.uppers, b.server.uppers, strict=True):
        same_state(ua, ub)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("optimizer", [{"client_optimizer__name": "adam"},
                                       {"client_optimizer__name": "sgd", "client_optimizer__momentum": 0.9,
                                        "client_optimizer__lr": 0.05, "client_optimizer__weight_decay": 1e-3}])
def test_vectorized_engine_equals_the_loop(algorithm, optimizer, data):
    loop, loop_losses = trained(algorithm, "loop", data, **optimizer)
    stacked, stacked_losses = trained(algorithm, "vectorized", data, **optimizer)
    np.testing.assert_allclose(loop_losses, stacked_losses, rtol=1e-5)
    same_models(loop, stacked)
    assert dict(loop.ledger.totals) == dict(stacked.ledger.totals)


@pytest.mark.parametrize("algorithm", ["sl", "sfl", "locfedmix"])
def test_optimizer_reset_on_sync_is_the_same_in_both_pools(algorithm, data):
    """client_optimizer.on_sync = "reset" after the relay's hand-offs and FedAvg (heads included), with a client
    left out of a round: the pools agree, and the reset changes the training. SGD with momentum, whose first step
    after a reset differs from the others, on both sides: Adam's steps are about ±lr wherever a gradient entry is not
    tiny, and where it is, float rounding picks the sign (the stacked pool's Adam reset is checked against torch's
    in test_algorithms.py)."""
    sgd = {"client_optimizer__name": "sgd", "client_optimizer__momentum": 0.9, "client_optimizer__lr": 0.05,
           "server_optimizer__name": "sgd", "server_optimizer__lr": 0.05, "participation__fraction": 0.67}
    loop, loop_losses = trained(algorithm, "loop", data, client_optimizer__on_sync="reset", **sgd)
    stacked, stacked_losses = trained(algorithm, "vectorized", data, client_optimizer__on_sync="reset", **sgd)
    kept, _ = trained(algorithm, "loop", data, **sgd)
    np.testing.assert_allclose(loop_losses, stacked_losses, rtol=1e-5)
    same_models(loop, stacked)
    assert any(not torch.equal(a, b) for a, b in zip(loop.server.uppers[0].parameters(),
                                                     kept.server.uppers[0].parameters()))


def test_adam_state_matches_per_client_torch_adam(data):
    loop, _ = trained("locfedmix", "loop", data)
    stacked, _ = trained("locfedmix", "vectorized", data)
    opt = stacked.clients.optimizer
    for i in range(3):
        torch_state = loop.clients.optimizer.state
        for k, p in enumerate(loop.clients.clients[i].parameters()):
            assert float(torch_state[p]["step"]) == opt.steps[i].item()
            close(torch_state[p]["exp_avg"], opt.first[k][i])
            close(torch_state[p]["exp_avg_sq"], opt.second[k][i])


def test_clients_that_sit_out_a_step_are_not_touched():
    module = StackedModule(torch.nn.Linear(3, 2), 4)
    params = list(module.params.values())
    opt = StackedOptimizer(params, 4, OptimizerConfig(name="adam", lr=0.01))
    before = [p.detach().clone() for p in params]
    out = module([1, 3], torch.randn(2, 5, 3))
    out.square().sum().backward()
    module.take_grads()
    opt.step(torch.tensor([1, 3]))
    for p, b in zip(params, before):
        assert torch.equal(p[0], b[0]) and torch.equal(p[2], b[2])
        assert not torch.equal(p[1], b[1]) and not torch.equal(p[3], b[3])
    assert opt.steps.tolist() == [0, 1, 0, 1]


def test_gradients_of_lent_rows_land_in_their_rows_of_the_stack():
    """Groups lent as separate leaves (a contiguous run, a gathered pair, a row whose loss is never back-propagated):
    each row's gradient is what that client's own module gets, zero for the row without a loss — also where the
    gradient buffer, kept from step to step, held that row's gradient of the step before."""
    g = torch.Generator().manual_seed(2)
    module = StackedModule(torch.nn.Linear(3, 2), 5)
    with torch.no_grad():
        module.params["weight"].copy_(torch.randn(5, 2, 3, generator=g))
    x = torch.randn(5, 4, 3, generator=g)
    module(list(range(5)), x).square().sum().backward()  # every row: the buffer is filled, not zeroed
    module.take_grads()
    assert module.params["weight"].grad[3].any()
    losses = [module(ids, x[ids]).square().sum() for ids in ([0, 1], [2, 4], [3])]
    (losses[0] + losses[1]).backward()
    module.take_grads()
    for i in range(5):
        own = module.module(i)
        if i != 3:
            own(x[i]).square().sum().backward()
            torch.testing.assert_close(module.params["weight"].grad[i], own.weight.grad)
        else:
            assert not module.params["weight"].grad[i].any()
    assert not module.lent
    module([0], x[:1])
    module.take_grads()
    assert module.params["weight"].grad is None


@pytest.mark.parametrize("cfg", [dict(name="adam", lr=0.01, weight_decay=0.1), dict(name="sgd", lr=0.1),
                                 dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.1)])
def test_stacked_optimizer_equals_one_torch_optimizer_per_client(cfg):
    """Clients step unequally often (so rows stand at different step counts, and fused updates run per count);
    every row ends where its own torch optimizer takes a separate copy of the weights."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(4, 3, 2, generator=g)
    stacked = start.clone().requires_grad_(True)
    opt = StackedOptimizer([stacked], 4, OptimizerConfig(**cfg))
    torch_opt = getattr(torch.optim, {"adam": "Adam", "sgd": "SGD"}[cfg["name"]])
    singles = [start[i].clone().requires_grad_(True) for i in range(4)]
    single_opts = [torch_opt([p], **{k: v for k, v in cfg.items() if k != "name"}) for p in singles]
    for clients in ([0, 1, 2, 3], [1, 3], [0, 1, 2, 3], [2], [0, 1, 2, 3]):
        grad = torch.randn(4, 3, 2, generator=g)
        stacked.grad = grad.clone()
        opt.step(torch.tensor(clients))
        for i in clients:
            singles[i].grad = grad[i].clone()
            single_opts[i].step()
    assert opt.steps.tolist() == [3, 4, 4, 4]
    for i in range(4):
        torch.testing.assert_close(stacked[i].detach(), singles[i].detach(), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("cfg", [dict(name="adam", lr=0.01, weight_decay=0.1),
                                 dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.1)])
def test_the_loops_one_optimizer_steps_as_one_torch_optimizer_per_client(cfg):
    """The loop pool steps every client's parameters in one optimizer call; clients that sit out steps (so stand at
    different step counts) end where separate copies with their own torch optimizers end."""
    g = torch.Generator().manual_seed(5)
    template = torch.nn.Linear(3, 2)
    pool = LoopClients(template, None, 3, OptimizerConfig(**cfg), ActivationBudget(1e6, template))
    singles = [copy.deepcopy(template) for _ in range(3)]
    torch_opt = getattr(torch.optim, {"adam": "Adam", "sgd": "SGD"}[cfg["name"]])
    single_opts = [torch_opt(m.parameters(), **{k: v for k, v in cfg.items() if k != "name"}) for m in singles]
    for clients in ([0, 1, 2], [1], [0, 2], [1]):
        batches = {i: (torch.randn(4, 3, generator=g), torch.zeros(4, dtype=torch.long)) for i in clients}
        cut_grads = {i: torch.randn(4, 2, generator=g) for i in clients}
        pool.backward_and_step(ServerGradient(), pool.forward(batches), cut_grads, batches)
        for i in clients:
            single_opts[i].zero_grad()
            singles[i](batches[i][0]).backward(cut_grads[i])
            single_opts[i].step()
    for i in range(3):
        for mine, theirs in zip(pool.lower(i).parameters(), singles[i].parameters()):
            torch.testing.assert_close(mine.detach(), theirs.detach(), atol=1e-7, rtol=1e-6)
    if cfg["name"] == "adam":
        assert [float(pool.optimizer.state[pool.lower(i).weight]["step"]) for i in range(3)] == [2, 3, 2]


def test_a_checkpoint_with_one_optimizer_per_client_resumes_exactly():
    """Checkpoints written when the loop pool kept one optimizer per client load into its one optimizer and continue
    as those optimizers would: client 0 has stepped once (Adam moments, bias correction at step 2 next), client 1
    never."""
    g = torch.Generator().manual_seed(2)
    template = torch.nn.Linear(3, 2)
    singles = [copy.deepcopy(template) for _ in range(2)]
    single_opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in singles]
    singles[0](torch.randn(4, 3, generator=g)).backward(torch.randn(4, 2, generator=g))
    single_opts[0].step()
    legacy = copy.deepcopy({"clients": [{"lower": m.state_dict(), "head": None, "optimizer": o.state_dict()}
                                        for m, o in zip(singles, single_opts)]})  # as saved: no shared tensors
    pool = LoopClients(template, None, 2, OptimizerConfig(name="adam", lr=0.01), ActivationBudget(1e6, template))
    pool.load_state_dict(legacy)
    batches = {i: (torch.randn(4, 3, generator=g), torch.zeros(4, dtype=torch.long)) for i in range(2)}
    cut_grads = {i: torch.randn(4, 2, generator=g) for i in range(2)}
    pool.backward_and_step(ServerGradient(), pool.forward(batches), cut_grads, batches)
    for i in range(2):
        single_opts[i].zero_grad()
        singles[i](batches[i][0]).backward(cut_grads[i])
        single_opts[i].step()
        for mine, theirs in zip(pool.lower(i).parameters(), singles[i].parameters()):
            torch.testing.assert_close(mine.detach(), theirs.detach(), atol=1e-7, rtol=1e-6)


def test_resnet_with_batchnorm_equals_the_loop():
    """With FedAvg after every round: BatchNorm's running statistics are averaged and its integer batch counter is
    the largest among the reporters (algorithms.fedavg), in both pools."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g)
    loop, _ = trained("sfl", "loop", (x, y), model="resnet")
    stacked, _ = trained("sfl", "vectorized", (x, y), model="resnet")
    assert loop.clients.identical() and stacked.clients.identical()
    counters = [v for k, v in loop.clients.lower(0).state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 6 for c in counters)  # client 0's 3 batches a round, the most of SIZES
    for i in range(3):
        # the stacked stem sums in another order (backends.stacked_layers.PatchConv2d); dividing by the small
        # batch's standard deviation, BatchNorm scales that rounding up a little
        a, b = loop.clients.lower(i).state_dict(), stacked.clients.lower(i).state_dict()
        assert list(a) == list(b)
        for k in a:
            torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-5)
    for a, b in zip(loop.server.uppers[0].state_dict().values(), stacked.server.uppers[0].state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5)


# SGD with momentum: Adam divides by the root of tiny second moments, which turns float-rounding differences of
# near-zero gradient entries (clipping shrinks many) into visible weight differences; plain adam is covered above.
DEFENCES = {"privacy__clip": 0.5, "privacy__noise_multiplier": 0.3, "privacy__nopeek": 0.2,
            "client_optimizer__name": "sgd", "client_optimizer__momentum": 0.9, "client_optimizer__lr": 0.05}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vectorized_engine_equals_the_loop_with_every_defence_on(algorithm, data):
    """Clipping, noise keyed by (step, client) and NoPeek under vmap give the loop's numbers, for every algorithm."""
    loop, loop_losses = trained(algorithm, "loop", data, **DEFENCES)
    stacked, stacked_losses = trained(algorithm, "vectorized", data, **DEFENCES)
    plain, plain_losses = trained(algorithm, "loop", data, **{k: v for k, v in DEFENCES.items() if "privacy" not in k})
    np.testing.assert_allclose(loop_losses, stacked_losses, rtol=1e-5)
    assert not np.allclose(loop_losses, plain_losses), "the defences must change the training"
    same_models(loop, stacked)  # heads (LocSplitFed's classifier, LocFedMix-SL's decoder) included


def test_the_decoder_gets_channels_last_maps_on_the_cpu_only():
    """On the CPU the stacked decoder reads channels-last maps (same values); CUDA's bilinear upsampling under vmap
    cannot query that layout, so maps elsewhere pass unchanged."""
    maps = torch.rand(2, 3, 4, 5, 5)
    last = channels_last_maps(maps)
    assert torch.equal(last, maps) and last.stride(2) == 1
    elsewhere = torch.empty(2, 3, 4, 5, 5, device="meta")
    assert channels_last_maps(elsewhere) is elsewhere


def test_the_loop_runs_conv_lowers_channels_last_on_the_cpu_with_the_same_step(data):
    """`auto` lays a convolutional lower model out channels-last on the CPU; one step then gives the contiguous
    layout's loss and weights to float rounding (SGD: no Adam normalisation of near-zero gradients)."""
    sgd = {"client_optimizer__name": "sgd", "server_optimizer__name": "sgd"}
    feds = {layout: make_federation("psl", n_clients=3, engine__kind="loop", engine__layout=layout, **sgd)
            for layout in ("auto", "contiguous")}
    conv = {k: [p for p in f.clients.lower(0).parameters() if p.dim() == 4][-1] for k, f in feds.items()}  # 32→64
    assert conv["auto"].is_contiguous(memory_format=torch.channels_last) and not conv["auto"].is_contiguous()
    assert conv["contiguous"].is_contiguous()
    x, y = data
    indices = [np.arange(4 * i, 4 * i + 4) for i in range(3)]
    losses = {k: train_round(f, indices, 4, 1, data_step(x, y)) for k, f in feds.items()}
    assert losses["auto"] == pytest.approx(losses["contiguous"], rel=1e-6)
    same_models(feds["auto"], feds["contiguous"])


def test_the_finite_check_passes_large_values_and_names_the_client_of_an_infinity():
    """One double-precision sum stands for every value: float32 values near the top of the range, whose float32
    sum overflows, pass; an infinity anywhere is found and named."""
    from locfedmix.engines.flow.interfaces import Smashed
    from locfedmix.engines.flow.step import check_finite
    from locfedmix.errors import NumericalError

    big = torch.full((1, 2, 3), 3e38)
    assert torch.isinf(torch.cat([big, big]).sum())
    check_finite(0.5, Smashed([([0], big), ([1, 2], torch.cat([big, big]))]), {})
    broken = torch.cat([big, big]).clone()
    broken[1, 0, 2] = -float("inf")
    with pytest.raises(NumericalError, match="client 2's smashed data"):
        check_finite(0.5, Smashed([([0], big), ([1, 2], broken)]), {})
    with pytest.raises(NumericalError, match="server loss"):
        check_finite(float("nan"), Smashed([([0], big)]), {})


def test_a_loop_clients_rows_are_views_whose_backward_copies_nothing():
    """The loop's one-client groups hand out rows by squeezing: the backward to the group is a view, not a
    zero-filled gradient with the row copied in."""
    from locfedmix.engines.flow.interfaces import rows

    out = torch.randn(1, 4, 3, requires_grad=True)
    ((i, row),) = rows([7], out)
    assert i == 7 and row.data_ptr() == out.data_ptr() and type(row.grad_fn).__name__.startswith("Squeeze")
    stacked = torch.randn(3, 4, 3)
    assert all(torch.equal(r, stacked[k]) for k, (_, r) in enumerate(rows([4, 5, 6], stacked)))
