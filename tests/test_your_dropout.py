"""A user's dropout draws its masks from keys derived from the seed: the rate is p, each client (and each server
copy) has its own key, which FedAvg and the relay leave with it, the masks are the same under vmap as in a loop,
and a resumed run draws the masks of an uninterrupted one."""

import copy

import pytest
import torch
from conftest import interrupted_in_round
from test_your_model import TextClassifier, text_data, text_parts
from torch import nn
from torch.func import functional_call, vmap

from locfedmix import Model, UserError, run, validate
from locfedmix.algorithms.fedavg import federated_average
from locfedmix.engines.backends.stacked import StackedModule
from locfedmix.engines.transports.flower_records import fingerprint
from locfedmix.latency.flops import count_flops
from locfedmix.models.dropout import COUNT, KEY, Keyed, KeyedDraws, key_for, keep_mask, keyed, set_key


def client_dropout_model() -> Model:
    """The text classifier cut after its encoder: the clients run both encoder layers' dropout (p = 0.1)."""
    return Model(lambda shape, n: TextClassifier(n_classes=n), cut="encoder", input_dtype=torch.long, **text_parts())


def mlp(p: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return keyed(nn.Sequential(nn.Linear(8, 32), nn.Dropout(p), nn.Linear(32, 4)), torch.rand(1, 8), "test")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_drop_rate_is_p_on_a_large_tensor(p):
    n = 1_000_000
    kept = keep_mask(key_for(3, "lower", 0), torch.tensor(0), 1, (n,), p, torch.float32)
    assert set(kept.unique().tolist()) == {0.0, 1.0}
    assert abs((1 - kept.mean().item()) - p) < 5 * (p * (1 - p) / n) ** 0.5  # five standard deviations


def test_a_mask_is_a_function_of_key_counter_and_call_alone():
    key = key_for(3, "lower", 0)
    mask = lambda k, count, call: keep_mask(k, torch.tensor(count), call, (64, 64), 0.5, torch.float32)
    assert torch.equal(mask(key, 4, 1), mask(key.clone(), 4, 1))
    for other in (mask(key_for(3, "lower", 1), 4, 1), mask(key_for(4, "lower", 0), 4, 1), mask(key, 5, 1),
                  mask(key, 4, 2), mask(key_for(3, "upper", 0), 4, 1)):
        assert 0.4 < (other != mask(key, 4, 1)).float().mean() < 0.6  # independent masks disagree half the time


def test_each_client_draws_its_own_masks_and_vmap_draws_the_loops():
    net = mlp()
    clients = [copy.deepcopy(net) for _ in range(3)]
    for i, c in enumerate(clients):
        set_key(c, 7, "lower", i)
    x = torch.rand(3, 5, 8)
    looped = torch.stack([c(x[i]) for i, c in enumerate(clients)])
    assert not torch.equal(looped[0], looped[1])
    stack = StackedModule(net, 3)
    stack.set_keys(7, "lower", 0)
    stacked = vmap(lambda p, b, v: functional_call(net, (p, b), (v,)), randomness="different")(
        stack.params, stack.buffers, x)
    torch.testing.assert_close(stacked, looped)
    assert stack.buffers[COUNT].tolist() == [1, 1, 1] and [int(c.dropout_count) for c in clients] == [1, 1, 1]


def test_evaluation_drops_nothing_and_counts_nothing():
    net = mlp().eval()
    x = torch.rand(4, 8)
    torch.testing.assert_close(net(x), net.net(x), rtol=0, atol=0)
    assert int(net.dropout_count) == 0


def test_fedavg_and_the_relay_leave_each_client_its_own_key():
    clients = [mlp() for _ in range(2)]
    for i, c in enumerate(clients):
        set_key(c, 1, "lower", i)
        c(torch.rand(2, 8))  # counters move
    with torch.no_grad():
        clients[1].net[0].weight.add_(1.0)
    keys = [c.dropout_key.clone() for c in clients]
    expected = 0.25 * clients[0].net[0].weight + 0.75 * clients[1].net[0].weight
    federated_average(clients, [0.25, 0.75])
    assert [c.dropout_key.tolist() for c in clients] == [k.tolist() for k in keys]
    for c in clients:
        torch.testing.assert_close(c.net[0].weight, expected)
    stack = StackedModule(clients[0], 2)
    stack.set_keys(1, "lower", 0)
    stack.average([0.5, 0.5])
    stack.set_rows(clients[1].state_dict(), 0)  # the relay's hand-over from client 1 to client 0
    assert stack.buffers[KEY].tolist() == [k.tolist() for k in keys]


def test_multi_head_attention_with_every_weight_kept_computes_torchs_attention():
    """The keyed path recomputes nn.MultiheadAttention's output from its weights; with the mask forced to keep
    everything it must give torch's own attention without dropout."""
    torch.manual_seed(0)
    for batch_first, shape in ((True, (3, 5, 16)), (False, (5, 3, 16)), (False, (5, 16))):
        attention = nn.MultiheadAttention(16, 2, dropout=0.3, batch_first=batch_first)
        q = torch.rand(shape)
        expected = attention.eval()(q, q, q, average_attn_weights=False)
        draws = KeyedDraws(key_for(0, "upper", 0), torch.tensor(0))
        draws.dropout = lambda dims, x, p=0.5, training=True, inplace=False: x
        with draws:
            got = attention.train()(q, q, q, average_attn_weights=False)
        torch.testing.assert_close(got, expected)


def test_a_random_draw_other_than_dropout_is_refused_in_one_line():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x)

    with pytest.raises(UserError, match=r"the server's segment draws torch\.randn_like in its forward") as err:
        keyed(Noisy(), torch.rand(1, 4), "server's segment")
    assert "\n" not in str(err.value)


