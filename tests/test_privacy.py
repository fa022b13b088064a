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

from conftest import INPUT_SHAPE, interrupted_in_round, make_config, make_federation
from locfedmix.api import federate, run
from locfedmix.cli import main
from locfedmix.engines.flow.interfaces import Smashed
from locfedmix.engines.flow.round import data_step, train_round
from locfedmix.errors import UserError
from locfedmix.privacy.dcor import bias_corrected_distance_correlation_sqr, distance_correlation
from locfedmix.privacy.defences import Defence, clip_per_sample
from locfedmix.privacy.inversion import ssim_per_image
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


def test_distance_correlation_is_one_under_similarity_transforms_only():
    """1 for data related by a rotation, a uniform scale and a shift; an invertible linear map that stretches one axis
    keeps all the information yet scores well below 1 (measured: dCor 0.687, R*² 0.357), so 'below 1' is no evidence
    of lost information."""
    x = draw(30, 5)
    rotation, _ = torch.linalg.qr(draw(5, 5, seed=2))
    for related in (x, 3.0 * x + 1.0, x @ rotation):
        assert distance_correlation(x, related).item() == pytest.approx(1.0, abs=1e-9)
        assert bias_corrected_distance_correlation_sqr(x, related).item() == pytest.approx(1.0, abs=1e-9)
    stretched = x @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0], dtype=x.dtype))
    assert distance_correlation(x, stretched).item() == pytest.approx(0.687, abs=1e-3)
    assert bias_corrected_distance_correlation_sqr(x, stretched).item() == pytest.approx(0.357, abs=1e-3)


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


