"""The ledger against hand counts, the latency model against hand-worked cases, and the `latency` command."""

import csv

import numpy as np
import pytest

from conftest import make_config, make_federation
from locfedmix.cli import main
from locfedmix.engines.flow.round import data_step, train_round
from locfedmix.latency.flops import SampleFlops, count_flops
from locfedmix.latency.ledger import Direction, Kind, Message
from locfedmix.latency.model import Profile, step_phases, transfer_seconds
from locfedmix.latency.report import round_breakdown
from locfedmix.models import build_decoder, build_split_model

# cnn on 1×8×8, cut after two conv blocks: smashed data 64×2×2 floats per sample
SMASHED = 64 * 2 * 2 * 4
LOWER = 4 * ((1 * 32 * 9 + 32) + (32 * 64 * 9 + 64))  # conv1 + conv2, weights and biases
AUX_HEAD = 4 * (64 * 10 + 10)  # global average pool → linear(64 → 10)
DECODER = 4 * ((64 * 16 * 9 + 16) + (16 * 1 * 9 + 1))  # conv3x3 64→16, conv3x3 16→1


def hand_count(algorithm: str) -> tuple[int, int]:
    """Bytes up and down for one round: 2 clients with 4 samples each, batch 2 (2 batches per client)."""
    batches, b = 2 * 2, 2
    up, down = batches * b * (SMASHED + 8), batches * b * SMASHED
    fedavg = 2 * LOWER
    extra = {
        "sl": (LOWER, LOWER),  # one relay hand-off, client 0 → client 1
        "psl": (0, 0),
        "sfl": (fedavg, fedavg),
        "sflv1": (fedavg, fedavg),  # the upper copies are averaged on the server: nothing crosses the network
        "sflv2": (fedavg, fedavg),
        "locsplitfed": (fedavg + 2 * AUX_HEAD, fedavg + 2 * AUX_HEAD - down),  # no gradient comes down
        "locfedmix": (fedavg + 2 * DECODER, fedavg + 2 * DECODER),
        "sglr": (0, 0),  # GradMix changes what comes down, not how much
        "mix2sfl": (fedavg, fedavg),
    }[algorithm]
    return up + extra[0], down + extra[1]


@pytest.mark.parametrize("algorithm", ["sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr",
                                       "mix2sfl"])
def test_ledger_equals_a_hand_count(algorithm, data):
    x, y = data
    fed = make_federation(algorithm, sizes=[4, 4], n_clients=2)
    train_round(fed, [np.arange(0, 4), np.arange(4, 8)], 2, 1, data_step(x, y))
    assert (fed.ledger.total(Direction.UP), fed.ledger.total(Direction.DOWN)) == hand_count(algorithm)


def test_locsplitfed_sends_no_gradient_bytes(data):
    x, y = data
    fed = make_federation("locsplitfed", sizes=[4, 4], n_clients=2)
    train_round(fed, [np.arange(0, 4), np.arange(4, 8)], 2, 1, data_step(x, y))
    assert fed.ledger.totals[Direction.DOWN, Kind.GRADIENT] == 0
    assert fed.ledger.total(Direction.DOWN) == 2 * (LOWER + AUX_HEAD)  # only the averaged models


def test_labels_can_be_counted_narrower_than_int64(data):
    x, y = data
    fed = make_federation("psl", sizes=[4, 4], n_clients=2, latency__label_bytes=1)
    train_round(fed, [np.arange(0, 4), np.arange(4, 8)], 2, 1, data_step(x, y))
    assert fed.ledger.totals[Direction.UP, Kind.LABELS] == 8


FLOPS = SampleFlops(lower_fwd=1e6, lower_bwd=2e6, upper_fwd=3e6, upper_bwd=6e6, head_fwd=5e6, head_bwd=5e6)
PROFILE = Profile(client_flops=1e9, server_flops=1e10, uplink_bps=1e6, downlink_bps=2e6, link_delay_s=0.0)


def step_messages(gradient: bool) -> list[Message]:
    messages = [Message(i, Kind.SMASHED, Direction.UP, 4096) for i in (0, 1)]
    messages += [Message(i, Kind.LABELS, Direction.UP, 32) for i in (0, 1)]
    return messages + ([Message(i, Kind.GRADIENT, Direction.DOWN, 4096) for i in (0, 1)] if gradient else [])