def test_a_recurrent_layer_dropping_values_inside_torchs_kernel_is_refused():
    class Reader(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 4, num_layers=2, dropout=0.2, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(UserError, match=r"the client's segment's recurrent layer 'rnn' drops values between its "):
        keyed(Reader(), torch.rand(1, 3, 4), "client's segment")
    plain = nn.LSTM(4, 4, num_layers=2, batch_first=True)  # no dropout between its layers: nothing to refuse
    assert keyed(plain, torch.rand(1, 3, 4), "client's segment") is plain


def test_a_network_without_dropout_is_left_as_it_is():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))
    assert keyed(net, torch.rand(1, 4), "test") is net and not isinstance(net, Keyed)


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(engine, tmp_path, monkeypatch):
    model = client_dropout_model()
    config = validate({"algorithm": "sflv2", "dataset": "synthetic", "n_clients": 2, "rounds": 3, "batch_size": 4,
                       "seed": 4, "data": {"val_fraction": 0.0}, "engine": {"kind": engine}})
    run(config, tmp_path / "whole", progress=False, dataset=text_data(), model=model)
    with interrupted_in_round(monkeypatch, 3):
        run(config, tmp_path / "cut", progress=False, dataset=text_data(), model=model)
    run(config, tmp_path / "cut", progress=False, dataset=text_data(), model=model, resume=True)
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()


def test_the_latency_model_charges_the_network_as_written():
    """Keyed attention dropout computes the attention output twice; the FLOPs counted are the network's own."""
    model = client_dropout_model()
    lower, upper = model.build((6,), 3)
    wrapped = keyed(lower, model.example((6,)), "client's segment")
    assert isinstance(wrapped, Keyed)
    assert count_flops(wrapped, upper, None, (6,)) == count_flops(wrapped.net, upper, None, (6,))


def test_a_deployed_clients_fingerprint_leaves_its_key_out():
    """The server compares clients' fingerprints to know whether they hold the model it expects (FedAvg's average);
    clients holding that model differ in their keys alone."""
    clients = [mlp() for _ in range(2)]
    for i, c in enumerate(clients):
        set_key(c, 1, "lower", i)
    assert fingerprint(clients[0].state_dict()) == fingerprint(clients[1].state_dict())
    with torch.no_grad():
        clients[1].net[0].weight.add_(1.0)
    assert fingerprint(clients[0].state_dict()) != fingerprint(clients[1].state_dict())
