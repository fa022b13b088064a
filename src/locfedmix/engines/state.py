"""Server state and the optimizers, built once (never rebuilt per batch)."""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.objectives import build_head
from locfedmix.algorithms.parts import ServerLayout
from locfedmix.config import OptimizerConfig, OptimizerName
from locfedmix.models import SplitModel


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """torch's fused kernels (one per parameter instead of ~8 operators): the same arithmetic as the default
    single-tensor path and as the stacked pool's (engines/stacked_optim.py)."""
    if cfg.name is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


@dataclass
class Server:
    uppers: list[nn.Module]  # one shared model, or one copy per client (SplitFed v1)
    optimizers: list[torch.optim.Optimizer]

    @property
    def device(self) -> torch.device:
        return next(self.uppers[0].parameters()).device

    def upper_of(self, client: int) -> nn.Module:
        return self.uppers[client if len(self.uppers) > 1 else 0]

    def state_dict(self) -> dict:
        return {"uppers": [u.state_dict() for u in self.uppers],
                "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for upper, saved in zip(self.uppers, state["uppers"]):
            upper.load_state_dict(saved)
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)


def build_server(algo: Algorithm, model: SplitModel, n_clients: int, optimizer: OptimizerConfig) -> Server:
    """The upper model(s) with their optimizers; SGLR's SplitLr scales the server learning rate by N^exponent."""
    copies = n_clients if algo.server_layout is ServerLayout.PER_CLIENT else 1
    uppers = [copy.deepcopy(model.upper) for _ in range(copies)]
    if algo.server_lr_exponent:
        optimizer = optimizer.model_copy(update={"lr": optimizer.lr * n_clients ** algo.server_lr_exponent})
    return Server(uppers, [build_optimizer(list(u.parameters()), optimizer) for u in uppers])


def build_client_head(algo: Algorithm, model: SplitModel, input_shape: tuple[int, int, int], n_classes: int):
    return build_head(algo.objective, model.cut_shape, input_shape, n_classes, model.head, model.decoder)
