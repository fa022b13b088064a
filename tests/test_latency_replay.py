"""benchmarks/latency_replay.py: a finished run's simulated time recomputed from its config alone, and the design
specification's charges where the library's latency model differs (each against a hand-worked step)."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import make_config
from locfedmix.api import run
from locfedmix.config import validate
from locfedmix.latency.flops import SampleFlops
from locfedmix.latency.ledger import Direction, Kind, Message
from locfedmix.latency.model import Profile, step_phases
from locfedmix.report.runs import read_metrics

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from latency_replay import as_specified, replay, replayed_runs, report  # noqa: E402

FLOPS = SampleFlops(lower_fwd=1e6, lower_bwd=2e6, upper_fwd=3e6, upper_bwd=6e6, head_fwd=5e6, head_bwd=5e6)
PROFILE = Profile(client_flops=1e9, server_flops=1e10, uplink_bps=1e6, downlink_bps=2e6, link_delay_s=0.01)


def messages(clients, gradient: bool = True) -> list[Message]:
    sent = [Message(i, Kind.SMASHED, Direction.UP, 4096) for i in clients]
    sent += [Message(i, Kind.LABELS, Direction.UP, 32) for i in clients]
    return sent + ([Message(i, Kind.GRADIENT, Direction.DOWN, 4096) for i in clients] if gradient else [])


def both(algorithm: str, batch_sizes: dict[int, int], n_clients: int = 4, gradient: bool = True, **switches):
    algo = make_config(algorithm, n_clients=n_clients, **switches).resolved_algorithm()
    sent = messages(batch_sizes, gradient)
    # only a client with a head or decoder (count_flops) has local work
    flops = FLOPS if algorithm in ("locfedmix", "locsplitfed") else replace(FLOPS, head_fwd=0.0, head_bwd=0.0)
    return step_phases(algo, flops, PROFILE, batch_sizes, sent), as_specified(n_clients)(algo, flops, PROFILE,
                                                                                          batch_sizes, sent)


# two clients of 4 samples: forward 0.004 s, backward 0.008 s, decoder 0.04 s, server 8·9e6/1e10 = 0.0072 s,
# upload 4128·8·2/1e6 + 0.01 = 0.076048 s, download 4096·8·2/2e6 + 0.01 = 0.042768 s
UP, DOWN, SERVER = 0.076048, 0.042768, 0.0072


@pytest.mark.parametrize("algorithm", ["psl", "sfl", "mix2sfl"])
def test_where_the_library_follows_the_specification_both_charge_alike(algorithm):
    switches = {"algo__gradmix_fraction": 0.0} if algorithm == "mix2sfl" else {}
    built, spec = both(algorithm, {0: 4, 1: 4}, **switches)
    assert spec["total"] == pytest.approx(built["total"])
    built, spec = both("locsplitfed", {0: 4, 1: 4}, gradient=False)
    assert spec["total"] == pytest.approx(built["total"]) == pytest.approx(max(0.004 + 0.04 + 0.008, UP + SERVER))


def test_the_decoder_adds_to_the_step_as_specified():
    built, spec = both("locfedmix", {0: 4, 1: 4}, algo__mix=False)
    assert built["total"] == pytest.approx(0.004 + max(0.04, UP + SERVER + DOWN) + 0.008)
    assert spec["total"] == pytest.approx(0.004 + 0.04 + UP + SERVER + DOWN + 0.008)


def test_splitfed_v1_copies_run_in_parallel_as_specified():
    built, spec = both("sflv1", {0: 4, 1: 4})
    assert built["server_compute"] == pytest.approx(SERVER) and spec["server_compute"] == pytest.approx(SERVER / 2)


def test_gradmix_broadcasts_the_mixed_gradient_as_specified():
    """sglr mixes round(0.5·4) = 2 of 4 clients' gradients: 2 unicasts and one broadcast, 3 of the 4 sends."""
    built, spec = both("sglr", {0: 4, 1: 4, 2: 4, 3: 4})
    assert built["download"] == pytest.approx(4096 * 8 * 4 / 2e6 + 0.01)
    assert spec["download"] == pytest.approx(4096 * 8 * 3 / 2e6 + 0.01)


def test_splitfed_v2_clients_compute_in_parallel_as_specified():
    """A cycle of N = 4 one-client steps costs t_cf + t_up + N·t_srv + t_dn + t_cb with the band shared: per step,
    a quarter of the client's compute and of the per-transfer delay, the whole of its bytes and server time."""
    built, spec = both("sflv2", {0: 4})
    up, down, server = 4128 * 8 / 1e6, 4096 * 8 / 2e6, 4 * 9e6 / 1e10
    assert built["total"] == pytest.approx(0.004 + up + 0.01 + server + down + 0.01 + 0.008)
    assert spec["total"] == pytest.approx((0.004 + 0.008) / 4 + up + 0.01 / 4 + server + down + 0.01 / 4)


def test_a_replay_gives_the_runs_simulated_seconds_to_the_last_digit(tmp_path):
    grid = tmp_path / "tiny"
    base = {"dataset": "synthetic", "n_clients": 3, "samples_per_client": 20, "rounds": 2, "batch_size": 8}
    for algorithm in ("sflv2", "locfedmix", "sglr"):
        run(validate({**base, "algorithm": algorithm}), grid / "convergence" / algorithm / "seed0", progress=False)
    run_dir = grid / "convergence" / "sflv2" / "seed0"
    assert replay(run_dir) == [r["simulated_seconds"] for r in read_metrics(run_dir / "metrics.csv")]
    replayed = replayed_runs(grid, ["convergence"])  # checks every run's replay against its metrics.csv
    spec = replayed["convergence"]["sflv2"][0]["spec_rows"]
    assert spec[-1]["simulated_seconds"] < read_metrics(run_dir / "metrics.csv")[-1]["simulated_seconds"]
    text = report(grid, replayed, tmp_path / "LATENCY.md")
    assert "- latency as built: " in text and "- latency as specified: " in text
    assert (tmp_path / "LATENCY.csv").read_text().startswith("experiment,cell,seeds,reached,")
