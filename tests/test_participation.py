"""Participation and faults (issue #7): sampling, dropout, stragglers and the step deadline against hand counts,
the δ-weighted FedAvg oracle and the latency formulas; the defaults reproduce the numbers of the code before them."""

import copy
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from conftest import make_federation
from locfedmix.api import run
from locfedmix.config import ParticipationConfig, validate
from locfedmix.engines.flow.round import data_step, train_round
from locfedmix.engines.flow.participation import Participation
from locfedmix.evaluation import deployed_lower, relay_position
from locfedmix.latency.ledger import Direction, Kind
from locfedmix.latency.model import upload_arrivals

SMASHED = 64 * 2 * 2 * 4  # cnn on 1×8×8 cut after two conv blocks: bytes of one sample's smashed data
LOWER = 4 * ((1 * 32 * 9 + 32) + (32 * 64 * 9 + 64))


@dataclass(frozen=True)
class Scripted(Participation):
    """Everyone takes part; `script` says who fails at which of its batches in which round."""

    script: dict[int, dict[int, int]] = field(default_factory=dict)

    def failures(self, round_index: int, batches: dict[int, int]) -> dict[int, int]:
        return self.script.get(round_index, {})


def scripted(fed, **script):
    fed.participation = Scripted(fed.participation.n, fed.seed, script={int(r[1:]): s for r, s in script.items()})
    return fed


def indices(sizes):
    starts = np.cumsum([0, *sizes])
    return [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]


def recording(data):
    """data_step that also records which clients each executed step served."""
    served, execute = [], data_step(*data)

    def step(fed, plan):
        served.append(sorted(plan))
        return execute(fed, plan)

    return served, step


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_sampled_subset_has_the_promised_size_changes_and_repeats():
    policy = Participation.from_config(ParticipationConfig(fraction=0.3), n=20, seed=1)
    drawn = [policy.participants(r) for r in range(1, 11)]
    assert all(len(d) == 6 and len(set(d)) == 6 and d == sorted(d) and set(d) <= set(range(20)) for d in drawn)
    assert len({tuple(d) for d in drawn}) > 1
    again = Participation.from_config(ParticipationConfig(fraction=0.3), n=20, seed=1)
    assert drawn == [again.participants(r) for r in range(1, 11)]
    assert drawn != [Participation(20, 2, fraction=0.3).participants(r) for r in range(1, 11)]
    assert len(Participation(20, 1, fraction=0.01).participants(1)) == 1  # max(1, round(0.2))
    assert Participation(20, 1).participants(7) == list(range(20))


def test_failure_draws_stay_in_each_clients_steps_and_do_not_depend_on_the_others():
    policy = Participation(50, 3, dropout=0.3)
    failed = policy.failures(4, {i: 1 + i % 5 for i in range(50)})
    assert all(1 <= k <= 1 + i % 5 for i, k in failed.items())
    assert 5 <= len(failed) <= 25  # p = 0.3 of 50
    evens = {i: k for i, k in failed.items() if i % 2 == 0}
    assert policy.failures(4, {i: 1 + i % 5 for i in range(0, 50, 2)}) == evens
    assert Participation(50, 3, dropout=1.0).failures(4, {0: 3, 1: 0}).keys() == {0}  # no batches, nothing to fail
    assert Participation(50, 3).failures(4, {i: 3 for i in range(50)}) == {}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_client_failing_at_step_k_sends_k_minus_1_uploads_and_gets_no_gradient_for_step_k(k, data):
    fed = scripted(make_federation("psl", sizes=[12, 12], n_clients=2), r1={0: k})
    snapshots = []
    served, execute = recording(data)
    train_round(fed, indices([12, 12]), 4, 1, execute, on_step=lambda: snapshots.append(state(fed.clients.lower(0))))
    assert [0 in s for s in served] == [t < k - 1 for t in range(3)]
    assert fed.ledger.per_client[0][Direction.UP] == (k - 1) * 4 * (SMASHED + 8)
    assert fed.ledger.per_client[0][Direction.DOWN] == (k - 1) * 4 * SMASHED
    assert fed.ledger.per_client[1][Direction.UP] == 3 * 4 * (SMASHED + 8)
    if k > 1:  # its model is the one after its last delivered step: no update from step k on
        for name, value in state(fed.clients.lower(0)).items():
            assert torch.equal(value, snapshots[k - 2][name])


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
@pytest.mark.parametrize("algorithm", ["sfl", "sflv1", "locfedmix"])
def test_fedavg_with_a_dropped_client_is_the_delta_weighted_average_of_the_others(algorithm, engine, data):
    sizes = [12, 8, 4]
    fed = scripted(make_federation(algorithm, sizes=sizes, n_clients=3, engine__kind=engine), r1={1: 2})
    before = {}

    def snapshot():  # the last call comes after the last step, before the round's FedAvg
        before["lower"] = [state(fed.clients.lower(i)) for i in range(3)]
        before["head"] = [state(fed.clients.head(i)) for i in range(3)] if fed.clients.has_head else None
        before["upper"] = [state(u) for u in fed.server.uppers]

    train_round(fed, indices(sizes), 4, 1, data_step(*data), on_step=snapshot)
    oracle = lambda states: {k: 0.75 * states[0][k] + 0.25 * states[2][k] for k in states[0]}  # δ over {0, 2}
    for i in range(3):
        torch.testing.assert_close(state(fed.clients.lower(i)), oracle(before["lower"]), atol=1e-6, rtol=1e-5)
        if before["head"] is not None:
            torch.testing.assert_close(state(fed.clients.head(i)), oracle(before["head"]), atol=1e-6, rtol=1e-5)
    if algorithm == "sflv1":
        for upper in fed.server.uppers:
            torch.testing.assert_close(state(upper), oracle(before["upper"]), atol=1e-6, rtol=1e-5)
    assert fed.ledger.totals[Direction.UP, Kind.LOWER] == 2 * LOWER and fed.stale == {1}