def server_inputs(fed) -> list[torch.Tensor]:
    """Records what the shared server model is given: the uploads as the server receives them."""
    seen = []
    fed.server.uppers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def test_the_server_receives_uploads_clipped_to_norm_c(data):
    """What reaches the server, not what the defence returns: every sample's upload has L2 norm ≤ C, and the clip
    binds (the raw smashed data are longer)."""
    fed = make_federation("psl", sizes=[8, 8], n_clients=2, engine__kind="loop", privacy__clip=0.5)
    raw = torch.cat([fed.clients.lower(i)(data[0][idx]) for i, idx in ((0, np.arange(4)), (1, np.arange(8, 12)))])
    seen = server_inputs(fed)
    fed.step = 0
    data_step(*data)(fed, {0: np.arange(4), 1: np.arange(8, 12)})
    norms = torch.cat(seen).flatten(1).norm(dim=1)
    assert len(norms) == 8 and raw.flatten(1).norm(dim=1).min() > 0.5
    assert (norms <= 0.5 * (1 + 1e-6)).all() and norms.min() > 0.5 * (1 - 1e-6)


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
def test_noise_alone_changes_training(engine, data):
    """With a clip no sample reaches, σ = 0 changes no bit (test above); σ > 0 changes the step's updates, of the
    clients and of the server, and (loop engine, whose server model is called as a module) what the server receives
    is the raw smashed data plus noise of std σC."""
    clip, sigma, batches = 1e9, 0.3e-9, {0: np.arange(4), 1: np.arange(8, 12)}
    feds, seen = [], []
    for noise in (0.0, sigma):
        fed = make_federation("psl", sizes=[8, 8], n_clients=2, engine__kind=engine, privacy__clip=clip,
                              privacy__noise_multiplier=noise)
        raw = torch.cat([fed.clients.lower(i)(data[0][idx]) for i, idx in batches.items()]).detach()
        seen = server_inputs(fed) if engine == "loop" else []
        fed.step = 0
        data_step(*data)(fed, batches)
        feds.append(fed)
    assert raw.flatten(1).norm(dim=1).max() < clip
    for i in (0, 1):
        assert any(not torch.equal(a, b) for a, b in zip(feds[0].clients.lower(i).parameters(),
                                                         feds[1].clients.lower(i).parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(feds[0].server.uppers[0].parameters(),
                                                     feds[1].server.uppers[0].parameters()))
    if engine == "loop":
        noise = torch.cat(seen) - raw
        assert noise.std().item() == pytest.approx(sigma * clip, rel=0.1) and abs(noise.mean().item()) < 0.05


def test_nopeek_alone_changes_the_clients_update(data):
    """Through the training step as the engines run it: α > 0 moves every client's lower model elsewhere than α = 0
    does, by −lr·α·∇dCor(x, s) under SGD (the cut gradient is the same: the server has not yet seen the loss)."""
    alpha, batches = 5.0, {0: np.arange(4), 1: np.arange(8, 12)}
    feds = []
    for nopeek in (0.0, alpha):
        fed = make_federation("psl", sizes=[8, 8], n_clients=2, engine__kind="loop", privacy__nopeek=nopeek, **SGD)
        before = [copy.deepcopy(fed.clients.lower(i)) for i in (0, 1)]  # the same for both: one seed
        fed.step = 0
        data_step(*data)(fed, batches)
        feds.append(fed)
    for i, idx in batches.items():
        x = data[0][idx]
        g_leak = torch.autograd.grad(alpha * distance_correlation(x, before[i](x)), list(before[i].parameters()))
        assert max(g.abs().max().item() for g in g_leak) > 1e-3
        for plain, peeked, g in zip(feds[0].clients.lower(i).parameters(), feds[1].clients.lower(i).parameters(),
                                    g_leak):
            torch.testing.assert_close(peeked - plain, -0.1 * g, atol=1e-6, rtol=0)


# --- the inversion attack ---------------------------------------------------------------------------------------

def probe_with_lower(lower: nn.Module, cut_shape, x: torch.Tensor, y: torch.Tensor | None = None, privacy=None,
                     **leakage) -> LeakageProbe:
    """Two clients holding x[:16] and x[16:32] behind `lower`; the attacker owns the rest of x (labels y, by default
    sample k of class k mod 10)."""
    fed = make_federation("psl", sizes=[16, 16], n_clients=2, engine__kind="loop",
                          **{f"privacy__{k}": v for k, v in (privacy or {}).items()})
    for client in fed.clients.clients:
        client.lower = lower
    fed.cut_shape = cut_shape
    cfg = make_config("psl", leakage__enabled=True, **{f"leakage__{k}": v for k, v in leakage.items()}).leakage
    y = torch.arange(len(x)) % 10 if y is None else y
    return LeakageProbe(fed, x, y, [np.arange(0, 16), np.arange(16, 32)], np.arange(32, len(x)), cfg)


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


def test_floors_are_the_mean_auxiliary_image_overall_and_of_the_label(data):
    """The floors by hand: each client sample's guess is the mean of the auxiliary images of its class (the overall
    auxiliary mean where the auxiliary data lack the class), scored against the sample."""
    y = torch.arange(len(data[0])) % 4
    y[32:] = y[32:] % 3  # the attacker's own data hold classes 0-2 only: class 3's samples get the overall mean
    x = 0.6 * data[0] + 0.4 * (y / 3).view(-1, 1, 1, 1)  # brightness tells the class, so its mean is a better guess
    metrics = probe_with_lower(Blind(), (2, 2, 2), x, y, attack_epochs=1).measure(1).metrics
    aux_x, aux_y = x[32:], y[32:]
    overall = aux_x.mean(0)
    by_label = torch.stack([aux_x[aux_y == y[k]].mean(0) if y[k] < 3 else overall for k in range(32)])
    for name, guess in (("mean_image", overall.expand(32, *overall.shape)), ("class_mean_image", by_label)):
        errors = [((guess[k] - x[k]) ** 2).mean().item() for k in range(32)]
        assert metrics[f"{name}_mse"] == pytest.approx(np.mean(errors), rel=1e-5)
        assert metrics[f"{name}_ssim"] == pytest.approx(ssim_per_image(guess, x[:32]).mean().item(), rel=1e-5)
    assert metrics["class_mean_image_mse"] < metrics["mean_image_mse"]


def test_averaged_uploads_divide_the_noise_by_the_square_root_of_the_rounds(data):
    """The server holds one upload per round the client took part in; their mean has noise std σC/√R."""
    x = torch.cat([data[0], draw(400, *INPUT_SHAPE, seed=7, dtype=torch.float32)])
    probe = probe_with_lower(nn.Identity(), INPUT_SHAPE, x, privacy={"clip": 100.0, "noise_multiplier": 0.01})
    assert [probe.uploads_held(0, r) for r in (1, 4, 9)] == [1, 4, 9]
    for rounds in (1, 16):
        noise = probe.uploads(nn.Identity(), x[32:], "test-noise", rounds, 0, draws=rounds) - x[32:]
        assert noise.std().item() == pytest.approx(1.0 / rounds ** 0.5, rel=0.05)


def test_the_averaged_attack_sees_through_noise_that_defeats_the_single_upload_attack(data):
    """An identity lower model behind heavy noise (std 1 on pixels in [0, 1]) after 16 rounds: one upload tells the
    attacker little, the mean of 16 (std 0.25) tells it much more."""
    x = torch.cat([data[0], draw(200, *INPUT_SHAPE, seed=7, dtype=torch.float32)])
    probe = probe_with_lower(nn.Identity(), INPUT_SHAPE, x, privacy={"clip": 100.0, "noise_multiplier": 0.01},
                             attack_epochs=8, averaged_attack_epochs=8, attack_lr=1e-2, samples_per_client=16)
    metrics = probe.measure(16).metrics
    assert [c["uploads_averaged"] for c in metrics["per_client"]] == [16, 16]
    assert metrics["averaged_attack_mse"] < 0.7 * metrics["attack_mse"]
    assert metrics["averaged_attack_ssim"] > metrics["attack_ssim"] + 0.3


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


def test_auxiliary_data_are_disjoint_from_every_client():
    from locfedmix.config import validate

    data = federate(validate({**BASE, "algorithm": "psl", "leakage": LEAKAGE}))
    held = np.concatenate(data.client_indices)
    assert len(data.aux_indices) == 200 and not np.intersect1d(data.aux_indices, held).size
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
    from locfedmix.config import validate

    config = validate({**BASE, "algorithm": "locfedmix", "checkpoint_every": 1,
                       "privacy": {"clip": 1.0, "noise_multiplier": 0.1}, "leakage": {**LEAKAGE, "every_round": True}})
    whole = run(config, tmp_path / "whole", progress=False)
    with interrupted_in_round(monkeypatch, 2):
        run(config, tmp_path / "cut", progress=False)
    resumed = run(config, tmp_path / "cut", progress=False, resume=True)
    assert resumed["leakage"] == whole["leakage"] and resumed["final"] == whole["final"]
