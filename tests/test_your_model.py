"""A user's own network: cut at a named submodule (torch.fx) or after k blocks, trained by every algorithm, with
FLOPs and bytes from the real modules and tensors; the built-in models through the same path give today's numbers."""

import math

import numpy as np
import pytest
import torch
from test_golden_models import GOLDEN, golden_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from locfedmix import ALGORITHMS, Model, UserError, run, validate
from locfedmix.models import split_at
from locfedmix.models.cnn import build_cnn_blocks

PARALLEL = [name for name in ALGORITHMS if name not in ("sl",)]


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class SmallResNet(nn.Module):
    """torchvision's ResNet layout in miniature: stem, stages of residual blocks, pooling written in forward."""

    def __init__(self, n_classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Residual(8), Residual(8))
        self.layer2 = Residual(8)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("cut", ["stem", "layer1", "layer1.0", "layer2"])
def test_a_named_cut_computes_the_whole_network(cut):
    torch.manual_seed(0)
    net = SmallResNet().eval()
    lower, upper = split_at(net, cut)
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(upper(lower(x)), net(x), rtol=0, atol=0)


def test_the_segments_hold_the_networks_own_modules():
    net = SmallResNet()
    lower, upper = split_at(net, "layer1")
    assert {k for k in lower.state_dict()} | {k for k in upper.state_dict()} == set(net.state_dict())
    assert isinstance(lower.get_submodule("layer1.0.bn"), nn.BatchNorm2d)  # a module: train()/eval() still apply


@pytest.mark.parametrize("cut, fragment", [
    ("layer3", r"'layer3' is not a submodule of SmallResNet; nearby: layer\d"),
    ("layer1.0.conv", r"skip connection"),
    ("", r"is not a submodule"),
])
def test_a_cut_that_does_not_separate_is_refused_in_one_line(cut, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        split_at(SmallResNet(), cut)
    assert "\n" not in str(err.value)


def _config(algorithm: str, **extra):
    return validate({"algorithm": algorithm, "dataset": "synthetic", "n_clients": 2, "rounds": 1, "batch_size": 8,
                     "seed": 2, "checkpoint_every": 0, "data": {"val_fraction": 0.0}, **extra})


def test_builtin_blocks_handed_over_as_a_model_give_the_committed_metrics(tmp_path, one_thread):
    config = golden_config("cnn-psl")
    run(config, tmp_path / "blocks", progress=False, model=Model(build_cnn_blocks, cut=2))
    named = Model(lambda shape, n: nn.Sequential(*build_cnn_blocks(shape, n)), cut="1")
    run(config, tmp_path / "named", progress=False, model=named)
    golden = (GOLDEN / "cnn-psl.csv").read_text()
    assert (tmp_path / "blocks" / "metrics.csv").read_text() == golden
    assert (tmp_path / "named" / "metrics.csv").read_text() == golden


def image_data(n_train=32, n_test=16, shape=(3, 8, 8), n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"train": (rng.random((n_train, *shape), dtype=np.float32), rng.integers(0, n_classes, n_train)),
            "test": (rng.random((n_test, *shape), dtype=np.float32), rng.integers(0, n_classes, n_test))}


def _flops_per_sample(fn, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("algorithm", ["psl", "locfedmix"])
def test_latency_and_bytes_come_from_the_users_modules_and_tensors(algorithm):
    model = Model(lambda shape, n: SmallResNet(n), cut="layer1")
    summary = run(_config(algorithm), progress=False, dataset=image_data(), model=model)
    net = SmallResNet()
    x = torch.rand(2, 3, 8, 8)
    stem_and_layer1 = _flops_per_sample(lambda: net.layer1(torch.relu(net.stem(x))), 2)
    assert summary["flops_per_sample"]["lower_fwd"] == stem_and_layer1
    smashed_bytes = 8 * 8 * 8 * 4  # layer1's output: 8 maps of 8×8 float32, per sample
    assert summary["ledger_bytes"]["totals"]["up/smashed"] == 32 * smashed_bytes


class TextClassifier(nn.Module):
    """Token ids → embeddings → nn.TransformerEncoder → mean over positions → classes."""

    def __init__(self, vocab: int = 50, d: int = 16, n_classes: int = 3, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(d, n_classes)

    def forward(self, ids):
        return self.fc(self.encoder(self.embed(ids)).mean(dim=1))


def text_data(n_train=24, n_test=12, length=6, vocab=50):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, (n_train + n_test, length))
    labels = ids[:, 0] % 3  # learnable from the tokens
    return (ids[:n_train], labels[:n_train]), (ids[n_train:], labels[n_train:])


def text_model(**parts) -> Model:
    return Model(lambda shape, n: TextClassifier(n_classes=n), cut="embed", input_dtype=torch.long, **parts)


def text_parts() -> dict:
    """The user's own head and decoder for smashed data of shape (6 positions, 16 features)."""
    head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 16, 3))
    decoder = nn.Sequential(nn.Linear(16, 1), nn.Flatten())  # one value per position, compared with the ids
    return {"head": head, "decoder": decoder}


def trained(summary, algorithm: str, n_train: int, smashed_bytes: int) -> None:
    """One round ran: every training sample's smashed data went up once, and the losses are numbers."""
    assert summary["algorithm"] == algorithm and summary["final"]["round"] == 1
    assert math.isfinite(summary["final"]["train_loss"]) and math.isfinite(summary["final"]["test_loss"])
    assert summary["ledger_bytes"]["totals"]["up/smashed"] == n_train * smashed_bytes


@pytest.mark.parametrize("algorithm", [*PARALLEL, "sl"])
def test_a_transformer_text_classifier_trains_on_token_ids(algorithm):
    summary = run(_config(algorithm), progress=False, dataset=text_data(), model=text_model(**text_parts()))
    trained(summary, algorithm, 24, 6 * 16 * 4)


@pytest.mark.parametrize("algorithm, needed", [("locsplitfed", "head"), ("locfedmix", "decoder")])
def test_a_missing_head_or_decoder_for_other_inputs_is_named(algorithm, needed):
    with pytest.raises(UserError, match=f"your own {needed}"):
        run(_config(algorithm), progress=False, dataset=text_data(), model=text_model())


def test_a_network_whose_outputs_do_not_match_the_classes_is_refused():
    wrong = Model(lambda shape, n: SmallResNet(n + 1), cut="layer1")
    with pytest.raises(UserError, match=r"outputs of shape \(5,\) per sample; the data have 4 classes"):
        run(_config("psl"), progress=False, dataset=image_data(), model=wrong)