def test_a_client_that_missed_fedavg_downloads_the_average_when_it_next_takes_part(data):
    fed = scripted(make_federation("sfl", sizes=[8, 8], n_clients=2), r1={1: 1})
    train_round(fed, indices([8, 8]), 4, 1, data_step(*data))
    assert fed.ledger.per_client[1][Direction.DOWN] == 0 and fed.stale == {1}
    train_round(fed, indices([8, 8]), 4, 2, data_step(*data))  # no failure: it catches up, then reports
    grads = 2 * 4 * SMASHED
    assert fed.ledger.per_client[1][Direction.DOWN] == grads + 2 * LOWER and fed.stale == set()
    assert fed.ledger.per_client[0][Direction.DOWN] == 2 * grads + 2 * LOWER  # one FedAvg download per round


def test_sequential_relay_after_a_failure_hands_on_the_model_the_server_last_received(data):
    fed = scripted(make_federation("sl", sizes=[8, 8, 8], n_clients=3), r1={1: 2})
    starts = {}
    served, execute = recording(data)

    def step(fed, plan):
        starts.setdefault(next(iter(plan)), state(fed.clients.lower(next(iter(plan)))))
        return execute(fed, plan)

    train_round(fed, indices([8, 8, 8]), 4, 1, step)
    assert served == [[0], [0], [1], [2], [2]]
    handed_by_0 = state(fed.clients.lower(0))  # client 0 has not trained since it handed its model on
    for name, value in starts[2].items():
        assert torch.equal(value, handed_by_0[name])
    assert not all(torch.equal(v, starts[1][v_name]) for v_name, v in state(fed.clients.lower(1)).items())
    up = {i: fed.ledger.per_client[i][Direction.UP] - len([s for s in served if s == [i]]) * 4 * (SMASHED + 8)
          for i in range(3)}
    assert up == {0: LOWER, 1: 0, 2: 0} and fed.holder == 2  # client 1 never hands its model back
    assert fed.ledger.totals[Direction.DOWN, Kind.LOWER] == 2 * LOWER  # client 1 and client 2 download


def test_when_the_last_holder_fails_the_relay_stands_at_the_model_the_server_holds(data):
    fed = scripted(make_federation("sl", sizes=[8, 8], n_clients=2), r1={1: 2})
    starts = []
    execute = data_step(*data)

    def step(fed, plan):
        starts.append((next(iter(plan)), state(fed.clients.lower(next(iter(plan))))))
        return execute(fed, plan)

    train_round(fed, indices([8, 8]), 4, 1, step)
    server_model = starts[2][1]  # what client 1 started from: client 0's model, handed on
    assert fed.holder is None and starts[2][0] == 1
    for name, value in state(deployed_lower(fed, *relay_position(fed))).items():
        assert torch.equal(value, server_model[name])
    train_round(fed, indices([8, 8]), 4, 2, step)
    assert starts[3][0] == 0  # round 2: client 0 downloads the server's model; nobody uploads before it
    for name, value in starts[3][1].items():
        assert torch.equal(value, server_model[name])
    assert fed.ledger.totals[Direction.UP, Kind.LOWER] == 2 * LOWER  # 0 → 1 in each round, none from client 1
    assert fed.ledger.totals[Direction.DOWN, Kind.LOWER] == 3 * LOWER and fed.holder == 1


def fast_and_slow(fed, sizes: dict[int, int]):
    upload = {i: b * (SMASHED + 8) for i, b in sizes.items()}
    return upload_arrivals(fed.flops, fed.profile, sizes, upload, fed.participation.slowdown)


