"""The torch optimizers of the looped pool and of the server, built once (never rebuilt per batch)."""

import torch
from torch import nn

from locfedmix.config import OptimizerConfig, OptimizerName


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """torch's fused kernels (one per parameter instead of ~8 operators): the same arithmetic as the default
    single-tensor path and as the stacked pool's (backends/stacked_optim.py)."""
    if cfg.name is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
