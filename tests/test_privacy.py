"""Privacy diagnostics and defences (issue #9): distance correlation against the `dcor` package, the inversion
attack against cases whose answer is known, and the defences against hand-computed steps."""

import copy
import json

import dcor
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import INPUT_SHAPE, make_config, make_federation
from locfedmix.api import federate, run
from locfedmix.cli import main
from locfedmix.engines.flow.interfaces import Smashed
from locfedmix.engines.flow.round import data_step, train_round
from locfedmix.errors import UserError
from locfedmix.privacy.dcor import bias_corrected_distance_correlation_sqr, distance_correlation
from locfedmix.privacy.defences import Defence, clip_per_sample
from locfedmix.privacy.leakage import LeakageProbe

SGD = dict(client_optimizer__name="sgd", client_optimizer__lr=0.1, server_optimizer__name="sgd",
           server_optimizer__lr=0.1)


def draw(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- distance correlation ---------------------------------------------------------------------------------------

def test_distance_correlation_matches_the_dcor_package():
    x = draw(40, 1, 4, 4)
    y = x.flatten(1)[:, :6] ** 2 + 0.2 * draw(40, 6, seed=1)
    x_np, y_np = x.flatten(1).numpy(), y.numpy()
    assert distance_correlation(x, y).item() == pytest.approx(dcor.distance_correlation(x_np, y_np), abs=1e-10)
    assert bias_corrected_distance_correlation_sqr(x, y).item() == pytest.approx(
        dcor.u_distance_correlation_sqr(x_np, y_np), abs=1e-10)


def test_distance_correlation_of_identical_and_linearly_related_data_is_one():
    x = draw(30, 5)
    rotation, _ = torch.linalg.qr(draw(5, 5, seed=2))
    for related in (x, 3.0 * x + 1.0, x @ rotation):
        assert distance_correlation(x, related).item() == pytest.approx(1.0, abs=1e-9)
        assert bias_corrected_distance_correlation_sqr(x, related).item() == pytest.approx(1.0, abs=1e-9)


def test_distance_correlation_of_independent_data_is_near_zero():
    x, y = draw(2000, 2), draw(2000, 2, seed=1)
    assert distance_correlation(x, y).item() < 0.06
    # In high dimension the V-statistic drifts towards 1 for independent data; the bias-corrected one does not.
    wide_x, wide_y = draw(200, 784, seed=2), draw(200, 3136, seed=3)
    assert distance_correlation(wide_x, wide_y).item() > 0.9
    assert abs(bias_corrected_distance_correlation_sqr(wide_x, wide_y).item()) < 0.03


def test_distance_correlation_is_zero_without_spread_and_its_gradient_stays_finite():
    s = torch.ones(6, 3, requires_grad=True)
    value = distance_correlation(draw(6, 2, dtype=torch.float32), s)
    value.backward()
    assert value.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


# --- defences ---------------------------------------------------------------------------------------------------

def test_clipping_bounds_every_sample_and_leaves_short_ones_bitwise_alone():
    s = torch.randn(3, 5, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    s[0, 0] *= 1e-3
    clipped = clip_per_sample(s, 1.5, batch_dims=2)
    norms = clipped.flatten(2).norm(dim=-1)
    assert (norms <= 1.5 * (1 + 1e-6)).all()
    assert torch.equal(clipped[0, 0], s[0, 0])
    long = s.flatten(2).norm(dim=-1) > 1.5
    assert torch.allclose(norms[long], torch.full_like(norms[long], 1.5))


def test_noise_is_the_same_however_the_clients_are_grouped():
    out = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    defence = Defence(clip=1.0, noise_multiplier=0.7, seed=4)
    stacked = defence.protect(Smashed([([0, 1, 2], out)]), step=9).per_client()
    looped = defence.protect(Smashed([([i], out[i:i + 1]) for i in range(3)]), step=9).per_client()
    for i in range(3):
        assert torch.equal(stacked[i], looped[i])
    noise = torch.cat([stacked[i] - clip_per_sample(out[i], 1.0) for i in range(3)])
    assert noise.std().item() == pytest.approx(0.7, rel=0.2)


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
@pytest.mark.parametrize("algorithm", ["psl", "locsplitfed", "locfedmix"])
def test_zero_noise_and_an_unreachable_clip_change_nothing(algorithm, engine, data):
    """σ = 0 with clipping off is the default run; a clip no sample reaches runs the clipping code and still changes
    no bit of the training."""
    runs = [{}, {"privacy__noise_multiplier": 0.0}, {"privacy__clip": 1e9, "privacy__noise_multiplier": 0.0}]
    feds = []
    for extra in runs:
        fed = make_federation(algorithm, sizes=[16, 16, 16], n_clients=3, engine__kind=engine, **extra)
        for r in (1, 2):
            train_round(fed, [np.arange(i * 16, (i + 1) * 16) for i in range(3)], 4, r, data_step(*data))
        feds.append(fed)
    for fed in feds[1:]:
        for i in range(3):
            for a, b in zip(feds[0].clients.lower(i).state_dict().values(), fed.clients.lower(i).state_dict().values()):
                assert torch.equal(a, b)
        for a, b in zip(feds[0].server.uppers[0].parameters(), fed.server.uppers[0].parameters()):
            assert torch.equal(a, b)


def test_nopeek_gradient_reaches_the_lower_model_only(data):
    """One SGD step of locfedmix with NoPeek: the lower model moves by the cut gradient, the regularizer and
    α ∇dCor(x, s); the decoder by ∇L_rec alone, exactly as without NoPeek."""
    x, y = data[0][:4], data[1][:4]
    alpha = 0.7
    fed = make_federation("locfedmix", sizes=[1], privacy__nopeek=alpha, **SGD)
    plain = make_federation("locfedmix", sizes=[1], **SGD)
    lower, decoder = copy.deepcopy(fed.clients.lower(0)), copy.deepcopy(fed.clients.head(0))
    cut_grad = torch.randn(4, *fed.cut_shape, generator=torch.Generator().manual_seed(5))
    s = lower(x)
    g_server = torch.autograd.grad(s, list(lower.parameters()), cut_grad, retain_graph=True)
    g_rec = torch.autograd.grad(F.mse_loss(decoder(s), x), list(lower.parameters()), retain_graph=True)
    g_leak = torch.autograd.grad(alpha * distance_correlation(x, s), list(lower.parameters()))
    expected = [p - 0.1 * (a + b + c) for p, a, b, c in zip(lower.parameters(), g_server, g_rec, g_leak)]
    batches = {0: (x, y)}
    for f, nopeek in ((fed, alpha), (plain, 0.0)):
        f.clients.backward_and_step(f.algo.objective, f.clients.forward(batches), {0: cut_grad}, batches, nopeek)
    for got, want in zip(fed.clients.lower(0).parameters(), expected):
        torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=0)
    for a, b in zip(fed.clients.head(0).parameters(), plain.clients.head(0).parameters()):
        assert torch.equal(a, b)


def test_nopeek_leaves_the_server_update_alone(data):
    """NoPeek is a client-side loss: the server's first update depends on it not at all."""
    uppers = []
    for nopeek in (0.0, 5.0):
        fed = make_federation("psl", sizes=[8, 8], n_clients=2, privacy__nopeek=nopeek, **SGD)
        fed.step = 0
        data_step(*data)(fed, {0: np.arange(4), 1: np.arange(8, 12)})
        uppers.append([p.detach().clone() for p in fed.server.uppers[0].parameters()])
    for a, b in zip(*uppers):
        assert torch.equal(a, b)


# --- the inversion attack ---------------------------------------------------------------------------------------

def probe_with_lower(lower: nn.Module, cut_shape, x: torch.Tensor, **leakage) -> LeakageProbe:
    """Two clients holding x[:16] and x[16:32] behind `lower`; the attacker owns the rest of x."""
    fed = make_federation("psl", sizes=[16, 16], n_clients=2, engine__kind="loop")
    for client in fed.clients.clients:
        client.lower = lower
    fed.cut_shape = cut_shape
    cfg = make_config("psl", leakage__enabled=True, **{f"leakage__{k}": v for k, v in leakage.items()}).leakage
    return LeakageProbe(fed, x, [np.arange(0, 16), np.arange(16, 32)], np.arange(32, len(x)), cfg)


def test_attack_inverts_an_identity_lower_model_almost_perfectly(data):
    x = torch.cat([data[0], draw(400, *INPUT_SHAPE, seed=7, dtype=torch.float32)])
    probe = probe_with_lower(nn.Identity(), INPUT_SHAPE, x, attack_epochs=40, attack_lr=1e-2, samples_per_client=16)
    metrics = probe.measure(1).metrics
    assert metrics["attack_mse"] < 1e-3 < metrics["mean_image_mse"]
    assert metrics["attack_ssim"] > 0.98
    assert metrics["dcor"] == pytest.approx(1.0) and metrics["dcor_sqr_bias_corrected"] == pytest.approx(1.0)


class Blind(nn.Module):
    """A lower model whose smashed data carry nothing about the input."""

    def forward(self, x):
        return torch.zeros(len(x), 2, 2, 2)


def test_attack_on_smashed_data_without_information_does_no_better_than_the_mean_image(data):
    metrics = probe_with_lower(Blind(), (2, 2, 2), data[0], attack_epochs=60, attack_lr=1e-2).measure(1).metrics
    assert metrics["attack_mse"] == pytest.approx(metrics["mean_image_mse"], rel=0.1)
    assert metrics["dcor"] == 0.0 and metrics["dcor_sqr_bias_corrected"] == 0.0


# --- runs ------------------------------------------------------------------------------------------------------

BASE = {"dataset": "synthetic", "n_clients": 3, "samples_per_client": 40, "rounds": 2, "batch_size": 10, "seed": 2,
        "checkpoint_every": 0}
LEAKAGE = {"enabled": True, "aux_samples": 200, "samples_per_client": 20, "attack_epochs": 2}


def summary_of(tmp_path, name, **tree):
    from locfedmix.config import validate

    return run(validate({**BASE, "algorithm": "locfedmix", **tree}), tmp_path / name, progress=False)


def test_leakage_is_reproducible_and_does_not_touch_the_training(tmp_path):
    defended = {"privacy": {"clip": 1.0, "noise_multiplier": 0.1, "nopeek": 0.1}}
    first = summary_of(tmp_path, "a", leakage={**LEAKAGE, "every_round": True}, **defended)
    again = summary_of(tmp_path, "b", leakage={**LEAKAGE, "every_round": True}, **defended)
    other_seed = summary_of(tmp_path, "c", leakage=LEAKAGE, seed=3, **defended)
    unmeasured = summary_of(tmp_path, "d", **defended)
    assert first["leakage"] == again["leakage"]
    assert first["leakage"]["final"] != other_seed["leakage"]["final"]
    assert [r["round"] for r in first["leakage"]["rounds"]] == [1, 2]
    assert first["final"] == unmeasured["final"]
    assert first["privacy"] == {"clip": 1.0, "noise_multiplier": 0.1, "noise_std": 0.1, "nopeek": 0.1}
    written = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert written["leakage"]["final"]["attack_mse"] == first["leakage"]["final"]["attack_mse"]
    pictures = np.load(tmp_path / "a" / "reconstructions.npz")
    assert pictures["original"].shape == pictures["reconstruction"].shape == (8, *INPUT_SHAPE)
    assert "leakage" not in unmeasured and "privacy" not in summary_of(tmp_path, "e")


def test_auxiliary_data_are_disjoint_from_every_client_and_never_the_test_set():
    from locfedmix.config import validate

    data = federate(validate({**BASE, "algorithm": "psl", "leakage": LEAKAGE}))
    held = np.concatenate(data.client_indices)
    assert len(data.aux_indices) == 200 and not np.intersect1d(data.aux_indices, held).size
    assert data.aux_indices.max() < len(data.dataset.y_train)
    with pytest.raises(UserError, match="aux_samples"):
        federate(validate({**BASE, "algorithm": "psl", "samples_per_client": 0,
                           "data": {"val_fraction": 0.01}, "leakage": LEAKAGE}))


@pytest.mark.parametrize("settings, message", [
    (["privacy.noise_multiplier=-0.5"], "noise_multiplier=-0.5"),
    (["privacy.noise_multiplier=1.0"], "needs clip"),
    (["privacy.clip=0"], "privacy.clip=0"),
    (["privacy.nopeek=-1"], "privacy.nopeek=-1"),
    (["leakage.every_round=true"], "every_round needs enabled"),
    (["privacy.nopeek=0.5", "engine.distributed=true"], "set engine.distributed=false"),
])
def test_privacy_mistakes_end_in_one_line_and_exit_code_2(tmp_path, capsys, settings, message):
    config = tmp_path / "c.toml"
    config.write_text('algorithm = "psl"\ndataset = "synthetic"\nn_clients = 2\nrounds = 1\nbatch_size = 4\n')
    sets = [arg for setting in settings for arg in ("--set", setting)]
    assert main(["run", "--config", str(config), *sets, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_resumed_run_ends_with_the_leakage_history_of_an_uninterrupted_one(tmp_path, monkeypatch):
    import locfedmix.api as api
    from locfedmix.config import validate

    config = validate({**BASE, "algorithm": "locfedmix", "checkpoint_every": 1,
                       "privacy": {"clip": 1.0, "noise_multiplier": 0.1}, "leakage": {**LEAKAGE, "every_round": True}})
    whole = run(config, tmp_path / "whole", progress=False)
    real = api.train_round

    def killed_in_round_2(fed, indices, batch_size, round_index, *args, **kwargs):
        if round_index == 2:
            raise KeyboardInterrupt
        return real(fed, indices, batch_size, round_index, *args, **kwargs)

    monkeypatch.setattr(api, "train_round", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut", progress=False)
    monkeypatch.setattr(api, "train_round", real)
    resumed = run(config, tmp_path / "cut", progress=False, resume=True)
    assert resumed["leakage"] == whole["leakage"] and resumed["final"] == whole["final"]