@pytest.mark.parametrize("algorithm", ["psl", "sfl"])
def test_a_straggler_stretches_every_phase_but_the_servers_by_its_slowdown(algorithm, data):
    def clock(**participation):
        fed = make_federation(algorithm, sizes=[8, 8], n_clients=2, latency__link_delay_s=0.0,
                              **{f"participation__{k}": v for k, v in participation.items()})
        train_round(fed, indices([8, 8]), 4, 1, data_step(*data))
        return fed

    fast, slow = clock(), clock(stragglers=0.5, straggler_slowdown=2.5)
    assert len(slow.participation.slowdown) == 1
    server = fast.clock.phases["server_compute"]
    assert slow.clock.phases["server_compute"] == server
    assert slow.clock.seconds == pytest.approx(2.5 * (fast.clock.seconds - server) + server, rel=1e-12)
    assert dict(slow.ledger.totals) == dict(fast.ledger.totals)


def test_the_deadline_drops_exactly_the_clients_the_latency_model_says_are_late(data):
    fed = make_federation("psl", sizes=[8] * 4, n_clients=4, participation__stragglers=0.5,
                          participation__straggler_slowdown=4.0)
    arrivals = fast_and_slow(fed, {i: 4 for i in range(4)})
    late = set(fed.participation.slowdown)
    deadline = (max(arrivals[i] for i in range(4) if i not in late) + min(arrivals[i] for i in late)) / 2
    assert {i for i, t in arrivals.items() if t > deadline} == late and len(late) == 2
    fed = make_federation("psl", sizes=[8] * 4, n_clients=4, participation__stragglers=0.5,
                          participation__straggler_slowdown=4.0, participation__deadline_s=deadline)
    served, execute = recording(data)
    train_round(fed, indices([8] * 4), 4, 1, execute)
    on_time = sorted(set(range(4)) - late)
    assert served == [on_time, on_time]
    for i in range(4):
        steps = 1 if i in late else 2  # the late upload was sent and is charged; no gradient comes back
        assert fed.ledger.per_client[i][Direction.UP] == steps * 4 * (SMASHED + 8)
        assert fed.ledger.per_client[i][Direction.DOWN] == (0 if i in late else 2 * 4 * SMASHED)


def test_a_step_with_a_late_client_lasts_from_the_deadline_for_the_others(data):
    fed = make_federation("psl", sizes=[4, 4], n_clients=2, participation__stragglers=0.5,
                          participation__straggler_slowdown=4.0, latency__link_delay_s=0.0)
    arrivals = fast_and_slow(fed, {0: 4, 1: 4})
    (slow,) = fed.participation.slowdown
    deadline = (arrivals[slow] + arrivals[1 - slow]) / 2
    fed.participation = Participation(2, fed.seed, slowdown=fed.participation.slowdown, deadline_s=deadline)
    train_round(fed, indices([4, 4]), 4, 1, data_step(*data))
    f, p = fed.flops, fed.profile
    server = 4 * (f.upper_fwd + f.upper_bwd) / p.server_flops
    down = 4 * SMASHED * 8 / p.downlink_bps  # the on-time client alone on the downlink
    assert fed.clock.seconds == pytest.approx(deadline + server + down + 4 * f.lower_bwd / p.client_flops, rel=1e-12)


# Numbers of the code before participation existed (commit 523456b) for this config: bytes and simulated seconds
# are exact integer and float arithmetic, the same on every machine.
BEFORE = {"sl": (562080, 560640, 2.028384477184001), "sfl": (637344, 635904, 1.142589277184),
          "locfedmix": (862392, 860952, 1.367640954368)}


@pytest.mark.parametrize("algorithm", list(BEFORE))
def test_everyone_always_at_full_speed_reproduces_the_numbers_of_before(algorithm):
    base = {"algorithm": algorithm, "dataset": "synthetic", "n_clients": 3, "samples_per_client": 30, "rounds": 2,
            "batch_size": 8, "seed": 4}
    absent = run(validate(base), progress=False)
    explicit = run(validate({**base, "participation": {"fraction": 1.0, "dropout": 0.0, "stragglers": 0.0,
                                                       "deadline_s": 0.0}}), progress=False)
    assert explicit["final"] == absent["final"]
    final = absent["final"]
    assert (final["bytes_up"], final["bytes_down"], final["simulated_seconds"]) == BEFORE[algorithm]


def test_faults_are_reproducible_and_cost_bytes_and_accuracy_honestly():
    base = {"algorithm": "sfl", "dataset": "synthetic", "n_clients": 6, "samples_per_client": 24, "rounds": 2,
            "batch_size": 8, "seed": 2}
    faulty = {**base, "participation": {"fraction": 0.5, "dropout": 0.5}}
    first, again = run(validate(faulty), progress=False), run(validate(faulty), progress=False)
    full = run(validate(base), progress=False)
    assert first["final"] == again["final"]
    assert first["final"]["bytes_up"] < full["final"]["bytes_up"] / 2 + 1  # at most half the clients send
