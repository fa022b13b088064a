"""While a run trains, denormal floats are flushed to zero in every intra-op thread (the default), which leaves the
weights Adam computes as they were while its shrinking moments stop at zero; afterwards the process computes with
denormals again."""

import platform
import subprocess
import sys

import pytest

from locfedmix import api
from locfedmix.config import validate
from locfedmix.engines.backends.denormals import flushing

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="flushing denormals is x86's MXCSR mode")

PRODUCT = """
import sys, torch
from locfedmix.engines.backends.denormals import denormals_flushed, flushing
torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-20)
unflushed = lambda: int(((x * 1e-20) != 0).sum())  # 1e-40 is a denormal float32 unless flushed
assert unflushed() == x.numel()  # both intra-op threads have run, neither flushing
if sys.argv[1] == "flag_only":
    assert torch.set_flush_denormal(True)
    print(unflushed())
else:
    with denormals_flushed():
        print(unflushed(), flushing())
    print(unflushed(), flushing())
"""

ADAM = """
import sys, torch
from locfedmix.engines.backends.denormals import denormals_flushed
w = torch.nn.Parameter(torch.linspace(0.5, 2.0, 1000))
opt = torch.optim.Adam([w], lr=1e-3)
with denormals_flushed(sys.argv[1] == "flush"):
    for step in range(900):  # a gradient at the first step, none after (a unit that stopped firing)
        w.grad = torch.ones_like(w) if step == 0 else torch.zeros_like(w)
        opt.step()
m = opt.state[w]["exp_avg"]
tiny = torch.finfo(torch.float32).tiny
print(int(((m != 0) & (m.abs() < tiny)).sum()), int((m == 0).sum()), w.detach().numpy().tobytes().hex())
"""


def python(script: str, arg: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_flushing_reaches_every_intra_op_thread_and_ends_with_the_block():
    """torch's flag alone reaches the calling thread only: the half of a product the other thread computes stays
    denormal. Within `denormals_flushed` no element does; after it, every element is denormal again."""
    assert int(python(PRODUCT, "flag_only")[0]) > 0
    inside, inside_flushing, after, after_flushing = python(PRODUCT, "block")
    assert (int(inside), inside_flushing) == (0, "True")
    assert (int(after), after_flushing) == (4_000_000, "False")


def test_flushed_adam_moments_stop_at_zero_and_the_weights_are_the_same():
    """After 900 Adam steps, 899 of them without gradient, the first moment is 0.1 · 0.9^899 ≈ 7e-43: denormal
    without flushing, exactly zero with it (since it fell below 1.2e-38, some 800 steps in); the weights agree to
    the bit."""
    denormal, zero, weights = python(ADAM, "keep")
    assert (int(denormal), int(zero)) == (1000, 0)
    flushed_denormal, flushed_zero, flushed_weights = python(ADAM, "flush")
    assert (int(flushed_denormal), int(flushed_zero)) == (0, 1000)
    assert flushed_weights == weights


@pytest.mark.parametrize("flush", [True, False])
def test_a_run_flushes_while_it_trains_unless_told_not_to(monkeypatch, flush):
    seen = []
    train_rounds = api.train_rounds
    monkeypatch.setattr(api, "train_rounds", lambda *args: (seen.append(flushing()), train_rounds(*args))[1])
    tiny = {"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8, "rounds": 1,
            "batch_size": 4, "engine": {"flush_denormals": flush}}
    api.run(validate(tiny), progress=False, tune_process=True)
    assert seen == [flush] and not flushing()


def test_a_library_call_leaves_the_floating_point_mode_alone(monkeypatch):
    """Without tune_process, `run` trains in the mode its caller's process has: not flushing."""
    seen = []
    train_rounds = api.train_rounds
    monkeypatch.setattr(api, "train_rounds", lambda *args: (seen.append(flushing()), train_rounds(*args))[1])
    tiny = {"algorithm": "psl", "dataset": "synthetic", "n_clients": 2, "samples_per_client": 8, "rounds": 1,
            "batch_size": 4, "engine": {"flush_denormals": True}}
    api.run(validate(tiny), progress=False)
    assert seen == [False]


def test_the_command_line_flushes_while_it_trains(monkeypatch, tmp_path):
    from locfedmix.cli import main

    seen = []
    train_rounds = api.train_rounds
    monkeypatch.setattr(api, "train_rounds", lambda *args: (seen.append(flushing()), train_rounds(*args))[1])
    config = tmp_path / "tiny.toml"
    config.write_text('algorithm = "psl"\ndataset = "synthetic"\nn_clients = 2\nsamples_per_client = 8\nrounds = 1\n'
                      'batch_size = 4\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert seen == [True] and not flushing()
