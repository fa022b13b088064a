"""Input standardization (data.normalize): statistics of the training split alone, every split standardized by them,
recorded in summary.json, fed to the models (LocFedMix-SL's decoder reconstructs the standardized input), and off
reproduces the unstandardized runs bit for bit."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from locfedmix import api
from locfedmix.api import federate, run
from locfedmix.config import validate
from locfedmix.data.datasets import load_dataset
from locfedmix.data.normalize import Standardization, standardize
from locfedmix.data.partition import split_validation
from locfedmix.errors import UserError
from locfedmix.privacy.leakage import LeakageProbe
from locfedmix.rng import numpy_generator

GOLDEN = Path(__file__).parent / "golden"
BASE = {"dataset": "synthetic", "n_clients": 3, "samples_per_client": 40, "rounds": 2, "batch_size": 8, "seed": 5}


def numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of N x C x H x W images, computed directly in float64."""
    per_channel = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
    return per_channel.mean(1), per_channel.std(1)


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_fit_is_the_per_channel_mean_and_std_of_the_chosen_images(chunk):
    scale = torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1)
    x = torch.rand(10, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * scale
    chosen = np.array([7, 1, 4, 2, 9])
    stats = Standardization.fit(x, chosen, chunk=chunk)
    mean, std = numpy_stats(x[chosen].numpy())
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)
    np.testing.assert_allclose(stats.invert(stats.apply(x)), x, atol=1e-6)


def test_a_constant_channel_is_shifted_to_zero_not_divided_by_zero():
    x = torch.cat([torch.full((4, 1, 2, 2), 0.25), torch.rand(4, 1, 2, 2)], 1)
    stats = Standardization.fit(x, np.arange(4))
    assert stats.std[0] == 1.0 and torch.equal(stats.apply(x)[:, 0], torch.zeros(4, 2, 2))


def test_every_split_is_standardized_by_the_training_split_alone():
    dataset = load_dataset("synthetic", seed=2)
    train = np.arange(0, len(dataset.y_train), 3)  # any subset: what stands for the split after the hold-out
    out, stats = standardize(dataset, train)
    mean, std = numpy_stats(dataset.x_train[train].numpy())
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-9)
    # the training split lands at mean 0, std 1; the rest (validation, test) by the same affine map
    z_mean, z_std = numpy_stats(out.x_train[train].numpy())
    np.testing.assert_allclose(z_mean, 0, atol=1e-5)
    np.testing.assert_allclose(z_std, 1, atol=1e-5)
    expected_test = (dataset.x_test.numpy() - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(out.x_test.numpy(), expected_test, atol=1e-5)
    held_out = np.setdiff1d(np.arange(len(dataset.y_train)), train)
    changed = dataset.x_train.clone()
    changed[held_out] = 1.0  # what the held-out images are does not move the statistics
    assert standardize(replace(dataset, x_train=changed), train)[1] == stats


def test_federate_fits_on_the_training_split_after_the_validation_hold_out():
    config = validate({**BASE, "algorithm": "sfl"})
    data = federate(config)
    raw = load_dataset("synthetic", seed=config.seed)
    train, val = split_validation(raw.y_train.numpy(), config.data.val_fraction,
                                  numpy_generator(config.seed, "validation"))
    mean, std = numpy_stats(raw.x_train[train].numpy())
    np.testing.assert_allclose(data.standardization.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(data.standardization.std, std, rtol=1e-9)
    np.testing.assert_allclose(data.dataset.x_train[val].numpy(),
                               (raw.x_train[val].numpy() - mean[0]) / std[0], atol=1e-5)
    off = federate(validate({**BASE, "algorithm": "sfl", "data": {"normalize": False}}))
    assert off.standardization is None and torch.equal(off.dataset.x_train, raw.x_train)
    assert [list(c) for c in off.client_indices] == [list(c) for c in data.client_indices]


@pytest.mark.parametrize("algorithm", ["locfedmix", "sflv2"])
def test_off_reproduces_the_unstandardized_metrics_bit_for_bit(algorithm, tmp_path, one_thread):
    """tests/golden/unstandardized-<algorithm>.csv was written by the code before input standardization existed,
    with this config. Every column must match to the last digit except simulated_seconds, which the latency
    model's own tests pin (a change of how steps are charged moves it without moving what is trained)."""
    config = validate({**BASE, "algorithm": algorithm, "data": {"normalize": False}})
    summary = run(config, tmp_path, progress=False)
    got = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    golden = list(csv.DictReader((GOLDEN / f"unstandardized-{algorithm}.csv").open()))
    for row in (*got, *golden):
        row.pop("simulated_seconds")
    assert got == golden
    assert summary["normalization"] is None


def test_on_is_recorded_and_the_decoder_reconstructs_what_the_models_see(tmp_path, monkeypatch):
    config = validate({**BASE, "algorithm": "locfedmix"})
    fed_inputs = []
    real_data_step = api.data_step
    monkeypatch.setattr(api, "data_step", lambda x, y: fed_inputs.append(x) or real_data_step(x, y))
    summary = run(config, tmp_path, progress=False)
    data = federate(config)
    assert summary["normalization"] == data.standardization.summary()
    assert json.loads((tmp_path / "summary.json").read_text())["normalization"] == data.standardization.summary()
    # the training steps (and so the decoder's reconstruction target, the step's own input) are the standardized
    # images, not the pixels
    assert len(fed_inputs) == 1 and torch.equal(fed_inputs[0], data.dataset.x_train)
    golden = list(csv.DictReader((GOLDEN / "unstandardized-locfedmix.csv").open()))
    assert [r["train_loss"] for r in csv.DictReader((tmp_path / "metrics.csv").open())] != \
        [r["train_loss"] for r in golden]


def test_the_leakage_probe_scores_pixels_and_queries_with_standardized_inputs():
    config = validate({**BASE, "algorithm": "psl", "samples_per_client": 20,
                       "leakage": {"enabled": True, "aux_samples": 16, "samples_per_client": 4}})
    data = federate(config)
    raw = load_dataset("synthetic", seed=config.seed)
    fed = api.build_federation(config, config.resolved_algorithm(), data.dataset.input_shape, data.dataset.n_classes,
                               [len(i) for i in data.client_indices])
    probe = LeakageProbe(fed, data.dataset.x_train, data.dataset.y_train, data.client_indices, data.aux_indices,
                         config.leakage, data.standardization)
    torch.testing.assert_close(probe.x_aux, raw.x_train[torch.as_tensor(data.aux_indices)], atol=1e-6, rtol=0)
    lower = fed.clients.lower(0)
    queried = probe.uploads(lower, probe.x_aux[:4], "attack-query-noise", 1, 0)
    torch.testing.assert_close(queried, lower.eval()(data.dataset.x_train[torch.as_tensor(data.aux_indices[:4])]),
                               atol=1e-5, rtol=1e-5)


def test_a_bce_reconstruction_needs_pixels_in_zero_one():
    with pytest.raises(UserError, match=r"algo.rec_loss='bce' .* set data.normalize=false"):
        validate({**BASE, "algorithm": "locfedmix", "algo": {"rec_loss": "bce"}})
    assert validate({**BASE, "algorithm": "locfedmix", "algo": {"rec_loss": "bce"},
                     "data": {"normalize": False}}).data.normalize is False