def test_a_hand_worked_two_client_step():
    algo = make_config("psl", n_clients=2).resolved_algorithm()
    phases = step_phases(algo, FLOPS, PROFILE, {0: 4, 1: 4}, step_messages(True))
    # forward 4·1e6/1e9 = 0.004 s; backward 4·2e6/1e9 = 0.008 s; server 8·9e6/1e10 = 0.0072 s;
    # upload: two clients share the band, each sends 4128 B: 4128·8·2/1e6 = 0.066048 s; download 4096·8·2/2e6
    assert phases["upload"] == pytest.approx(0.066048)
    assert phases["download"] == pytest.approx(0.032768)
    assert phases["server_compute"] == pytest.approx(0.0072)
    assert phases["total"] == pytest.approx(0.004 + 0.066048 + 0.0072 + 0.032768 + 0.008)


def test_local_loss_clients_do_not_wait_for_the_server():
    algo = make_config("locsplitfed", n_clients=2).resolved_algorithm()
    phases = step_phases(algo, FLOPS, PROFILE, {0: 4, 1: 4}, step_messages(False))
    assert phases["download"] == 0
    # client: 4·(1e6 + 1e7 + 2e6)/1e9 = 0.052 s; link + server: 0.066048 + 0.0072 s → the larger one
    assert phases["total"] == pytest.approx(max(0.052, 0.066048 + 0.0072))


def test_decoder_work_overlaps_the_wait_for_the_gradient():
    algo = make_config("locfedmix", n_clients=2, algo__mix=False).resolved_algorithm()
    phases = step_phases(algo, FLOPS, PROFILE, {0: 4, 1: 4}, step_messages(True))
    assert phases["total"] == pytest.approx(0.004 + max(0.04, 0.066048 + 0.0072 + 0.032768) + 0.008)


def one_client_messages(client: int) -> list[Message]:
    return [Message(client, Kind.SMASHED, Direction.UP, 4096), Message(client, Kind.LABELS, Direction.UP, 32),
            Message(client, Kind.GRADIENT, Direction.DOWN, 4096)]


def test_splitfed_v2_charges_each_step_to_one_client_with_the_whole_band():
    """SplitFed v2 serves one client's whole local epoch after another's: a client's next batch waits for the server's
    gradient, which waits for every client served before it, so its compute and links are on the critical path
    (docs/algorithms.md, "Latency model"). One step, client 0 alone: forward 0.004 s, upload 4128·8/1e6, server
    4·9e6/1e10, download 4096·8/2e6, backward 0.008 s, all in series."""
    algo = make_config("sflv2", n_clients=2).resolved_algorithm()
    phases = step_phases(algo, FLOPS, PROFILE, {0: 4}, one_client_messages(0))
    assert phases["upload"] == pytest.approx(0.033024) and phases["download"] == pytest.approx(0.016384)
    assert phases["total"] == pytest.approx(0.004 + 0.033024 + 0.0036 + 0.016384 + 0.008)


def test_sflv2_round_is_the_sum_of_its_clients_steps():
    """Two clients of two batches each: four one-client steps in series, then the FedAvg exchange."""
    fed = make_federation("sflv2", sizes=[8, 8], n_clients=2)
    breakdown = round_breakdown(fed, [np.arange(0, 8), np.arange(8, 16)], 4)
    step = step_phases(fed.algo, fed.flops, fed.profile, {0: 4}, [
        Message(0, Kind.SMASHED, Direction.UP, 4 * SMASHED), Message(0, Kind.LABELS, Direction.UP, 32),
        Message(0, Kind.GRADIENT, Direction.DOWN, 4 * SMASHED)])["total"]
    assert breakdown["steps"] == 4
    assert breakdown["round_total"] - breakdown["sync"] == pytest.approx(4 * step)


def test_splitfed_v1_server_copies_share_the_servers_flop_rate():
    """N upper copies on one server do N batches' work: charged as psl's one batch of all samples (8·9e6/1e10)."""
    v1 = step_phases(make_config("sflv1", n_clients=2).resolved_algorithm(), FLOPS, PROFILE, {0: 4, 1: 4},
                     step_messages(True))
    psl = step_phases(make_config("psl", n_clients=2).resolved_algorithm(), FLOPS, PROFILE, {0: 4, 1: 4},
                      step_messages(True))
    assert v1["server_compute"] == pytest.approx(0.0072) and v1 == psl


