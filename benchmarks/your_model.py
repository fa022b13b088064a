"""What reading a user's data per step costs: training samples/s of a ResNet-18 (transformers' ResNet in the
torchvision ResNet-18 layout, random weights, cut after its first stage) under psl, with the inputs held in memory
and streamed (data.memory_mb below their size), at N clients × 16 samples; writes benchmarks/results/YOUR-MODEL.md
and your_model.json.

    PYTHONPATH=src python benchmarks/your_model.py [--clients 10 100] [--workers 2]
"""

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from locfedmix import Model, run, validate

RESULTS = Path(__file__).parent / "results"
SAMPLES_PER_CLIENT = 16


class RandomImages(torch.utils.data.Dataset):
    """3×32×32 uint8 images read one item at a time, as from files (a map-style dataset with `targets`)."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 10, n)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i])


def resnet18(shape: tuple[int, ...], n_classes: int) -> ResNetForImageClassification:
    config = ResNetConfig(num_channels=shape[0], embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                          depths=[2, 2, 2, 2], layer_type="basic", num_labels=n_classes)
    return ResNetForImageClassification(config)


def measure(n_clients: int, memory_mb: float, workers: int) -> dict:
    n = n_clients * SAMPLES_PER_CLIENT
    config = validate({"algorithm": "psl", "dataset": "synthetic", "n_clients": n_clients, "rounds": 1,
                       "batch_size": SAMPLES_PER_CLIENT, "samples_per_client": SAMPLES_PER_CLIENT,
                       "checkpoint_every": 0, "data": {"val_fraction": 0.0, "memory_mb": memory_mb,
                                                       "workers": workers}})
    model = Model(resnet18, cut="resnet.encoder.stages.0")
    summary = run(config, progress=False, model=model, dataset=(RandomImages(n, 0), RandomImages(64, 1)))
    return {"clients": n_clients, "data": summary["data"], "workers": workers if summary["data"] == "streaming" else 0,
            "train_samples_per_second": summary["train_samples_per_second"], "engine": summary["engine"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = [measure(n, memory_mb, args.workers) for n in args.clients for memory_mb in (4096, 0.001)]
    setup = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
            f"{torch.get_num_threads()} intra-op threads"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "your_model.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    lines = ["# Your model, your data: in memory vs streamed", "",
             f"ResNet-18 (transformers, torchvision layout), cut after stage 1, psl, one round, 3×32×32 inputs;",
             f"{setup}; a 2-core machine shared with other work, so the figures are rough.", "", "| clients × samples | data | workers | engine | train samples/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['clients']} × {SAMPLES_PER_CLIENT} | {r['data']} | {r['workers']} | {r['engine']} | "
              f"{r['train_samples_per_second']:.1f} |" for r in rows]
    (RESULTS / "YOUR-MODEL.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
