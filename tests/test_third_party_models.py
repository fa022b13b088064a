"""Third-party networks, built offline with random weights (torchvision and timm cannot be imported beside this torch,
so the Hugging Face transformers ResNet and ViT stand in): each trains every algorithm one round on the loop engine,
and the stacked engine gives the loop's numbers, dropout included."""

import math

import numpy as np
import pytest
from test_your_dropout import client_dropout_model
from test_your_model import PARALLEL, image_data, text_data, text_model, text_parts, trained
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

from locfedmix import Model, UserError, run, validate
from locfedmix.models import split_at


def hf_resnet(shape, n_classes):
    config = ResNetConfig(num_channels=shape[0], embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          num_labels=n_classes)
    return ResNetForImageClassification(config)


class ClassToken(nn.Module):
    """ViT's last step as its forward writes it: layer norm, then the classifier on the class token."""

    def __init__(self, norm: nn.Module, classifier: nn.Module):
        super().__init__()
        self.norm, self.classifier = norm, classifier

    def forward(self, hidden):
        return self.classifier(self.norm(hidden)[:, 0])


def vit_blocks(shape, n_classes, dropout: float = 0.0):
    """ViTModel's forward compares the input's dtype before its first layer, which torch.fx cannot follow, so the
    ViT is handed over as its blocks. `dropout`: the embeddings' and hidden states' nn.Dropout and the attention
    probabilities' (F.scaled_dot_product_attention's dropout_p)."""
    config = ViTConfig(image_size=shape[1], patch_size=4, num_channels=shape[0], hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=n_classes, hidden_dropout_prob=dropout,
                       attention_probs_dropout_prob=dropout)
    vit = ViTForImageClassification(config)
    return [vit.vit.embeddings, *vit.vit.layers, ClassToken(vit.vit.layernorm, vit.classifier)]


def token_parts():
    """Head and decoder for the ViT's smashed tokens (5 tokens × 16) back to a 3×8×8 image."""
    return {"head": nn.Sequential(nn.Flatten(), nn.Linear(80, 4)),
            "decoder": nn.Sequential(nn.Flatten(), nn.Linear(80, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)))}


MODELS = {
    "hf-resnet": (lambda: Model(hf_resnet, cut="resnet.encoder.stages.0"), image_data, 8 * 2 * 2 * 4),  # stride 4
    "vit": (lambda: Model(vit_blocks, cut=2, **token_parts()), image_data, 5 * 16 * 4),
    "vit-dropout": (lambda: Model(lambda s, n: vit_blocks(s, n, 0.1), cut=2, **token_parts()), image_data, 5 * 16 * 4),
    "text": (lambda: text_model(**text_parts()), text_data, 6 * 16 * 4),
    "text-client-dropout": (client_dropout_model, text_data, 6 * 16 * 4),
}


def config(algorithm: str, kind: str = "loop"):
    return validate({"algorithm": algorithm, "dataset": "synthetic", "n_clients": 2, "rounds": 1, "batch_size": 8,
                     "seed": 2, "checkpoint_every": 0, "data": {"val_fraction": 0.0}, "engine": {"kind": kind}})


@pytest.mark.parametrize("algorithm", [*PARALLEL, "sl"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_algorithm_trains_a_third_party_model(name, algorithm):
    model, data, smashed_bytes = MODELS[name]
    n_train = len(data()[0][1]) if name.startswith("text") else len(data()["train"][1])
    trained(run(config(algorithm), progress=False, model=model(), dataset=data()), algorithm, n_train, smashed_bytes)


ENGINE_CASES = [("hf-resnet", "psl"), ("hf-resnet", "locfedmix"), ("hf-resnet", "sl"), ("vit", "psl"), ("vit", "sl"),
                ("vit", "locfedmix"), ("vit-dropout", "psl"), ("vit-dropout", "locfedmix"), ("vit-dropout", "sflv1"),
                *[(text, a) for text in ("text", "text-client-dropout") for a in [*PARALLEL, "sl"]]]


@pytest.mark.parametrize("name, algorithm", ENGINE_CASES)
def test_the_stacked_engine_gives_the_loops_numbers(name, algorithm):
    """BatchNorm (the HF ResNet keeps per-client running statistics in both engines), attention and dropout (the
    text classifier's, on the server and, cut after the encoder, on the clients; the ViT's, attention dropout
    included, on both: masks drawn from per-client keys, models/dropout.py) are equal to float rounding. One Model
    serves both runs: the head and decoder the user hands over are instances, which a run copies as they are, so two
    calls of `token_parts()` would start the two engines from two different decoders (0.15 % apart in the ViT's
    train loss under locfedmix after one round)."""
    model, data, _ = MODELS[name]
    model = model()
    loop = run(config(algorithm), progress=False, model=model, dataset=data())["final"]
    stacked = run(config(algorithm, "vectorized"), progress=False, model=model, dataset=data())["final"]
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert math.isfinite(loop[key])
        np.testing.assert_allclose(stacked[key], loop[key], rtol=1e-5)


def test_a_cut_torch_fx_cannot_reach_names_the_line_that_stops_it():
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=32, num_labels=4))
    with pytest.raises(UserError, match=r"cannot follow the forward of ViTForImageClassification down to it \(.*"
                                        r"at modeling_vit\.py:\d+ `if pixel_values\.dtype.*explicit list of blocks"):
        split_at(vit, "vit.layers.0")