def test_gradmix_sends_each_client_its_gradient():
    """GradMix changes what comes down, not how: every client is sent its (mixed or own) gradient, as FedAvg sends
    every client the averaged model, so sglr's download is psl's (two clients share the band: 4096·8·2/2e6)."""
    sglr = step_phases(make_config("sglr", n_clients=2).resolved_algorithm(), FLOPS, PROFILE, {0: 4, 1: 4},
                       step_messages(True))
    assert sglr["download"] == pytest.approx(0.032768)
    assert sglr["total"] == pytest.approx(0.004 + 0.066048 + 0.0072 + 0.032768 + 0.008)


def test_doubling_the_uplink_rate_halves_upload_time():
    messages = step_messages(True)
    slow = transfer_seconds(messages, Direction.UP, 1e6, 0.0)
    fast = transfer_seconds(messages, Direction.UP, 2e6, 0.0)
    assert fast == pytest.approx(slow / 2)


def test_smashmix_adds_server_work_but_no_bytes(data):
    with_mix = make_config("locfedmix", n_clients=2).resolved_algorithm()
    without = make_config("locfedmix", n_clients=2, algo__mix=False).resolved_algorithm()
    a = step_phases(with_mix, FLOPS, PROFILE, {0: 4, 1: 4}, step_messages(True))
    b = step_phases(without, FLOPS, PROFILE, {0: 4, 1: 4}, step_messages(True))
    assert a["server_compute"] == pytest.approx(2 * b["server_compute"])  # one partner each: 8 more samples
    assert a["upload"] == b["upload"]


def sl_round_seconds(n_clients: int) -> float:
    fed = make_federation("sl", sizes=[8] * n_clients, n_clients=n_clients)
    return round_breakdown(fed, [np.arange(8 * i, 8 * (i + 1)) for i in range(n_clients)], 4)["round_total"]


def test_sequential_sl_round_latency_grows_linearly_with_clients():
    t2, t4, t8 = sl_round_seconds(2), sl_round_seconds(4), sl_round_seconds(8)
    assert t4 > t2 > 0
    assert t8 - t4 == pytest.approx(2 * (t4 - t2))


def test_dry_round_charges_what_a_trained_round_charges(data):
    x, y = data
    trained = make_federation("locfedmix", sizes=[4, 4], n_clients=2)
    train_round(trained, [np.arange(0, 4), np.arange(4, 8)], 2, 1, data_step(x, y))
    dry = make_federation("locfedmix", sizes=[4, 4], n_clients=2)
    round_breakdown(dry, [np.arange(0, 4), np.arange(4, 8)], 2)
    assert dict(dry.ledger.totals) == dict(trained.ledger.totals)
    assert dry.clock.seconds == pytest.approx(trained.clock.seconds)


QUICK = """
algorithm = "sfl"
dataset = "synthetic"
n_clients = 3
samples_per_client = 40
rounds = 2
batch_size = 8
"""


def test_metrics_carry_cumulative_bytes_and_simulated_time(tmp_path):
    (tmp_path / "c.toml").write_text(QUICK)
    assert main(["run", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "o" / "metrics.csv").open()))
    for column in ("bytes_up", "bytes_down", "simulated_seconds"):
        values = [float(r[column]) for r in rows]
        assert 0 < values[0] < values[1]
    assert int(rows[1]["bytes_up"]) == 2 * int(rows[0]["bytes_up"])  # identical rounds cost the same


def test_latency_command_prints_every_algorithm(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(QUICK)
    assert main(["latency", "--config", str(tmp_path / "c.toml"), "--set", "latency.profile='edge-wifi'"]) == 0
    out = capsys.readouterr().out
    for name in ("sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr", "mix2sfl"):
        assert f"| {name} |" in out
    assert main(["latency", "--config", str(tmp_path / "c.toml"), "--set", "latency.profile='moon'"]) == 2
    assert "unknown latency profile 'moon'" in capsys.readouterr().err



def test_the_decoder_is_charged_as_specified_not_as_computed():
    """The simulator computes the decoder's first layer factored (models.auxiliary.UpsampledConv, ~7x fewer
    multiply-adds); the latency model charges InfoPro's resize-then-convolve: 2 FLOPs per multiply-add of the two
    3×3 convolutions at the input resolution, none for the resizing."""
    model = build_split_model("cnn", (3, 32, 32), 10)
    flops = count_flops(model.lower, model.upper, build_decoder(model.cut_shape, (3, 32, 32)), (3, 32, 32))
    assert flops.head_fwd == 2 * 32 * 32 * 9 * (64 * 16 + 16 * 3)
